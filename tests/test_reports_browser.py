"""The evaluation and comparison pages in the system Chromium, opened from disk as a user would.

Reports of real backfills (tests/backfill_pairs.py), written by the CLI. Each page must load with
no request beyond its own file (every other request is refused and fails the test) and no error;
every figure on it must read as its JSON's value, formatted independently here; its charts and
thumbnails must be drawn. With ``TWINFER_SCREENSHOT_DIR`` set, the pages' screenshots are written
there (docs/report-*.png) and so are the plots (docs/report-*-plot.png).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.test_ui_browser import browser, chromium  # noqa: F401  (Chromium, or a skip that says why)
from twinfer import cli

SCREENSHOTS = {"evaluation": "report-evaluation", "classify": "report-comparison", "detect": "report-detection"}


@pytest.fixture(scope="module")
def reports(classify_pair, embed_pair, detect_pair, tmp_path_factory) -> dict[str, Path]:
    """kind -> the JSON report (its page and plot beside it)."""
    out = tmp_path_factory.mktemp("reports")
    written = {"evaluation": out / "evaluation.json"}
    assert cli.main(["evaluate", "--predictions", str(classify_pair.a), "--output", str(written["evaluation"])]) == 0
    for kind, pair in (("classify", classify_pair), ("embed", embed_pair), ("detect", detect_pair)):
        written[kind] = out / f"{kind}.json"
        assert cli.main(["compare", str(pair.a), str(pair.b), "--output", str(written[kind])]) == 0
    return written


@pytest.fixture
def open_page(browser):  # noqa: F811
    """Opens a report page from disk; a request for anything but the page itself (a data: URI
    is no request) is refused and fails the test, and so does an error in the page."""
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    allowed: set[str] = set()
    others, problems = [], []

    def own_file_only(route):
        if route.request.url in allowed:
            route.continue_()
        else:
            others.append(route.request.url)
            route.abort()

    context.route("**/*", own_file_only)
    page = context.new_page()
    page.on("request", lambda r: None if r.url in allowed or r.url.startswith("data:") else others.append(r.url))
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)

    def go(path: Path):
        allowed.add(path.as_uri())
        page.goto(path.as_uri())
        page.wait_for_load_state("load")
        return page

    yield go
    context.close()
    assert not others, f"the page asked for more than itself: {others}"
    assert not problems, f"errors in the page: {problems}"


def formatted(value, kind: str) -> str:
    """The page's number format, restated: percentages with two decimals, four decimals, integers."""
    if value is None:
        return "n/a"
    return {"pct": lambda v: f"{v * 100:.2f} %", "num": lambda v: f"{v:.4f}", "int": str}[kind](value)


def resolve(report: dict, pointer: str):
    value = report
    for part in pointer.lstrip("/").split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


def shown_figures(page) -> list[dict]:
    return page.evaluate(
        """() => [...document.querySelectorAll('[data-field]')].map(e => (
            {field: e.dataset.field, format: e.dataset.format, text: e.textContent}))"""
    )


def check_page(page, report: dict, must_show: set[str]) -> set[str]:
    """Every figure equals the JSON; returns the JSON pointers shown."""
    figures = shown_figures(page)
    for figure in figures:
        assert figure["text"] == formatted(resolve(report, figure["field"]), figure["format"]), figure
    shown = {f["field"] for f in figures}
    assert must_show <= shown, must_show - shown
    pictures = page.evaluate("() => [...document.images].map(i => [i.complete, i.naturalWidth])")
    assert pictures and all(done and width > 0 for done, width in pictures)
    return shown


def save_screenshots(page, report_path: Path, kind: str) -> None:
    where = os.environ.get("TWINFER_SCREENSHOT_DIR")
    if where and kind in SCREENSHOTS:
        page.screenshot(path=Path(where) / f"{SCREENSHOTS[kind]}.png", full_page=True)
        shutil.copyfile(report_path.with_suffix(".png"), Path(where) / f"{SCREENSHOTS[kind]}-plot.png")


def test_the_evaluation_page_shows_the_jsons_figures_charts_and_mistakes(open_page, reports):
    report = json.loads(reports["evaluation"].read_text())
    page = open_page(reports["evaluation"].with_suffix(".html"))
    per_class = {f"/per_class/{label}/top1" for label in report["per_class"]}
    shown = check_page(page, report, {"/count", "/top1", "/top5", "/calibration/ece", *per_class})
    classes = report["confusion"]["classes"]
    assert page.locator("svg rect.cell").count() == len(classes) * (len(classes) + 1)
    assert sum(1 for f in shown if f.startswith("/confusion/matrix/")) == sum(
        1 for row in report["confusion"]["matrix"] for n in row if n
    )
    assert page.locator("figure img").count() == len(report["worst"]) > 0
    assert page.locator("h1").inner_text() == "Evaluation"
    save_screenshots(page, reports["evaluation"], "evaluation")


def test_the_classification_comparison_page_shows_agreement_flips_and_disagreements(open_page, reports):
    report = json.loads(reports["classify"].read_text())
    page = open_page(reports["classify"].with_suffix(".html"))
    t = report["classify"]
    must = {
        "/inputs/both",
        "/inputs/only_a",
        "/inputs/only_b",
        "/errors/both",
        "/classify/top1_agreement",
        "/classify/flips/a_right_b_wrong",
        "/classify/flips/a_wrong_b_right",
        "/classify/accuracy/a",
        "/classify/accuracy/b",
        "/classify/calibration/a/ece",
        *{f"/classify/per_class/{label}/a_top1" for label in t["per_class"]},
        *{f"/classify/per_class/{label}/b_top1" for label in t["per_class"]},
    }
    check_page(page, report, must)
    assert page.locator("figure img").count() == len(report["examples"]) > 0
    assert page.locator("svg rect.bar.b").count() > 0  # B's bars beside A's
    save_screenshots(page, reports["classify"], "classify")


def test_the_embedding_comparison_page_shows_the_cosines(open_page, reports):
    report = json.loads(reports["embed"].read_text())
    page = open_page(reports["embed"].with_suffix(".html"))
    levels = {f"/embed/cosine/at_least/{level}" for level in report["embed"]["cosine"]["at_least"]}
    check_page(page, report, {"/embed/cosine/mean", "/embed/cosine/min", "/embed/dim_a", *levels})
    assert page.locator("figure img").count() == len(report["examples"]) > 0


def test_the_detection_comparison_page_draws_both_sides_boxes_on_the_pictures(open_page, reports):
    report = json.loads(reports["detect"].read_text())
    page = open_page(reports["detect"].with_suffix(".html"))
    check_page(page, report, {"/detect/matched", "/detect/only_a", "/detect/only_b", "/detect/label_changes"})
    boxes = sum(len(e["a_boxes"]) + len(e["b_boxes"]) for e in report["examples"])
    assert page.locator("figure svg rect.box").count() == boxes > 0
    save_screenshots(page, reports["detect"], "detect")
