"""``twinfer compare`` on real backfill outputs (tests/backfill_pairs.py), locally and on S3 (a real
moto_server); the figures are checked against a plain join of ``read_predictions``' tables."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.fs as pafs
import pytest

from batch.evaluate import read_predictions
from batch.thumbnails import thumbnails
from batch.uris import S3Options
from shared.labels import class_index_lookup
from tests import images
from tests.backfill_pairs import ADDED_BEFORE_B, REMOVED_BEFORE_B
from twinfer import cli


def rows_by_path(output) -> dict[str, dict]:
    return {row["path"]: row for row in read_predictions(str(output)).to_pylist()}


def compare(a, b, report, *extra) -> dict:
    assert cli.main(["compare", str(a), str(b), "--output", str(report), *extra]) == 0
    return json.loads(report.read_text())


def test_classification_of_two_models_compares_every_shared_input_and_counts_the_rest(classify_pair, tmp_path):
    report = compare(classify_pair.a, classify_pair.b, tmp_path / "cmp.json")
    a, b = rows_by_path(classify_pair.a), rows_by_path(classify_pair.b)
    both = set(a) & set(b)
    clean = [p for p in both if a[p]["error"] is None and b[p]["error"] is None]
    assert report["a"]["model"] == "efficientnet_lite0" and report["b"]["model"] == "torchvision:resnet18"
    assert report["inputs"]["both"] == len(both) and report["compared"] == len(clean) == len(both) - 1
    assert report["inputs"]["only_a_examples"] == [str(classify_pair.inputs / REMOVED_BEFORE_B)]
    assert report["inputs"]["only_b_examples"] == [str(classify_pair.inputs / ADDED_BEFORE_B)]
    assert report["errors"] == {"a_only": 0, "b_only": 0, "both": 1, "a_codes": {"invalid_image": 1}} | {
        "b_codes": {"invalid_image": 1}
    }
    t = report["classify"]
    agree = sum(a[p]["top_indices"][0] == b[p]["top_indices"][0] for p in clean)
    assert t["top1_agreement"] == pytest.approx(agree / len(clean))
    labelled = [p for p in clean if a[p]["label"] in class_index_lookup()]
    truth = {p: class_index_lookup()[a[p]["label"]] for p in labelled}
    right_a = {p for p in labelled if a[p]["top_indices"][0] == truth[p]}
    right_b = {p for p in labelled if b[p]["top_indices"][0] == truth[p]}
    assert t["labelled"] == len(labelled) and t["accuracy"]["a"] == pytest.approx(len(right_a) / len(labelled))
    assert t["flips"] == {"a_right_b_wrong": len(right_a - right_b), "a_wrong_b_right": len(right_b - right_a)}
    assert len(right_a - right_b) > 0, "a random-weight ResNet should lose what the embedded model gets right"
    shift = np.mean([b[p]["top_scores"][0] - a[p]["top_scores"][0] for p in clean])
    assert t["score_shift"]["mean"] == pytest.approx(shift)
    for example in report["examples"]:
        assert (
            example["a"] == a[example["path"]]["top_labels"][0] and example["b"] == b[example["path"]]["top_labels"][0]
        )
    assert (tmp_path / "cmp.html").stat().st_size > 0 and (tmp_path / "cmp.png").read_bytes()[:4] == b"\x89PNG"


def test_embeddings_at_two_precisions_are_nearly_the_same_vectors(embed_pair, tmp_path):
    report = compare(embed_pair.a, embed_pair.b, tmp_path / "embed.json")
    a, b = rows_by_path(embed_pair.a), rows_by_path(embed_pair.b)
    clean = [p for p in a if a[p]["error"] is None]
    cosines = [float(np.dot(a[p]["embedding"], b[p]["embedding"])) for p in clean]  # both L2-normalised
    t = report["embed"]
    assert t["comparable"] and t["dim_a"] == t["dim_b"] == 1280 and report["compared"] == len(clean)
    assert t["cosine"]["mean"] == pytest.approx(np.mean(cosines), abs=1e-5)
    assert t["cosine"]["min"] == pytest.approx(min(cosines), abs=1e-5)
    assert 0.9 < t["cosine"]["min"] < 1.0, "bf16 moves the vectors a little, not much"
    assert report["examples"][0]["cosine"] == pytest.approx(min(cosines), abs=1e-5)


def test_detections_at_two_input_sizes_match_boxes_and_count_the_rest(detect_pair, tmp_path):
    report = compare(detect_pair.a, detect_pair.b, tmp_path / "det.json")
    a, b = rows_by_path(detect_pair.a), rows_by_path(detect_pair.b)
    t = report["detect"]
    assert report["compared"] == 3
    assert t["boxes_a"] == sum(len(r["boxes"]) for r in a.values()) > 0
    assert t["boxes_b"] == sum(len(r["boxes"]) for r in b.values()) > 0
    assert t["only_a"] == t["boxes_a"] - t["matched"] and t["only_b"] == t["boxes_b"] - t["matched"]
    assert t["matched"] == sum(t["iou_histogram"]["counts"])
    assert t["mean_iou"] is None or 0.5 <= t["mean_iou"] <= 1.0
    for example in report["examples"]:
        row = a[example["path"]]
        assert [d["box"] for d in example["a_boxes"]] == [
            row["boxes"][i] for i in np.argsort(row["scores"])[::-1][: len(example["a_boxes"])]
        ]


def test_outputs_on_s3_compare_as_they_do_locally_and_the_reports_land_there(classify_pair, s3_server, tmp_path):
    fs = s3_server.filesystem()
    s3_server.create_bucket("compared")
    for name, folder in (("a", classify_pair.a), ("b", classify_pair.b)):
        pafs.copy_files(
            str(folder), f"compared/{name}", source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs
        )
    local = compare(classify_pair.a, classify_pair.b, tmp_path / "local.json")
    keys = [
        "--s3-endpoint",
        s3_server.endpoint,
        "--s3-scheme",
        "http",
        "--s3-region",
        "us-east-1",
        "--s3-access-key",
        "testing",
        "--s3-secret-key",
        "testing",
    ]
    assert cli.main(["compare", "s3://compared/a", "s3://compared/b", *keys]) == 0
    written = {i.path for i in fs.get_file_info(pafs.FileSelector("compared")) if i.is_file}
    stem = "compared/b.vs-a.comparison"
    assert {f"{stem}.json", f"{stem}.html", f"{stem}.png"} <= written
    with fs.open_input_stream(f"{stem}.json") as stream:
        remote = json.loads(stream.read())
    assert remote["a"]["uri"] == "s3://compared/a" and remote["b"]["uri"] == "s3://compared/b"
    for key in ("inputs", "errors", "compared", "classify", "examples"):
        assert remote[key] == local[key], key
    with fs.open_input_stream(f"{stem}.html") as stream:
        page = stream.read().decode()
    assert page.count('<img src="data:image/jpeg;base64,') == len(local["examples"]) > 0


def test_thumbnails_read_s3_inputs_within_the_decoders_limits(s3_server):
    s3_server.create_bucket("pictures")
    s3_server.put("pictures/cat.jpg", images.small_jpeg("chelsea", 400))
    s3_server.put("pictures/broken.jpg", images.corrupt_jpeg())
    got = thumbnails(
        ["s3://pictures/cat.jpg", "s3://pictures/broken.jpg", "s3://pictures/gone.jpg"], S3Options(**s3_server.options)
    )
    cat = got["s3://pictures/cat.jpg"]
    assert cat["src"].startswith("data:image/jpeg;base64,") and max(cat["width"], cat["height"]) == 160
    assert max(cat["original"]) == 400
    assert "InvalidImage" in got["s3://pictures/broken.jpg"]["error"]
    assert "error" in got["s3://pictures/gone.jpg"]
