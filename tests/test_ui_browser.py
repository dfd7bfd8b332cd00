"""The page at GET / in a real browser, and its routes over HTTP, against a live app on the shared Serve.

Headless Chromium from the system (Debian package ``chromium``; ``make test`` installs it when
missing), driven by Playwright for Python with ``executable_path``: no browser is downloaded.
Without Chromium or Playwright the browser tests skip, saying why, unless
``TWINFER_REQUIRE_BROWSER`` is set (CI sets it): then they fail. ``TWINFER_CHROMIUM`` names
another binary. Every request the page makes to another origin is refused and fails the test, so
the page is shown to work with no network; screenshots go to each test's tmp dir, and with
``TWINFER_SCREENSHOT_DIR`` set the classify test also writes ``ui.png`` there (docs/ui.png).

The HTTP tests of the page's routes and the live /openapi.json run without a browser.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
from pathlib import Path

import httpx
import jsonschema
import pytest
from ray import serve

from deployments.app import build
from deployments.config import AppArgs, IngressConfig
from deployments.openapi import build_openapi
from tests import images
from tests.serving import STANDARD_INGRESS
from tests.test_openapi import response_pointer, schema_validator
from twinfer.samples import sample_jpegs

KEYED_APP, KEYED_PREFIX = "twinfer-ui-keys", "/ui-keys"
KEY = "ui-test-key-0123456789abcdef"
CAT_LABELS = {"Egyptian cat", "tabby", "tiger cat"}
CHROMIUM = os.environ.get("TWINFER_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
    "--headless",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
INGRESS = {"num_cpus": 0.25, "decode_threads": 2, "model_call_timeout_s": 180}  # CI machines can be slow
URL = re.compile(r"(?:\b[a-z][a-z0-9+.-]*:|(?:src|href)=[\"']?|url\()//[^\s\"'<>)]*", re.IGNORECASE)
SVG_NAMESPACE = "http://www.w3.org/2000/svg"  # an XML name, never fetched


def model_entry(model: dict, name: str | None = None) -> dict:
    entry = {
        "model": model,
        "num_cpus": 0.25,
        "max_ongoing_requests": 4,
        "batching": {"max_batch_size": 2, "batch_wait_timeout_s": 0.0, "max_concurrent_batches": 1},
    }
    return {**entry, "name": name} if name else entry


def keyed_args() -> AppArgs:
    return AppArgs.model_validate(
        {
            "ingress": {**INGRESS, "api_keys_env": "TWINFER_UI_TEST_KEYS"},
            "models": [model_entry({"name": "efficientnet_lite0", "weights": "random"})],
        }
    )


@pytest.fixture(scope="module")
def site(standard_app):
    """The page of tests/serving.py's app, at the root (the keyed site is under a prefix)."""
    return standard_app


@pytest.fixture(scope="module")
def keyed_site(serve_url):
    env = {"env_vars": {"TWINFER_UI_TEST_KEYS": KEY}}
    serve.run(build(keyed_args(), ingress_runtime_env=env), name=KEYED_APP, route_prefix=KEYED_PREFIX)
    yield f"{serve_url}{KEYED_PREFIX}"
    serve.delete(KEYED_APP)


@pytest.fixture(scope="module")
def http():
    with httpx.Client(timeout=120) as client:
        yield client


# ---- the page's routes over HTTP ------------------------------------------------------------------


def test_the_page_and_its_files_are_served_same_origin_with_strict_headers(http, site):
    page = http.get(f"{site}/")
    assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "style-src 'self'" in policy and "default-src 'none'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert "<script>" not in page.text and " style=" not in page.text  # nothing inline
    for path, media_type, needle in [
        ("static/app.js", "text/javascript; charset=utf-8", "v1/models"),
        ("static/app.css", "text/css; charset=utf-8", ":root"),
    ]:
        response = http.get(f"{site}/{path}")
        assert (
            response.status_code == 200 and response.headers["content-type"] == media_type and needle in response.text
        )
    for text in (page.text, http.get(f"{site}/static/app.js").text, http.get(f"{site}/static/app.css").text):
        assert set(URL.findall(text)) <= {SVG_NAMESPACE}, "the page may load nothing from elsewhere"
    for response in (page, http.get(f"{site}/static/app.js"), http.get(f"{site}/openapi.json")):
        assert (
            response.headers["cache-control"] == "no-cache" and response.headers["x-content-type-options"] == "nosniff"
        )
        again = http.get(response.url, headers={"if-none-match": response.headers["etag"]})
        assert again.status_code == 304 and not again.content


def test_the_prefix_without_its_slash_redirects_to_the_page(http, keyed_site):
    response = http.get(keyed_site)  # /ui-keys: relative links would resolve above the prefix
    assert response.status_code == 308 and response.headers["location"] == f"{KEYED_PREFIX.strip('/')}/"
    assert http.get(keyed_site, follow_redirects=True).url.path == f"{KEYED_PREFIX}/"


@pytest.mark.parametrize("path", ["", "static/app.js", "openapi.json"])
def test_the_page_routes_take_get_only(http, site, path):
    response = http.post(f"{site}/{path}", content=b"x")
    assert response.status_code == 405 and response.json()["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize("path", ["index.html", "static/", "static/index.html", "static/app.js/x", "openapi.yaml"])
def test_other_paths_are_still_the_json_404(http, site, path):
    response = http.get(f"{site}/{path}")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


def test_live_answers_match_the_served_openapi_document(http, site):
    document = http.get(f"{site}/openapi.json").json()
    assert document == json.loads(json.dumps(build_openapi(IngressConfig.model_validate(STANDARD_INGRESS))))

    def check(path: str, method: str, response: httpx.Response) -> None:
        schema_validator(document, response_pointer(path, method, response.status_code)).validate(response.json())

    check("/v1/models", "get", http.get(f"{site}/v1/models"))
    jpeg, raw = images.small_jpeg("astronaut", size=150), {"content-type": "image/jpeg"}
    for name, task in (("efficientnet_lite0", "classify"), ("lite0-embed", "embed"), ("fasterrcnn_v2", "detect")):
        response = http.post(f"{site}/v1/models/{name}/{task}", content=jpeg, headers=raw)
        assert response.status_code == 200, response.text
        check(f"/v1/models/{{name}}/{task}", "post", response)
    detections = http.post(
        f"{site}/v1/models/fasterrcnn_v2/detect", params={"score_threshold": 0}, content=jpeg, headers=raw
    )
    assert detections.json()["detections"]  # random weights, a zero threshold: boxes to validate
    check("/v1/models/{name}/detect", "post", detections)
    for response in (
        http.post(f"{site}/v1/models/efficientnet_lite0/classify", content=images.corrupt_jpeg(), headers=raw),
        http.post(f"{site}/v1/models/efficientnet_lite0/classify", params={"top_k": 0}, content=jpeg, headers=raw),
        http.post(f"{site}/v1/models/efficientnet_lite0/detect", content=jpeg, headers=raw),
        http.post(
            f"{site}/v1/models/efficientnet_lite0/classify", content=jpeg, headers={"content-type": "text/plain"}
        ),
    ):
        check("/v1/models/{name}/classify", "post", response)
    with pytest.raises(jsonschema.ValidationError):  # and the check can fail: invalid_image is no 422
        check(
            "/v1/models/{name}/classify",
            "post",
            httpx.Response(422, json={"error": {"code": "invalid_image", "message": "x"}}),
        )


def test_with_api_keys_the_page_and_document_stay_open_and_the_api_does_not(http, keyed_site):
    for path in ("", "static/app.js", "static/app.css", "openapi.json"):
        assert http.get(f"{keyed_site}/{path}").status_code == 200, path
    assert "apiKey" in http.get(f"{keyed_site}/openapi.json").json()["components"]["securitySchemes"]
    assert http.get(f"{keyed_site}/v1/models").status_code == 401
    assert http.get(f"{keyed_site}/static/nothing").status_code == 401  # unknown paths: not even a 404
    assert http.get(f"{keyed_site}/v1/models", headers={"authorization": f"Bearer {KEY}"}).status_code == 200


# ---- in the browser ---------------------------------------------------------------------------------


def browser_missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the Python package playwright is not installed (pip install -e '.[test]')"
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium; `make test` installs it)"
    return None


@pytest.fixture(scope="session")  # session-scoped: decided before Ray starts, so it is told at once
def chromium() -> str:
    missing = browser_missing()
    if missing:
        if os.environ.get("TWINFER_REQUIRE_BROWSER"):
            pytest.fail(f"TWINFER_REQUIRE_BROWSER is set, but {missing}")
        pytest.skip(f"browser tests: {missing}")
    return CHROMIUM


@pytest.fixture(scope="module")
def browser(chromium):
    """Module-scoped: while Playwright's sync API is open, its event loop counts as running in this
    thread (asyncio.run() would refuse), so it is closed when this file's tests end."""
    from playwright.sync_api import expect as playwright_expect
    from playwright.sync_api import sync_playwright

    playwright_expect.set_options(timeout=120_000)  # a loaded CI machine: model answers can take a while
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser, serve_url):
    """A fresh page that may talk to the app's origin only; page errors and CSP reports fail the test."""
    context = browser.new_context(viewport={"width": 1000, "height": 900})
    context.set_default_timeout(120_000)
    foreign, problems = [], []

    def same_origin_only(route):
        if route.request.url.startswith(f"{serve_url}/"):
            route.continue_()
        else:
            foreign.append(route.request.url)
            route.abort()

    def console(message):
        # a refused 4xx answer is logged as "Failed to load resource"; anything else is a problem
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            problems.append(message.text)

    context.route("**/*", same_origin_only)
    page = context.new_page()
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("console", console)
    yield page
    context.close()
    assert not foreign, f"the page asked another origin: {foreign}"
    assert not problems, f"errors in the page: {problems}"


def expect(locator):
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def choose_model(page, site: str, name: str) -> None:
    page.goto(f"{site}/")
    page.get_by_label("Model", exact=True).select_option(name)


def upload(page, name: str, data: bytes, mime_type: str = "image/jpeg") -> None:
    page.get_by_label("Image", exact=True).set_input_files(
        files=[{"name": name, "mimeType": mime_type, "buffer": data}]
    )


def test_classify_the_cat_shows_labelled_bars(page, site, tmp_path):
    choose_model(page, site, "efficientnet_lite0")
    upload(page, "chelsea.jpg", sample_jpegs(("chelsea",))["chelsea"])
    bars = page.locator("#predictions li")
    expect(bars).to_have_count(5)
    assert bars.first.locator(".label").inner_text() in CAT_LABELS
    assert bars.first.locator(".score").inner_text().endswith("%")
    expect(page.locator("#photo")).to_be_visible()
    expect(page.get_by_role("status")).to_contain_text("efficientnet_lite0 answered chelsea.jpg")
    page.screenshot(path=tmp_path / "classify.png", full_page=True)
    if os.environ.get("TWINFER_SCREENSHOT_DIR"):
        page.locator("body").screenshot(path=Path(os.environ["TWINFER_SCREENSHOT_DIR"]) / "ui.png")

    top_k = page.get_by_label("Top k", exact=True)  # a new k asks again
    top_k.fill("3")
    top_k.press("Enter")
    expect(bars).to_have_count(3)
    assert bars.first.locator(".label").inner_text() in CAT_LABELS


def test_a_corrupt_image_shows_the_apis_message(page, site, http, tmp_path):
    corrupt = images.corrupt_jpeg()
    expected = http.post(f"{site}/v1/models/efficientnet_lite0/classify", content=corrupt).json()["error"]
    choose_model(page, site, "efficientnet_lite0")
    upload(page, "broken.jpg", corrupt)
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text(expected["message"])
    expect(alert).to_contain_text("invalid_image")
    expect(page.locator("#result")).to_be_hidden()
    page.screenshot(path=tmp_path / "error.png", full_page=True)


def test_detect_draws_boxes_over_the_photo_and_the_slider_filters_them(page, site, http, tmp_path):
    data = images.small_jpeg("astronaut", size=512)
    page.set_viewport_size({"width": 1000, "height": 500})  # the page shows it at most 70 % of this high
    every = http.post(f"{site}/v1/models/fasterrcnn_v2/detect", params={"score_threshold": 0}, content=data).json()[
        "detections"
    ]
    assert every, "the random detector gave no box at all"
    choose_model(page, site, "fasterrcnn_v2")
    slider = page.get_by_label("Score threshold", exact=True)
    expect(slider).to_be_visible()
    expect(page.get_by_label("Top k", exact=True)).to_be_hidden()
    upload(page, "astronaut.jpg", data)
    expect(page.locator("#result[data-task=detect]")).to_be_visible()

    slider.focus()
    slider.press("Home")  # keyboard: down to 0, every detection the model gave
    expect(page.locator("#threshold-value")).to_have_text("0.00")
    drawn = page.locator("#boxes g.detection")
    expect(drawn).to_have_count(len(every))
    expect(page.locator("#boxes")).to_have_attribute("data-count", str(len(every)))
    table = page.get_by_text("as a table")
    table.focus()
    table.press("Enter")  # the detections' text twin, opened from the keyboard
    expect(page.locator("#detections tbody tr").first).to_be_visible()
    expect(page.locator("#detections tbody tr")).to_have_count(len(every))

    # the overlay covers the displayed image, and each box is where the API put it, scaled
    photo, overlay = page.locator("#photo").bounding_box(), page.locator("#boxes").bounding_box()
    for key in ("x", "y", "width", "height"):
        assert overlay[key] == pytest.approx(photo[key], abs=1)
    natural_width = page.locator("#photo").evaluate("img => img.naturalWidth")
    scale = photo["width"] / natural_width
    assert scale < 0.9  # shown smaller than its pixels: the boxes had to be scaled
    for detection, rect in list(zip(every, drawn.locator("rect.box").all()))[:5]:  # drawn in the API's order
        box = rect.bounding_box()
        x1, y1, x2, y2 = detection["box"]
        assert box["x"] == pytest.approx(photo["x"] + x1 * scale, abs=3) and box["width"] == pytest.approx(
            (x2 - x1) * scale, abs=4
        )
        assert box["y"] == pytest.approx(photo["y"] + y1 * scale, abs=3) and box["height"] == pytest.approx(
            (y2 - y1) * scale, abs=4
        )
    page.screenshot(path=tmp_path / "detect.png", full_page=True)

    slider.press("End")  # 1.0: no random-weight detection scores that
    expect(page.locator("#threshold-value")).to_have_text("1.00")
    expect(drawn).to_have_count(sum(d["score"] >= 1.0 for d in every))


def test_drop_an_image_to_embed_it(page, site, tmp_path):
    choose_model(page, site, "lite0-embed")
    expect(page.locator("#model-info")).to_contain_text("1280 dimensions")
    encoded = base64.b64encode(sample_jpegs(("coffee",))["coffee"]).decode()
    transfer = page.evaluate_handle(
        """([name, encoded]) => {
            const bytes = Uint8Array.from(atob(encoded), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, { type: "image/jpeg" }));
            return transfer;
        }""",
        ["coffee.jpg", encoded],
    )
    page.locator("#drop").dispatch_event("drop", {"dataTransfer": transfer})
    expect(page.locator("#embedding-summary")).to_contain_text("1280 dimensions, L2 norm 1.000")
    expect(page.locator("#sparkline polyline")).to_have_count(1)
    expect(page.get_by_role("status")).to_contain_text("lite0-embed answered coffee.jpg")
    page.screenshot(path=tmp_path / "embed.png", full_page=True)


def test_every_control_is_labelled_and_reached_by_tab_in_order(page, site):
    page.goto(f"{site}/")
    expect(page.get_by_label("Model", exact=True)).to_be_enabled()
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll("input, select, button, output")]
            .filter((e) => !(e.labels && e.labels.length) && !e.getAttribute("aria-label") && !e.textContent.trim())
            .map((e) => e.id)"""
    )
    assert unlabelled == []
    order = []
    for _ in range(4):  # the OpenAPI link, then the form; Run is disabled until an image is chosen
        page.keyboard.press("Tab")
        order.append(page.evaluate("() => document.activeElement.id || document.activeElement.tagName"))
    assert order == ["A", "model", "top-k", "file"]


def test_with_api_keys_the_page_asks_for_one_and_keeps_it_in_memory(page, keyed_site, tmp_path):
    page.goto(f"{keyed_site}/")
    key = page.get_by_label("API key", exact=True)
    expect(key).to_be_focused()
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("needs an API key")
    key.fill("not-the-key-0123456789")
    key.press("Enter")
    expect(alert).to_contain_text("the API key is not valid")
    key.fill(KEY)
    key.press("Enter")
    expect(page.get_by_label("Model", exact=True)).to_be_enabled()
    expect(alert).to_be_hidden()
    upload(page, "rocket.jpg", images.small_jpeg("rocket"))  # every call carries the key
    expect(page.locator("#predictions li")).to_have_count(5)
    page.screenshot(path=tmp_path / "keyed.png", full_page=True)
    stored = page.evaluate("() => [localStorage.length, sessionStorage.length, document.cookie]")
    assert stored == [0, 0, ""]
    page.reload()  # memory only: a reload asks again
    expect(page.get_by_label("API key", exact=True)).to_be_focused()
