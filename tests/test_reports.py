"""The reports' pieces without Ray or a browser: the evaluation's confusion matrix, calibration and
mistakes against counts made here, the page and plot locations, and the rule that neither ever
replaces a file twinfer did not write."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from batch.eval_details import evaluation_details
from batch.ownership import OutputRefused
from batch.predict_actor import output_schema
from batch.report_html import render_page
from batch.report_stats import Reliability
from batch.reports import GENERATOR, companion_uris
from shared import ModelConfig
from shared.labels import imagenet_categories, imagenet_wnids
from tests.test_compare import write_output
from twinfer import cli


def prediction(path: str, label: str | None, top: list[int], score: float, error: str | None = None) -> dict:
    if error:
        return {"path": path, "label": label, "model": "m", "error": error}
    scores = [score] + [(1 - score) / (len(top) - 1)] * (len(top) - 1)
    return {
        "path": path,
        "label": label,
        "model": "m",
        "top_indices": top,
        "top_scores": scores,
        "top_labels": [imagenet_categories()[i] for i in top],
    }


ROWS = [
    prediction("/d/0.jpg", imagenet_wnids()[0], [0, 1, 2, 3, 4], 0.95),  # right, sure
    prediction("/d/1.jpg", imagenet_wnids()[0], [1, 0, 2, 3, 4], 0.85),  # wrong, sure
    prediction("/d/2.jpg", imagenet_wnids()[0], [2, 0, 1, 3, 4], 0.35),  # wrong, unsure
    prediction("/d/3.jpg", imagenet_wnids()[1], [1, 0, 2, 3, 4], 0.55),  # right
    prediction("/d/4.jpg", "goldfish", [7, 1, 2, 3, 4], 0.90),  # a class name; wrong, the surest mistake
    prediction("/d/5.jpg", imagenet_wnids()[1], [], 0.0, error="invalid_image"),  # not counted
    prediction("/d/6.jpg", None, [1, 0, 2, 3, 4], 0.99),  # unlabelled: not counted
    prediction("/d/7.jpg", "no-such-class", [1, 0, 2, 3, 4], 0.99),  # unknown label: not counted
]


def table(rows: list[dict]) -> pa.Table:
    schema = output_schema(ModelConfig())
    return pa.table({name: [r.get(name) for r in rows] for name in schema.names}, schema=schema)


def test_the_evaluation_details_count_what_the_accuracy_counts():
    details = evaluation_details(table(ROWS).to_batches(max_chunksize=3))
    confusion = details["confusion"]
    tench, goldfish = imagenet_categories()[0], imagenet_categories()[1]
    # rows: truth classes by count (tench 3, goldfish 2); columns: the same, then every other class
    assert confusion["classes"] == confusion["columns"] == [tench, goldfish]
    assert confusion["matrix"] == [[1, 1, 1], [0, 1, 1]]
    bins = {round(b["lower"], 1): b for b in details["calibration"]["bins"] if b["count"]}
    assert {k: (b["count"], b["accuracy"]) for k, b in bins.items()} == {
        0.3: (1, 0.0),
        0.5: (1, 1.0),
        0.8: (1, 0.0),
        0.9: (2, 0.5),
    }
    assert details["calibration"]["count"] == 5
    want_ece = (0.35 + 0.45 + 0.85 + abs(0.5 - 0.925) * 2) / 5
    assert details["calibration"]["ece"] == pytest.approx(want_ece)
    worst = details["worst"]
    assert [(w["path"], w["predicted"]) for w in worst] == [
        ("/d/4.jpg", imagenet_categories()[7]),
        ("/d/1.jpg", goldfish),
        ("/d/2.jpg", imagenet_categories()[2]),
    ]
    assert worst[0] == {"path": "/d/4.jpg", "label": "goldfish", "predicted": imagenet_categories()[7], "score": 0.9}


def test_an_empty_reliability_diagram_has_no_error_figure():
    assert Reliability().result()["ece"] is None
    reliability = Reliability()
    reliability.add(np.array([1.0, 0.0]), np.array([True, False]))  # the edges land in the end bins
    assert [b["count"] for b in reliability.result()["bins"]] == [1] + [0] * 8 + [1]


@pytest.mark.parametrize(
    "report, page, plot",
    [
        ("/r/run.evaluation.json", "/r/run.evaluation.html", "/r/run.evaluation.png"),
        ("/r/report", "/r/report.html", "/r/report.png"),
        (
            "s3://b/k/cmp.json?endpoint_override=h:9&scheme=http",
            "s3://b/k/cmp.html?endpoint_override=h:9&scheme=http",
            None,
        ),
    ],
)
def test_the_page_and_plot_go_beside_the_json(report, page, plot):
    uris = companion_uris(report)
    assert uris["html"] == page and (plot is None or uris["png"] == plot)


@pytest.fixture
def predictions(tmp_path):
    return write_output(tmp_path / "out", ROWS, output_schema(ModelConfig()), files=2)


@pytest.mark.parametrize("kind", ["html", "png"])
def test_evaluate_never_replaces_a_users_page_or_plot(predictions, tmp_path, capsys, kind):
    user = tmp_path / f"out.evaluation.{kind}"
    user.write_bytes(b"\x89PNG the user's own" if kind == "png" else b"<html>the user's own</html>")
    before = user.read_bytes()
    assert cli.main(["evaluate", "--predictions", predictions]) == 2
    assert f"is not a twinfer report {kind.upper()}" in capsys.readouterr().err
    assert user.read_bytes() == before and not (tmp_path / "out.evaluation.json").exists()  # refused before any work
    user.unlink()
    assert cli.main(["evaluate", "--predictions", predictions]) == 0
    assert cli.main(["evaluate", "--predictions", predictions]) == 0  # twinfer's own are replaced
    assert Image.open(tmp_path / "out.evaluation.png").info["Software"] == GENERATOR
    assert (tmp_path / "out.evaluation.html").read_text().count(GENERATOR) == 1
    report = json.loads((tmp_path / "out.evaluation.json").read_text())
    assert report["count"] == 5 and report["predictions"] == predictions and len(report["worst"]) == 3


def test_a_backfill_with_evaluate_refuses_a_users_page_before_it_starts(tmp_path):
    from batch.config import BackfillConfig
    from batch.pipeline import run_backfill

    (tmp_path / "in").mkdir()
    (tmp_path / "out.evaluation.html").write_text("mine")
    with pytest.raises(OutputRefused, match="not a twinfer report HTML"):
        run_backfill(BackfillConfig(input=str(tmp_path / "in"), output=str(tmp_path / "out"), evaluate=True))
    assert not (tmp_path / "out").exists() and (tmp_path / "out.evaluation.html").read_text() == "mine"


def test_the_page_escapes_what_the_data_says():
    hostile = '<img src=x onerror="alert(1)">'
    rows = [prediction(f"/d/{hostile}.jpg", hostile, [0, 1, 2, 3, 4], 0.9)]
    report = {
        "format": "twinfer-evaluation/1",
        "predictions": hostile,
        "count": 1,
        "top1": None,
        "top5": None,
        "per_class": {hostile: {"count": 1, "top1": 0.0, "top5": 0.0}},
        "excluded": {"errors": 0},
        **evaluation_details(table(rows).to_batches()),
    }
    report["worst"] = [{"path": rows[0]["path"], "label": hostile, "predicted": hostile, "score": 0.9}]
    page = render_page(report, {rows[0]["path"]: {"error": hostile}})
    assert hostile not in page and "<script" not in page and "onerror=" not in page.replace("onerror=&quot;", "")
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in page


def test_the_plot_is_a_png_a_person_can_open():
    details = evaluation_details(table(ROWS).to_batches())
    from batch.report_png import render_png

    report = {"format": "twinfer-evaluation/1", "count": 5, "top1": 0.4, "top5": 1.0, **details}
    report["per_class"] = {imagenet_wnids()[0]: {"count": 3, "top1": 1 / 3, "top5": 1.0}}
    image = Image.open(io.BytesIO(render_png(report)))
    assert image.format == "PNG" and image.size == (1200, 500) and image.info["Software"] == GENERATOR
