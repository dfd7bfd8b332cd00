"""The offline path's pieces without Ray: URIs, listing, decode stage, predictor, config, evaluate, resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pytest
from pydantic import ValidationError

from batch.config import BackfillConfig
from batch.decode_stage import DECODED_SCHEMA, decode_batch, item_from_row
from batch.evaluate import evaluate_table, format_report
from batch.listing import label_for, list_inputs
from batch.predict_actor import Predictor, output_schema
from batch.sink import file_name_for
from batch.uris import S3Options, parse_uri, resolve, s3_filesystem_kwargs
from shared import DecodeConfig, ImageLoader, ModelConfig
from shared.labels import class_index_lookup, imagenet_wnids
from tests import images

PUBLIC = "s3://anonymous@air-example-data-2/imagenette2/val/"


# ---- URIs ------------------------------------------------------------------------------------
def test_public_bucket_uri_is_anonymous_s3():
    location = parse_uri(PUBLIC)
    assert (location.scheme, location.bucket, location.path, location.anonymous) == (
        "s3",
        "air-example-data-2",
        "air-example-data-2/imagenette2/val",
        True,
    )
    assert s3_filesystem_kwargs(location, env={}) == {"anonymous": True}
    file = "air-example-data-2/imagenette2/val/n01440764/ILSVRC2012_val_00009111.JPEG"
    assert location.uri_for(file) == "s3://" + file  # the path column keeps the scheme, not the user
    resolved = resolve(PUBLIC, S3Options(region="us-west-2"))  # a region given: no network needed
    assert isinstance(resolved.filesystem, pafs.S3FileSystem) and resolved.filesystem.region == "us-west-2"


def test_uri_parameters_and_custom_endpoints_get_a_region():
    location = parse_uri("s3://anonymous@bucket/images?endpoint_override=127.0.0.1:9000&scheme=http")
    assert s3_filesystem_kwargs(location, env={}) == {
        "endpoint_override": "127.0.0.1:9000",
        "scheme": "http",
        "region": "us-east-1",
        "anonymous": True,
    }
    keyed = S3Options(endpoint_override="https://minio.local:9000", access_key="k", secret_key="s")
    assert s3_filesystem_kwargs(parse_uri("s3://b/p"), keyed, env={}) == {
        "endpoint_override": "minio.local:9000",
        "scheme": "https",
        "region": "us-east-1",
        "access_key": "k",
        "secret_key": "s",
    }


def test_aws_environment_variables_fill_unset_options():
    env = {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:5000",
        "AWS_REGION": "eu-west-1",
        "AWS_ACCESS_KEY_ID": "id",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_SESSION_TOKEN": "token",
    }
    assert s3_filesystem_kwargs(parse_uri("s3://b/p"), env=env) == {
        "endpoint_override": "127.0.0.1:5000",
        "scheme": "http",
        "region": "eu-west-1",
        "access_key": "id",
        "secret_key": "secret",
        "session_token": "token",
    }
    explicit = S3Options(region="ap-south-1", anonymous=True)
    kwargs = s3_filesystem_kwargs(parse_uri("s3://b/p"), explicit, env=env)
    assert kwargs["region"] == "ap-south-1" and kwargs["anonymous"] and "access_key" not in kwargs


def test_local_uris_and_rejected_ones(tmp_path):
    assert parse_uri(str(tmp_path)).path == str(tmp_path)
    assert parse_uri(f"file://{tmp_path}/").path == str(tmp_path)
    assert parse_uri(str(tmp_path)).uri_for(f"{tmp_path}/a.jpg") == f"{tmp_path}/a.jpg"
    for bad in ("gs://bucket/x", "s3://user@bucket/x", "s3://bucket/x?colour=red", ""):
        with pytest.raises(ValueError):
            parse_uri(bad)
    with pytest.raises(ValidationError):
        S3Options(access_key="only-half")


# ---- listing ---------------------------------------------------------------------------------
def test_listing_takes_every_visible_file_and_labels_from_the_first_directory(tmp_path):
    for relative in (
        "n01440764/a.jpg",
        "n01440764/deeper/b.JPEG",
        "tabby/c.png",
        "top.jpg",
        "notes/readme.txt",
        ".hidden.jpg",
        ".cache/d.jpg",
    ):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(b"x")
    fs, root = pafs.LocalFileSystem(), str(tmp_path)
    found = [p[len(root) + 1 :] for p in list_inputs(fs, root)]
    assert found == ["n01440764/a.jpg", "n01440764/deeper/b.JPEG", "notes/readme.txt", "tabby/c.png", "top.jpg"]
    assert [p[len(root) + 1 :] for p in list_inputs(fs, root, extensions=["jpg", ".jpeg"])] == [
        "n01440764/a.jpg",
        "n01440764/deeper/b.JPEG",
        "top.jpg",
    ]
    assert [label_for(f"{root}/{p}", root) for p in found] == ["n01440764", "n01440764", "notes", "tabby", None]
    with pytest.raises(FileNotFoundError):
        list_inputs(fs, root + "/missing")


# ---- decode stage + predictor ----------------------------------------------------------------
BAD_FILES = {
    "corrupt.jpg": (images.corrupt_jpeg(), "invalid_image"),
    "truncated.jpg": (images.truncated_jpeg(), "invalid_image"),
    "empty.jpg": (b"", "empty_input"),
    "notes.txt": (images.not_an_image(), "invalid_image"),
}


def _read_rows(files: dict[str, bytes], root: str = "/data") -> pa.Table:
    """What read_binary_files(include_paths=True) hands the decode stage."""
    return pa.table({"bytes": list(files.values()), "path": [f"{root}/{name}" for name in files]})


def test_decode_stage_gives_one_row_per_file_and_never_raises():
    good = {"n01/cat.jpg": images.small_jpeg("chelsea"), "coffee.jpg": images.small_jpeg("coffee")}
    files = {**good, **{f"bad/{name}": data for name, (data, _) in BAD_FILES.items()}}
    out = decode_batch(_read_rows(files), model=ModelConfig(), input_location=parse_uri("/data"))
    assert out.schema == DECODED_SCHEMA and out.num_rows == len(files)
    rows = {row["path"]: row for row in out.to_pylist()}
    for name, (_, code) in BAD_FILES.items():
        row = rows[f"/data/bad/{name}"]
        assert row["error"] == code and row["error_message"] and row["pixels"] == b"" and row["shape"] is None
    loader = ImageLoader(ModelConfig())
    for name, data in good.items():
        row = rows[f"/data/{name}"]
        assert row["error"] is None and row["shape"] == [3, 224, 224]
        rebuilt = item_from_row(row["pixels"], row)
        expected = loader.load(data)
        assert rebuilt.pixels.dtype == np.uint8 and np.array_equal(rebuilt.pixels, expected.pixels)
        assert rebuilt.original_size == expected.original_size
    assert rows["/data/n01/cat.jpg"]["label"] == "n01" and rows["/data/coffee.jpg"]["label"] is None


def test_pixel_views_read_the_arrow_buffers_of_sliced_and_chunked_columns():
    from batch.decode_stage import pixel_views

    values = [bytes([1, 2, 3]), b"", bytes([4, 5]), bytes(range(7))]
    column = pa.chunked_array([pa.array(values[:2], pa.binary()), pa.array(values[2:], pa.binary()).slice(1)])
    assert [v.tobytes() for v in pixel_views(column)] == [values[0], b"", values[3]]
    assert [v.tobytes() for v in pixel_views(pa.array([b"", b""], pa.binary()))] == [b"", b""]  # no data buffer
    large = pa.array(values, pa.large_binary()).slice(2)  # 64-bit offsets, as Arrow may hand over
    assert [v.tobytes() for v in pixel_views(large)] == values[2:]


def test_predictor_predicts_good_rows_and_passes_error_rows_through(embedded_wrapper):
    files = {
        "cat.jpg": images.small_jpeg("chelsea"),
        "bad.jpg": images.truncated_jpeg(),
        "rocket.jpg": images.small_jpeg("rocket"),
        "coffee.jpg": images.small_jpeg("coffee"),
        "empty.jpg": b"",
        "astronaut.jpg": images.small_jpeg("astronaut"),
    }
    decoded = decode_batch(_read_rows(files), model=ModelConfig(), input_location=parse_uri("/data"))
    out = Predictor(ModelConfig(), top_k=3, batch_size=2)(decoded)  # 6 rows, 4 good: two model calls of 2
    assert out.schema == output_schema(ModelConfig())
    assert [p.rsplit("/", 1)[1] for p in out.column("path").to_pylist()] == list(files)  # row order kept
    rows = {row["path"].rsplit("/", 1)[1]: row for row in out.to_pylist()}
    assert rows["bad.jpg"]["error"] == "invalid_image" and rows["bad.jpg"]["top_labels"] is None
    assert rows["empty.jpg"]["error"] == "empty_input" and rows["empty.jpg"]["top_labels"] is None
    for name in ("cat.jpg", "rocket.jpg", "coffee.jpg", "astronaut.jpg"):
        direct = embedded_wrapper.classify_bytes(files[name], top_k=3)
        assert rows[name]["model"] == "efficientnet_lite0" and rows[name]["error"] is None
        assert rows[name]["top_labels"] == [p["label"] for p in direct]
        assert rows[name]["top_indices"] == [p["index"] for p in direct]
        assert np.allclose(rows[name]["top_scores"], [p["score"] for p in direct], atol=1e-5, rtol=0)


# ---- config ----------------------------------------------------------------------------------
def test_backfill_config_rejects_inconsistent_settings(tmp_path):
    ok = dict(input=str(tmp_path / "in"), output=str(tmp_path / "out"))
    assert BackfillConfig(**ok).model == ModelConfig()
    bad = [
        dict(ok, model={"device": "cpu"}, num_gpus_per_actor=1),
        dict(ok, model={"device": "cuda"}),
        dict(ok, num_gpus_per_actor=1.5),
        dict(ok, output=str(tmp_path / "in" / "predictions")),
        dict(ok, batch_size=0),
        dict(ok, batch_size=64, rows_per_call=32),
        dict(ok, top_k=0),
        dict(ok, input="ftp://host/x"),
        dict(ok, model={"name": "fasterrcnn_v2", "weights": "random"}, evaluate=True),
        dict(ok, unknown_setting=1),
    ]
    for settings in bad:
        with pytest.raises(ValidationError):
            BackfillConfig(**settings)


# ---- evaluate --------------------------------------------------------------------------------
def _predictions(rows: list[tuple[str | None, str | None, list[int] | None]]) -> pa.Table:
    return pa.table(
        {
            "label": [r[0] for r in rows],
            "error": [r[1] for r in rows],
            "top_indices": [r[2] for r in rows],
        },
        schema=pa.schema([("label", pa.string()), ("error", pa.string()), ("top_indices", pa.list_(pa.int64()))]),
    )


def test_evaluate_counts_top1_top5_per_class_and_exclusions():
    tench, goldfish = imagenet_wnids()[0], imagenet_wnids()[1]
    table = _predictions(
        [
            (tench, None, [0, 5, 6, 7, 8]),  # top-1 hit
            (tench, None, [5, 0, 6, 7, 8]),  # top-5 hit only
            (tench, None, [5, 6, 7, 8, 9]),  # miss
            ("Goldfish", None, [1, 2, 3, 4, 5]),  # a class name, any case
            (goldfish, "invalid_image", None),  # error: excluded
            (None, None, [0, 1, 2, 3, 4]),  # no label: excluded
            ("not-a-class", None, [0, 1, 2, 3, 4]),  # unknown label: excluded
        ]
    )
    report = evaluate_table(table)
    assert class_index_lookup()["goldfish"] == 1
    assert report["count"] == 4 and report["top1"] == 2 / 4 and report["top5"] == 3 / 4
    assert report["per_class"][tench] == {"count": 3, "top1": 1 / 3, "top5": 2 / 3}
    assert report["per_class"]["Goldfish"] == {"count": 1, "top1": 1.0, "top5": 1.0}
    assert report["excluded"] == {"errors": 1, "unlabelled": 1, "unknown_label": 1}
    assert "overall" in format_report(report) and tench in format_report(report)


def test_evaluate_has_no_top5_when_fewer_than_five_predictions_were_kept():
    report = evaluate_table(_predictions([(imagenet_wnids()[0], None, [0, 1])]))
    assert report["top1"] == 1.0 and report["top5"] is None


# ---- resume + file names ---------------------------------------------------------------------
def test_file_names_depend_only_on_the_set_of_paths():
    assert file_name_for(["b", "a"]) == file_name_for(["a", "b"]) != file_name_for(["a", "c"])


def test_model_actors_that_would_starve_decoding_are_refused(tmp_path):
    from batch.pipeline import check_cpus_leave_room_for_decode

    config = BackfillConfig(input=str(tmp_path / "in"), output=str(tmp_path / "out"), actor_pool_size=2)
    with pytest.raises(ValueError, match="decoding could never run"):
        check_cpus_leave_room_for_decode(config, cluster_cpus=2)  # the hang this guards against, seen on 2 cores
    check_cpus_leave_room_for_decode(config, cluster_cpus=3)
    check_cpus_leave_room_for_decode(config.model_copy(update={"num_cpus_per_actor": 0.5}), cluster_cpus=2)


# ---- CLI -------------------------------------------------------------------------------------
def test_backfill_flags_become_one_validated_config():
    from batch.cli import config_from_args
    from twinfer.cli import build_parser

    args = build_parser().parse_args(
        [
            "backfill",
            "--input",
            PUBLIC,
            "--output",
            "s3://results/run?endpoint_override=127.0.0.1:9000",
            "--weights",
            "random",
            "--top-k",
            "3",
            "--batch-size",
            "16",
            "--actors",
            "2",
            "--decode-parallelism",
            "4",
            "--extensions",
            "jpg,JPEG",
            "--s3-endpoint",
            "http://127.0.0.1:9000",
            "--s3-access-key",
            "k",
            "--s3-secret-key",
            "s",
            "--no-progress",
            "--evaluate",
        ]
    )
    config = config_from_args(args)
    assert config.model == ModelConfig(weights="random") and config.top_k == 3 and config.batch_size == 16
    assert config.actor_pool_size == 2 and config.decode_parallelism == 4 and config.extensions == ("jpg", "JPEG")
    assert config.s3 == S3Options(endpoint_override="http://127.0.0.1:9000", access_key="k", secret_key="s")
    assert not config.progress and config.evaluate and config.num_gpus_per_actor == 0
    assert build_parser().parse_args(["evaluate", "--predictions", "/tmp/p"]).handler.__name__ == "_evaluate"


def test_model_config_file_is_the_online_vocabulary_and_flags_override_it(tmp_path):
    import shutil

    from batch.cli import config_from_args
    from twinfer.cli import build_parser

    def parse(*extra):
        return config_from_args(build_parser().parse_args(["backfill", "--input", "/data", "--output", "/out", *extra]))

    block = tmp_path / "model.yaml"
    block.write_text(
        "{name: efficientnet_lite0, weights: random, precision: bf16, cpu_threads: 2, decode: {draft: false}}"
    )
    config = parse("--model-config", str(block), "--precision", "fp32", "--compile")
    assert config.model == ModelConfig(
        weights="random", precision="fp32", cpu_threads=2, compile=True, decode={"draft": False}
    )
    on_device = parse(
        "--model-config", str(block), "--device", "cuda", "--gpus-per-actor", "1", "--decode-on-device"
    ).model
    assert on_device.decode == DecodeConfig(draft=False, on_device=True)  # merged into the file's decode block
    with pytest.raises(ValueError, match="on_device"):  # without --device cuda
        parse("--model-config", str(block), "--decode-on-device")

    serve_config = shutil.copy(Path(__file__).parent.parent / "serve_config.yaml", tmp_path / "serve.yaml")
    assert parse("--model-config", str(serve_config)).model == ModelConfig(name="efficientnet_lite0", weights="default")
    detector = parse("--model-config", str(serve_config), "--model", "fasterrcnn_v2").model  # a disabled entry, by name
    assert detector == ModelConfig(name="fasterrcnn_v2", weights="pretrained", score_threshold=0.5)
    with pytest.raises(ValueError, match="expected model 'nope'"):
        parse("--model-config", str(serve_config), "--model", "nope")
    block.write_text("{name: efficientnet_lite0, wieghts: random}")
    with pytest.raises(ValueError, match="wieghts"):  # a typo in the file fails like one in serve_config.yaml
        parse("--model-config", str(block))


def test_file_uri_with_a_host_is_refused():
    import pytest

    from batch.uris import parse_uri

    with pytest.raises(ValueError, match="names host"):
        parse_uri("file://preds")
    assert parse_uri("file:///tmp/preds").path == "/tmp/preds"
    assert parse_uri("file://localhost/tmp/preds").path == "/tmp/preds"


def test_default_report_uri_keeps_the_query_string():
    from batch.evaluate import default_report_uri

    assert default_report_uri("/data/preds/") == "/data/preds.evaluation.json"
    assert (
        default_report_uri("s3://results/run?endpoint_override=127.0.0.1:9000&scheme=http")
        == "s3://results/run.evaluation.json?endpoint_override=127.0.0.1:9000&scheme=http"
    )


def test_output_rows_read_back_as_the_answers_the_wrapper_gave(embedded_wrapper):
    """Each task writes its answers as columns and reads them back (the demo and parity checks do)."""
    data = images.small_jpeg("coffee")
    answers = embedded_wrapper.predict_batch([embedded_wrapper.load(data)], [{"top_k": 3}]) + [None]
    task = embedded_wrapper.task
    table = pa.table(task.columns(answers))
    assert table.schema.names == output_schema(ModelConfig()).names[5:]
    rows = table.to_pylist()
    assert task.answer_from_row(rows[0]) == answers[0] and task.answer_from_row(rows[1]) is None
