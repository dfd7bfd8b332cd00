"""``twinfer compare`` on outputs written here with the backfill's own schema (no Ray), checked
against a plain in-memory join written in the test; the real backfills' comparisons are in
tests/test_compare_backfills.py.

The join is run with one partition and with many (a tiny partition budget): the figures must not
depend on how the outputs were split.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch.compare import compare_outputs, run_compare
from batch.compare_tasks import match_boxes
from batch.ownership import OutputRefused
from batch.predict_actor import output_schema
from shared import ModelConfig
from shared.labels import class_index_lookup, imagenet_categories, imagenet_wnids

DETECTOR = ModelConfig(name="fasterrcnn_v2", weights="random")
CLASSES = 12  # the synthetic predictions use ImageNet's first classes


def write_output(folder: Path, rows: list[dict], schema: pa.Schema, files: int = 3) -> str:
    """``rows`` as part files with the backfill's schema (rows missing a column get nulls)."""
    folder.mkdir(parents=True)
    for i in range(files):
        chunk = rows[i::files]
        table = pa.table({name: [r.get(name) for r in chunk] for name in schema.names}, schema=schema)
        pq.write_table(table, folder / f"part-{i:032x}.parquet")
    return str(folder)


def classify_rows(paths: list[str], seed: int, errors: dict[str, str] | None = None) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for path in paths:
        label = path.split("/")[-2]
        if (errors or {}).get(path):
            rows.append({"path": path, "label": label, "model": f"m{seed}", "error": errors[path]})
            continue
        truth = class_index_lookup()[label]
        top = rng.sample(range(CLASSES), 5)
        if rng.random() < 0.5:  # right half the time
            top = [truth] + [c for c in top if c != truth][:4]
        scores = sorted((rng.random() for _ in top), reverse=True)
        rows.append(
            {
                "path": path,
                "label": label,
                "model": f"m{seed}",
                "top_indices": top,
                "top_scores": scores,
                "top_labels": [imagenet_categories()[c] for c in top],
            }
        )
    return rows


def inputs(n: int) -> list[str]:
    return [f"/data/{imagenet_wnids()[i % CLASSES]}/img{i:04d}.jpg" for i in range(n)]


@pytest.fixture(scope="module")
def classified(tmp_path_factory):
    """A: inputs 0..449, B: 50..499 with a repeated row; errors on both sides; labels on all."""
    root = tmp_path_factory.mktemp("classified")
    paths = inputs(500)
    errors_a = {paths[60]: "invalid_image", paths[61]: "invalid_image", paths[62]: "image_too_large"}
    errors_b = {paths[61]: "invalid_image", paths[63]: "empty_input"}
    rows_a = classify_rows(paths[:450], seed=1, errors=errors_a)
    rows_b = classify_rows(paths[50:], seed=2, errors=errors_b)
    rows_b.append(dict(rows_b[10]))  # the same input twice in B
    schema = output_schema(ModelConfig())
    return write_output(root / "a", rows_a, schema), write_output(root / "b", rows_b, schema), rows_a, rows_b[:-1]


def expected_classify(rows_a: list[dict], rows_b: list[dict]) -> dict:
    """The figures of a comparison, from a dict join of the rows."""
    a = {r["path"]: r for r in rows_a}
    b = {r["path"]: r for r in rows_b}
    both = sorted(set(a) & set(b))
    clean = [p for p in both if a[p].get("error") is None and b[p].get("error") is None]
    agree = sum(a[p]["top_indices"][0] == b[p]["top_indices"][0] for p in clean)
    shifts = [b[p]["top_scores"][0] - a[p]["top_scores"][0] for p in clean]
    per_class: dict[str, dict] = {}
    for p in clean:
        truth = class_index_lookup()[a[p]["label"]]
        ra, rb = a[p]["top_indices"][0] == truth, b[p]["top_indices"][0] == truth
        c = per_class.setdefault(a[p]["label"], dict.fromkeys(("count", "a_right", "b_right", "lost", "gained"), 0))
        c["count"] += 1
        c["a_right"] += ra
        c["b_right"] += rb
        c["lost"] += ra and not rb
        c["gained"] += rb and not ra
    overlap = sum(len(set(a[p]["top_indices"]) & set(b[p]["top_indices"])) / 5 for p in clean)
    return {
        "both": len(both),
        "only_a": len(set(a) - set(b)),
        "only_b": len(set(b) - set(a)),
        "errors_a_only": sum(a[p].get("error") is not None and b[p].get("error") is None for p in both),
        "errors_b_only": sum(b[p].get("error") is not None and a[p].get("error") is None for p in both),
        "errors_both": sum(a[p].get("error") is not None and b[p].get("error") is not None for p in both),
        "compared": len(clean),
        "agreement": agree / len(clean),
        "overlap": overlap / len(clean),
        "shift_mean": sum(shifts) / len(shifts),
        "per_class": per_class,
    }


def test_classification_figures_equal_a_plain_join_over_one_partition_and_many(classified):
    a, b, rows_a, rows_b = classified
    want = expected_classify(rows_a, rows_b)
    one = compare_outputs(a, b)
    many = compare_outputs(a, b, partition_bytes=2_000)
    assert one["partitions"] == 1 and many["partitions"] > 5
    for report in (one, many):
        assert report["task"] == "classify" and report["a"]["model"] == "m1" and report["b"]["model"] == "m2"
        assert report["a"]["rows"] == 450 and report["b"]["rows"] == 451 and report["b"]["duplicates"] == 1
        assert report["inputs"]["both"] == want["both"] == 400
        assert (report["inputs"]["only_a"], report["inputs"]["only_b"]) == (want["only_a"], want["only_b"]) == (50, 50)
        assert len(report["inputs"]["only_a_examples"]) == 5
        assert set(report["inputs"]["only_a_examples"]) <= {r["path"] for r in rows_a[:50]}
        errors = report["errors"]
        assert (errors["a_only"], errors["b_only"], errors["both"]) == (
            want["errors_a_only"],
            want["errors_b_only"],
            want["errors_both"],
        )
        assert errors["a_codes"] == {"image_too_large": 1, "invalid_image": 2} and errors["b_codes"] == {
            "empty_input": 1,
            "invalid_image": 1,
        }
        assert report["compared"] == want["compared"]
        t = report["classify"]
        assert t["top1_agreement"] == pytest.approx(want["agreement"])
        assert t["k"] == 5 and t["topk_overlap"] == pytest.approx(want["overlap"])
        assert t["score_shift"]["mean"] == pytest.approx(want["shift_mean"])
        assert t["labelled"] == want["compared"]
        for label, c in want["per_class"].items():
            got = t["per_class"][label]
            assert (got["count"], got["a_right"], got["b_right"]) == (c["count"], c["a_right"], c["b_right"])
            assert (got["a_right_b_wrong"], got["a_wrong_b_right"]) == (c["lost"], c["gained"])
        lost = sum(c["lost"] for c in want["per_class"].values())
        assert t["flips"]["a_right_b_wrong"] == lost > 0
        assert sum(sum(row) for row in t["confusion"]["matrix"]) == want["compared"]  # every A class is shown
        assert sum(b["count"] for b in t["calibration"]["a"]["bins"]) == want["compared"]
        assert len(report["examples"]) == 24 and all(e["a"] != e["b"] for e in report["examples"])
        keys = [min(e["a_score"], e["b_score"]) for e in report["examples"]]
        assert keys == sorted(keys, reverse=True)
    assert one["examples"] == many["examples"]  # the same, however the rows were split
    assert {k: v for k, v in one.items() if k not in ("partitions", "classify")} == {
        k: v for k, v in many.items() if k not in ("partitions", "classify")
    }


def test_detections_match_by_iou_and_count_label_changes_and_unmatched_boxes(tmp_path):
    schema = output_schema(DETECTOR)

    def detections(path, boxes):
        return {
            "path": path,
            "model": "det",
            "boxes": [b for b, _, _ in boxes],
            "label_indices": [c for _, c, _ in boxes],
            "labels": [f"c{c}" for _, c, _ in boxes],
            "scores": [s for _, _, s in boxes],
        }

    a = [
        detections("/x/1.jpg", [([0, 0, 10, 10], 1, 0.9), ([20, 20, 30, 30], 2, 0.8)]),
        detections("/x/2.jpg", [([0, 0, 10, 10], 1, 0.9)]),
        detections("/x/3.jpg", []),
    ]
    b = [
        # the first box halved (IoU 0.5 exactly: matched), the second relabelled, one box more
        detections("/x/1.jpg", [([0, 0, 10, 5], 1, 0.7), ([20, 20, 30, 30], 3, 0.8), ([50, 50, 60, 60], 1, 0.6)]),
        detections("/x/2.jpg", [([5, 0, 15, 10], 1, 0.9)]),  # IoU 1/3: not matched
        detections("/x/3.jpg", []),
    ]
    report = compare_outputs(write_output(tmp_path / "a", a, schema, 1), write_output(tmp_path / "b", b, schema, 2))
    t = report["detect"]
    assert report["compared"] == 3 and t["boxes_a"] == 3 and t["boxes_b"] == 4
    assert t["matched"] == 2 and t["only_a"] == 1 and t["only_b"] == 2 and t["label_changes"] == 1
    assert t["mean_iou"] == pytest.approx((0.5 + 1.0) / 2)
    assert t["identical_images"] == 1 and t["score_shift"]["mean"] == pytest.approx((-0.2 + 0.0) / 2)
    assert t["changes"] == [{"a": "c2", "b": "c3", "count": 1}]
    examples = {e["path"]: e for e in report["examples"]}  # /x/3.jpg: alike, no example
    assert sorted(examples) == ["/x/1.jpg", "/x/2.jpg"]
    assert (examples["/x/1.jpg"]["unmatched"], examples["/x/1.jpg"]["label_changes"]) == (1, 1)
    assert (examples["/x/2.jpg"]["unmatched"], examples["/x/2.jpg"]["mean_iou"]) == (2, None)
    assert examples["/x/1.jpg"]["a_boxes"][0] == {"box": [0, 0, 10, 10], "label": "c1", "score": 0.9}


def test_box_matching_is_greedy_by_score_and_one_to_one():
    boxes_b = [[0, 0, 10, 10]]
    # both A boxes overlap B's only box: the higher-scored one takes it
    assert match_boxes([[0, 0, 10, 9], [0, 0, 10, 10]], [0.4, 0.9], boxes_b) == [(1, 0, 1.0)]
    assert match_boxes([[0, 0, 10, 10]], [0.5], [[0, 0, 10, 4]]) == []  # IoU 0.4 < 0.5
    assert match_boxes([], [], boxes_b) == [] and match_boxes(boxes_b, [1.0], []) == []


def embed_rows(paths: list[str], vectors: np.ndarray) -> list[dict]:
    return [{"path": p, "model": "e", "embedding": v.tolist()} for p, v in zip(paths, vectors)]


def test_embeddings_give_the_cosine_of_each_inputs_two_vectors(tmp_path):
    rng = np.random.default_rng(0)
    paths = [f"/e/{i}.jpg" for i in range(40)]
    va = rng.normal(size=(40, 16)).astype(np.float32)
    vb = (va + rng.normal(scale=0.3, size=va.shape)).astype(np.float32)
    schema = output_schema(ModelConfig(task="embed"), 16)
    a = write_output(tmp_path / "a", embed_rows(paths, va), schema)
    b = write_output(tmp_path / "b", embed_rows(paths[::-1], vb[::-1]), schema)  # another order: joined on path
    report = compare_outputs(a, b, partition_bytes=500)
    want = (va * vb).sum(1) / np.linalg.norm(va, axis=1) / np.linalg.norm(vb, axis=1)
    cosine = report["embed"]["cosine"]
    assert report["embed"]["comparable"] and report["compared"] == 40
    assert cosine["mean"] == pytest.approx(float(want.mean()), abs=1e-6)
    assert cosine["min"] == pytest.approx(float(want.min()), abs=1e-6)
    assert cosine["at_least"]["0.9"] == pytest.approx(float((want >= 0.9).mean()))
    assert sum(cosine["histogram"]["counts"]) == 40
    least = [e["cosine"] for e in report["examples"]]
    assert least == pytest.approx(sorted(want.tolist())[:24], abs=1e-6)


def test_embeddings_of_different_widths_are_counted_and_not_compared(tmp_path):
    paths = ["/e/0.jpg", "/e/1.jpg", "/e/2.jpg"]
    a = write_output(tmp_path / "a", embed_rows(paths, np.ones((3, 8))), output_schema(ModelConfig(task="embed"), 8), 1)
    b = write_output(
        tmp_path / "b", embed_rows(paths[:2], np.ones((2, 4))), output_schema(ModelConfig(task="embed"), 4), 1
    )
    report = compare_outputs(a, b)
    assert report["embed"] == {
        "dim_a": 8,
        "dim_b": 4,
        "comparable": False,
        "note": "the embeddings have different dimensions (A 8, B 4): their vectors live in different spaces "
        "and are not compared",
    }
    assert report["inputs"]["both"] == 2 and report["inputs"]["only_a"] == 1 and report["examples"] == []


def test_outputs_of_different_tasks_are_refused(classified, tmp_path):
    a = classified[0]
    b = write_output(
        tmp_path / "e", embed_rows(["/e/0.jpg"], np.ones((1, 4))), output_schema(ModelConfig(task="embed"), 4)
    )
    with pytest.raises(ValueError, match="holds classify predictions and B .* embed predictions"):
        compare_outputs(a, b)


def test_the_report_never_replaces_a_users_file_and_stays_outside_both_outputs(classified, tmp_path, capsys):
    a, b, _, _ = classified
    report = tmp_path / "r" / "cmp.json"
    report.parent.mkdir()
    for name in ("cmp.json", "cmp.html", "cmp.png"):
        user = report.parent / name
        user.write_text("the user's")
        with pytest.raises(OutputRefused, match="nothing was written"):
            run_compare(a, b, str(report))
        assert user.read_text() == "the user's"
        assert sorted(p.name for p in report.parent.iterdir()) == [name]
        user.unlink()
    with pytest.raises(OutputRefused, match="must not be inside output B"):
        run_compare(a, b, str(Path(b) / "cmp.json"))
    run_compare(a, b, str(report))
    assert json.loads(report.read_text())["format"] == "twinfer-comparison/1"
    first = report.with_suffix(".html").read_text()
    assert "twinfer-report/1" in first[:1000]
    run_compare(a, b, str(report))  # its own files are replaced
    assert report.with_suffix(".png").read_bytes().startswith(b"\x89PNG")
    assert "top-1 agreement" in capsys.readouterr().out
