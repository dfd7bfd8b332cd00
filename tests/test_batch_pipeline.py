"""Backfills end to end on Ray Data: local and S3 (a real moto_server), errors, parity, resume, evaluate.

The planted dataset is sample-photo crops filed under the class the embedded model gives the
whole photo (wnid folders, one folder by class name), plus an unlabelled file and four broken
files. Expected accuracies come from the direct wrapper, never hard-coded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from batch.config import BackfillConfig
from batch.evaluate import read_predictions
from batch.pipeline import run_backfill
from batch.predict_actor import output_schema
from batch.uris import S3Options
from shared import ModelConfig
from shared.labels import class_index_lookup, coco_categories, imagenet_categories, imagenet_wnids
from tests import images
from twinfer import cli
from twinfer.samples import SAMPLE_NAMES, encode, sample_array

BROKEN = {
    "broken/corrupt.jpg": (images.corrupt_jpeg(), "invalid_image"),
    "broken/truncated.jpg": (images.truncated_jpeg(), "invalid_image"),
    "broken/zero.jpg": (b"", "empty_input"),
    "broken/notes.txt": (images.not_an_image(), "invalid_image"),
}
NAMED_FOLDER_PHOTO = "coffee"  # filed under its class name instead of its wnid


@dataclass(frozen=True)
class Planted:
    root: Path
    files: dict[str, bytes]  # relative path -> bytes

    @property
    def good(self) -> dict[str, bytes]:
        return {rel: data for rel, data in self.files.items() if rel not in BROKEN}


def thumbnail_jpeg(array: np.ndarray, size: int = 80) -> bytes:
    image = Image.fromarray(np.ascontiguousarray(array)).convert("RGB")
    image.thumbnail((size, size))
    return encode(np.asarray(image))


def crops(name: str) -> dict[str, bytes]:
    photo = sample_array(name)
    h, w = photo.shape[:2]
    views = {
        "full": photo,
        "centre": photo[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4],
        "left": photo[:, : w // 2],
        "flipped": photo[:, ::-1],
    }
    return {f"{name}_{view}.jpg": thumbnail_jpeg(array) for view, array in views.items()}


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for relative, data in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(data)


@pytest.fixture(scope="module")
def planted(tmp_path_factory, embedded_wrapper) -> Planted:
    files: dict[str, bytes] = {}
    for name in SAMPLE_NAMES:
        truth = embedded_wrapper.classify_bytes(thumbnail_jpeg(sample_array(name)), top_k=1)[0]["index"]
        folder = imagenet_categories()[truth] if name == NAMED_FOLDER_PHOTO else imagenet_wnids()[truth]
        files.update({f"{folder}/{file}": data for file, data in crops(name).items()})
    files["loose.jpg"] = images.small_jpeg("rocket", 64)  # no class folder: no label
    files.update({rel: data for rel, (data, _) in BROKEN.items()})
    root = tmp_path_factory.mktemp("planted") / "images"
    write_tree(root, files)
    return Planted(root, files)


def backfill_config(input: str, output: str, **overrides) -> BackfillConfig:
    settings = dict(input=input, output=output, batch_size=4, rows_per_call=4, min_rows_per_file=4, progress=False)
    return BackfillConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def local_run(ray_session, planted, tmp_path_factory):
    output = tmp_path_factory.mktemp("local") / "predictions"
    summary = run_backfill(backfill_config(str(planted.root), str(output)))
    return summary, output, pq.read_table(output)


# ---- local -> local --------------------------------------------------------------------------
def test_local_backfill_writes_one_row_per_input_with_the_schema(local_run, planted):
    summary, output, table = local_run
    assert table.schema == output_schema(ModelConfig())
    paths = table.column("path").to_pylist()
    assert sorted(paths) == sorted(str(planted.root / rel) for rel in planted.files)
    assert set(table.column("model").to_pylist()) == {"efficientnet_lite0"}
    labels = {Path(row["path"]).relative_to(planted.root).as_posix(): row["label"] for row in table.to_pylist()}
    assert all(label == (rel.split("/")[0] if "/" in rel else None) for rel, label in labels.items())
    written = sorted(p.relative_to(output).as_posix() for p in output.glob("shard-*/*.parquet"))
    assert summary["rows"] == len(planted.files) and summary["errors"] == len(BROKEN) and summary["skipped"] == 0
    assert summary["files"] == len(written) > 1
    # the job marker, twinfer's state folder and the shard folders of its files, nothing else
    assert sorted(p.name for p in output.iterdir()) == ["_twinfer", "_twinfer.json", "shard-000000"]
    assert all(pq.read_schema(output / name).metadata[b"twinfer"] for name in written)
    assert json.loads((output / "_twinfer" / "done" / "000000.json").read_text())["rows"] == len(planted.files)
    assert summary["img_per_s"] > 0 and summary["output"] == str(output)
    # what auto chose (compile is off for tests: TWINFER_AUTO_COMPILE=0); the test session's Ray has 4 CPUs
    assert summary["settings"] == {"device": "cpu", "batch_size": 4, "compile": False, "cpu_threads": 4, "actors": 1}


def test_broken_files_give_error_rows_and_every_other_file_predicts(local_run, planted):
    _, _, table = local_run
    rows = {Path(row["path"]).relative_to(planted.root).as_posix(): row for row in table.to_pylist()}
    for rel, (_, code) in BROKEN.items():
        assert rows[rel]["error"] == code and rows[rel]["error_message"]
        assert rows[rel]["top_labels"] is None and rows[rel]["top_scores"] is None
    for rel in planted.good:
        row = rows[rel]
        assert row["error"] is None and row["error_message"] is None
        assert len(row["top_labels"]) == len(row["top_indices"]) == len(row["top_scores"]) == 5
        assert row["top_labels"] == [imagenet_categories()[i] for i in row["top_indices"]]


def test_offline_top_k_equals_the_direct_wrapper(local_run, planted, embedded_wrapper):
    _, _, table = local_run
    rows = {row["path"]: row for row in table.to_pylist()}
    for rel, data in planted.good.items():
        row, direct = rows[str(planted.root / rel)], embedded_wrapper.classify_bytes(data, top_k=5)
        assert row["top_labels"] == [p["label"] for p in direct], rel
        assert np.allclose(row["top_scores"], [p["score"] for p in direct], atol=1e-5, rtol=0), rel


def test_decode_runs_in_tasks_apart_from_the_predictor_actors(local_run):
    summary, _, _ = local_run
    operators = [line.split(":")[0] for line in summary["stats"].splitlines() if line.startswith("Operator ")]
    decode = [op for op in operators if "decode_fetched" in op]
    predict = [op for op in operators if "Predictor" in op]
    assert len(decode) == 1 and len(predict) == 1 and decode != predict, operators


def test_bench_reads_the_model_stage_throughput_from_ray_data_stats(local_run):
    from bench.run import ray_data_throughput

    summary, _, _ = local_run
    assert ray_data_throughput(summary["stats"]) > 0, summary["stats"]


def test_cpus_held_by_other_actors_are_named_at_start_up(ray_session, tmp_path, caplog):
    """A backfill beside Serve replicas that hold the CPUs it needs waits for them: it says so."""
    import logging

    from batch.pipeline import warn_if_cpus_are_held

    ray = ray_session
    total = ray.cluster_resources()["CPU"]
    holder = ray.remote(num_cpus=total - 0.5)(_Holder).remote()
    ray.get(holder.ready.remote())
    try:
        free = ray.available_resources().get("CPU", 0.0)
        config = BackfillConfig(input=str(tmp_path / "in"), output=str(tmp_path / "out"))
        with caplog.at_level(logging.WARNING, logger="batch.pipeline"):
            assert warn_if_cpus_are_held(config, free, total)
    finally:
        ray.kill(holder)
    assert f"only {free:g} of Ray's {total:g} CPUs are free" in caplog.text
    assert "the job needs 2 (1 model actor(s) x 1 CPU + 1 CPU for a decode task)" in caplog.text
    assert not warn_if_cpus_are_held(config, free_cpus=2, cluster_cpus=total)


class _Holder:
    def ready(self) -> bool:
        return True


def test_rerun_writes_zero_rows(local_run, planted):
    _, output, table = local_run
    results = [*output.glob("shard-*/*"), *output.glob("_twinfer/done/*"), *output.glob("_twinfer/plan/**/*")]
    before = {p: p.stat().st_mtime_ns for p in results}
    summary = run_backfill(backfill_config(str(planted.root), str(output)))
    assert summary["rows"] == 0 and summary["skipped"] == len(planted.files) and summary["files"] == 0
    assert summary["shards_skipped"] == summary["shards"] == 1
    assert {p: p.stat().st_mtime_ns for p in results} == before
    assert sorted([*output.glob("shard-*/*"), *output.glob("_twinfer/done/*"), *output.glob("_twinfer/plan/**/*")]) == (
        sorted(results)
    )
    assert pq.read_table(output).num_rows == table.num_rows


def test_files_over_the_byte_cap_are_never_read_and_land_in_the_same_output(ray_session, tmp_path):
    """The listed size decides: the row's message names the listed size, which a read would not give."""
    small = {f"n01/small{i}.jpg": images.small_jpeg(SAMPLE_NAMES[i], 40) for i in range(3)}
    cap = max(len(data) for data in small.values())  # at the cap is still read
    large = {"n01/large.jpg": images.small_jpeg("astronaut", 200), "large-top.jpg": images.small_jpeg("rocket", 160)}
    assert min(len(data) for data in large.values()) > cap
    write_tree(tmp_path / "in", {**small, **large})
    config = backfill_config(str(tmp_path / "in"), str(tmp_path / "out"), model=ModelConfig(decode={"max_bytes": cap}))
    summary = run_backfill(config)
    assert summary["rows"] == 5 and summary["errors"] == 2
    rows = {
        Path(row["path"]).relative_to(tmp_path / "in").as_posix(): row
        for row in pq.read_table(tmp_path / "out").to_pylist()
    }
    assert sorted(rows) == sorted([*small, *large])
    for rel, data in large.items():
        row = rows[rel]
        assert row["error"] == "image_too_large" and row["top_labels"] is None and row["model"] == "efficientnet_lite0"
        assert f"{len(data)} bytes" in row["error_message"] and f"{cap}-byte cap" in row["error_message"]
        assert row["error_message"].endswith("not read")
    assert rows["n01/large.jpg"]["label"] == "n01" and rows["large-top.jpg"]["label"] is None
    assert all(rows[rel]["error"] is None and rows[rel]["top_labels"] for rel in small)
    again = run_backfill(config)
    assert again["rows"] == 0 and again["skipped"] == 5


# ---- evaluate --------------------------------------------------------------------------------
def expected_report(planted: Planted, wrapper) -> dict:
    """Top-1 / top-5 straight from the wrapper, for the labelled files that decode."""
    lookup, per_class = class_index_lookup(), {}
    for rel, data in planted.good.items():
        if "/" not in rel:
            continue
        label = rel.split("/")[0]
        truth = lookup.get(label, lookup.get(label.lower()))
        predicted = [p["index"] for p in wrapper.classify_bytes(data, top_k=5)]
        stats = per_class.setdefault(label, {"count": 0, "top1": 0, "top5": 0})
        stats["count"] += 1
        stats["top1"] += predicted[0] == truth
        stats["top5"] += truth in predicted
    count = sum(s["count"] for s in per_class.values())
    return {
        "count": count,
        "top1": sum(s["top1"] for s in per_class.values()) / count,
        "top5": sum(s["top5"] for s in per_class.values()) / count,
        "per_class": {
            label: {"count": s["count"], "top1": s["top1"] / s["count"], "top5": s["top5"] / s["count"]}
            for label, s in per_class.items()
        },
    }


def test_evaluate_gives_the_exact_expected_accuracy(local_run, planted, embedded_wrapper, tmp_path, capsys):
    _, output, _ = local_run
    report_path = tmp_path / "report" / "evaluation.json"
    assert cli.main(["evaluate", "--predictions", str(output), "--output", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    expected = expected_report(planted, embedded_wrapper)
    assert 0 < expected["top1"] < 1, "the crops should make the planted set neither trivial nor hopeless"
    assert {k: report[k] for k in ("count", "top1", "top5")} == {k: expected[k] for k in ("count", "top1", "top5")}
    assert report["per_class"] == expected["per_class"]
    assert report["excluded"] == {"errors": len(BROKEN), "unlabelled": 1, "unknown_label": 0}
    printed = capsys.readouterr().out
    assert "overall" in printed and f"{100 * expected['top1']:6.2f}" in printed


# ---- S3 -> S3 --------------------------------------------------------------------------------
def test_s3_backfill_to_s3_with_evaluation_and_idempotent_rerun(ray_session, s3_server, planted, embedded_wrapper):
    s3_server.create_bucket("images")
    s3_server.create_bucket("results")
    for rel, data in planted.files.items():
        s3_server.put(f"images/val/{rel}", data)
    # The input uses the public-bucket URI form (anonymous, endpoint in the query); the output uses keys.
    source = f"s3://anonymous@images/val/?endpoint_override={s3_server.endpoint}&scheme=http"
    config = backfill_config(source, "s3://results/run1", s3=s3_server.options, evaluate=True)
    summary = run_backfill(config)
    options = S3Options(**s3_server.options)
    table = read_predictions("s3://results/run1", options)
    assert table.schema == output_schema(ModelConfig())
    assert sorted(table.column("path").to_pylist()) == sorted(f"s3://images/val/{rel}" for rel in planted.files)
    rows = {row["path"]: row for row in table.to_pylist()}
    for rel, (_, code) in BROKEN.items():
        assert rows[f"s3://images/val/{rel}"]["error"] == code
    assert all(rows[f"s3://images/val/{rel}"]["top_labels"] for rel in planted.good)
    assert summary["rows"] == len(planted.files) and summary["errors"] == len(BROKEN)
    expected = expected_report(planted, embedded_wrapper)
    assert summary["evaluation"]["top1"] == expected["top1"] and summary["evaluation"]["top5"] == expected["top5"]
    assert summary["evaluation"]["report"] == "s3://results/run1.evaluation.json"
    with s3_server.filesystem().open_input_stream("results/run1.evaluation.json") as stream:
        assert json.loads(stream.read())["count"] == expected["count"]

    again = run_backfill(config.model_copy(update={"evaluate": False}))
    assert again["rows"] == 0 and again["skipped"] == len(planted.files)
    assert read_predictions("s3://results/run1", options).num_rows == len(planted.files)


# ---- detection -------------------------------------------------------------------------------
def test_detection_backfill_writes_boxes_in_original_pixels(ray_session, tmp_path):
    sizes = {"wide.jpg": (96, 64), "tall.jpg": (56, 88), "square.jpg": (72, 72)}  # (width, height)
    files = {
        name: encode(np.asarray(Image.fromarray(sample_array("astronaut")).resize(size)))
        for name, size in sizes.items()
    }
    files["corrupt.jpg"] = images.corrupt_jpeg()
    write_tree(tmp_path / "in", files)
    model = ModelConfig(
        name="fasterrcnn_v2", weights="random", options={"min_size": 128, "max_size": 160}, score_threshold=0.0
    )
    summary = run_backfill(backfill_config(str(tmp_path / "in"), str(tmp_path / "out"), model=model))
    table = pq.read_table(tmp_path / "out")
    assert table.schema == output_schema(model) and table.num_rows == 4 and summary["errors"] == 1
    rows = {Path(row["path"]).name: row for row in table.to_pylist()}
    assert rows["corrupt.jpg"]["error"] == "invalid_image" and rows["corrupt.jpg"]["boxes"] is None
    for name, (width, height) in sizes.items():
        row = rows[name]
        assert row["error"] is None and row["model"] == "fasterrcnn_v2"
        assert row["boxes"], "a random detector at threshold 0 still proposes boxes"
        assert len(row["boxes"]) == len(row["labels"]) == len(row["label_indices"]) == len(row["scores"])
        assert row["labels"] == [coco_categories()[i] for i in row["label_indices"]]
        for x1, y1, x2, y2 in row["boxes"]:
            assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height


# ---- embeddings ------------------------------------------------------------------------------
def test_embedding_backfill_writes_a_vector_column_equal_to_the_direct_wrappers(ray_session, tmp_path):
    from shared import ModelWrapper

    files = {f"{name}.jpg": images.small_jpeg(name) for name in ("chelsea", "coffee")}
    files["corrupt.jpg"] = images.corrupt_jpeg()
    write_tree(tmp_path / "in", files)
    model = ModelConfig(task="embed")
    summary = run_backfill(backfill_config(str(tmp_path / "in"), str(tmp_path / "out"), model=model))
    table = pq.read_table(tmp_path / "out")
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 1280)  # a fixed-size vector column
    assert summary["errors"] == 1 and table.num_rows == 3
    rows = {Path(row["path"]).name: row for row in table.to_pylist()}
    assert rows["corrupt.jpg"]["embedding"] is None and rows["corrupt.jpg"]["error"] == "invalid_image"
    direct = ModelWrapper(model)
    for name in ("chelsea.jpg", "coffee.jpg"):
        (want,) = direct.predict_batch([direct.load(files[name])])
        assert np.allclose(rows[name]["embedding"], want, atol=1e-5, rtol=0)
    vectors = table.to_pandas()["embedding"]  # pandas reads each row as one float32 array
    assert vectors.iloc[0] is None or vectors.dropna().map(len).eq(1280).all()
