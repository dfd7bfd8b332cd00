"""The online path over real HTTP on loopback, against a real Serve instance on the shared Ray."""

from __future__ import annotations

import concurrent.futures as cf

import httpx
import numpy as np
import pytest
from ray import serve

from deployments.app import build, model_deployment_name
from deployments.config import AppArgs
from tests import images
from tests.serving import BODY_CAP, SLIVER, STANDARD_APP
from twinfer.samples import encode, sample_array

CATS = set(range(281, 286))


@pytest.fixture(scope="module")
def client(standard_app):
    with httpx.Client(base_url=standard_app, timeout=60) as http:
        yield http


def classify(client, data: bytes, top_k=None, content_type="image/jpeg"):
    params = {} if top_k is None else {"top_k": top_k}
    return client.post(
        "/v1/models/efficientnet_lite0/classify", params=params, content=data, headers={"content-type": content_type}
    )


def test_classify_raw_body(client):
    response = classify(client, encode(sample_array("chelsea")))
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == "efficientnet_lite0" and len(body["predictions"]) == 5
    assert body["predictions"][0]["index"] in CATS
    assert set(body["predictions"][0]) == {"label", "index", "score"}


def test_classify_multipart(client):
    response = client.post(
        "/v1/models/efficientnet_lite0/classify",
        files={"file": ("coffee.png", encode(images.small_photo("coffee", 224), "PNG"), "image/png")},
    )
    assert response.status_code == 200
    assert response.json()["predictions"][0]["label"] == "espresso"


@pytest.mark.parametrize("top_k", [1, 3, 10])
def test_top_k(client, top_k):
    predictions = classify(client, images.small_jpeg("rocket"), top_k=top_k).json()["predictions"]
    assert len(predictions) == top_k
    assert [p["score"] for p in predictions] == sorted((p["score"] for p in predictions), reverse=True)


def test_http_answer_equals_direct_wrapper(client, embedded_wrapper):
    for name in ("chelsea", "coffee", "rocket"):
        data = encode(sample_array(name))
        online = classify(client, data, top_k=5).json()["predictions"]
        direct = embedded_wrapper.classify_bytes(data, top_k=5)
        assert [p["label"] for p in online] == [p["label"] for p in direct]
        assert np.allclose([p["score"] for p in online], [p["score"] for p in direct], atol=1e-5, rtol=0)


def test_detect_returns_boxes_inside_the_image(client):
    data = images.small_jpeg("astronaut", size=150)
    height, width = images.small_photo("astronaut", size=150).shape[:2]
    response = client.post(
        "/v1/models/fasterrcnn_v2/detect",
        params={"score_threshold": 0.0},
        content=data,
        headers={"content-type": "image/jpeg"},
    )
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == "fasterrcnn_v2" and body["detections"]
    for d in body["detections"]:
        assert set(d) == {"label", "index", "score", "box"}
        x1, y1, x2, y2 = d["box"]
        assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height


@pytest.fixture(scope="module")
def embedder():
    from shared import ModelConfig, ModelWrapper

    return ModelWrapper(ModelConfig(task="embed"))


def test_embed_answers_the_direct_wrappers_normalised_vector(client, embedder):
    for name in ("chelsea", "rocket"):
        data = encode(sample_array(name))
        response = client.post("/v1/models/lite0-embed/embed", content=data, headers={"content-type": "image/jpeg"})
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"model", "dim", "embedding"} and body["model"] == "lite0-embed"
        (direct,) = embedder.predict_batch([embedder.load(data)])
        assert body["dim"] == len(body["embedding"]) == len(direct) == 1280
        assert np.allclose(body["embedding"], direct, atol=1e-5, rtol=0)
        assert np.linalg.norm(body["embedding"]) == pytest.approx(1.0, abs=1e-5)


def test_concurrent_requests_are_batched(client):
    handle = serve.get_deployment_handle(model_deployment_name("efficientnet_lite0"), STANDARD_APP)
    before = handle.batch_stats.remote().result()
    data = images.small_jpeg("coffee")
    with cf.ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(lambda _: classify(client, data).status_code, range(16)))
    assert statuses == [200] * 16
    after = handle.batch_stats.remote().result()
    new_batches = {size: after.get(size, 0) - before.get(size, 0) for size in after}
    assert sum(size * n for size, n in new_batches.items()) == 16  # every request went through a batch
    assert max(size for size, n in new_batches.items() if n) > 1, new_batches


def test_one_corrupt_image_fails_only_itself(client):
    good = images.small_jpeg("coffee")
    bodies = [good] * 7 + [images.corrupt_jpeg()]
    with cf.ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda data: classify(client, data), bodies))
    assert sorted(r.status_code for r in responses) == [200] * 7 + [400]
    assert all(r.json()["predictions"][0]["label"] == "espresso" for r in responses[:7])
    assert responses[7].json()["error"]["code"] == "invalid_image"


ERROR_CASES = [
    # (id, method, path, params, body, content type, status, code)
    ("empty", "POST", "/v1/models/efficientnet_lite0/classify", {}, b"", "image/jpeg", 400, "empty_input"),
    (
        "corrupt",
        "POST",
        "/v1/models/efficientnet_lite0/classify",
        {},
        images.corrupt_jpeg(),
        "image/jpeg",
        400,
        "invalid_image",
    ),
    (
        "truncated",
        "POST",
        "/v1/models/efficientnet_lite0/classify",
        {},
        images.truncated_jpeg(),
        "image/jpeg",
        400,
        "invalid_image",
    ),
    (
        "not_image",
        "POST",
        "/v1/models/efficientnet_lite0/classify",
        {},
        images.not_an_image(),
        "application/octet-stream",
        400,
        "invalid_image",
    ),
    (
        "unknown_model",
        "POST",
        "/v1/models/alexnet/classify",
        {},
        images.small_jpeg(),
        "image/jpeg",
        404,
        "model_not_found",
    ),
    (
        "detect_on_classifier",
        "POST",
        "/v1/models/efficientnet_lite0/detect",
        {},
        images.small_jpeg(),
        "image/jpeg",
        404,
        "wrong_task",
    ),
    (
        "classify_on_detector",
        "POST",
        "/v1/models/fasterrcnn_v2/classify",
        {},
        images.small_jpeg(),
        "image/jpeg",
        404,
        "wrong_task",
    ),
    (
        "embed_on_classifier",
        "POST",
        "/v1/models/efficientnet_lite0/embed",
        {},
        images.small_jpeg(),
        "image/jpeg",
        404,
        "wrong_task",
    ),
    (
        "classify_on_embedder",
        "POST",
        "/v1/models/lite0-embed/classify",
        {},
        images.small_jpeg(),
        "image/jpeg",
        404,
        "wrong_task",
    ),
    ("unknown_route", "GET", "/v0/whatever", {}, b"", None, 404, "not_found"),
    ("wrong_method", "GET", "/v1/models/efficientnet_lite0/classify", {}, b"", None, 405, "method_not_allowed"),
    (
        "body_over_cap",
        "POST",
        "/v1/models/efficientnet_lite0/classify",
        {},
        b"\xff" * (BODY_CAP + 1),
        "image/jpeg",
        413,
        "body_too_large",
    ),
    (
        "pixel_bomb",
        "POST",
        "/v1/models/efficientnet_lite0/classify",
        {},
        images.pixel_bomb(),
        "image/png",
        413,
        "image_too_large",
    ),
    (
        "content_type",
        "POST",
        "/v1/models/efficientnet_lite0/classify",
        {},
        images.small_jpeg(),
        "text/plain",
        415,
        "unsupported_media_type",
    ),
    (
        "format",
        "POST",
        "/v1/models/efficientnet_lite0/classify",
        {},
        images.unsupported_format(),
        "application/octet-stream",
        415,
        "unsupported_format",
    ),
    (
        "top_k_zero",
        "POST",
        "/v1/models/efficientnet_lite0/classify",
        {"top_k": 0},
        images.small_jpeg(),
        "image/jpeg",
        422,
        "invalid_parameter",
    ),
    (
        "top_k_text",
        "POST",
        "/v1/models/efficientnet_lite0/classify",
        {"top_k": "five"},
        images.small_jpeg(),
        "image/jpeg",
        422,
        "invalid_parameter",
    ),
    (
        "threshold",
        "POST",
        "/v1/models/fasterrcnn_v2/detect",
        {"score_threshold": 1.5},
        images.small_jpeg(),
        "image/jpeg",
        422,
        "invalid_parameter",
    ),
    ("multipart_no_file", "POST", "/v1/models/efficientnet_lite0/classify", {}, None, "multipart", 400, "empty_input"),
]


@pytest.mark.parametrize("case", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_errors_are_json_with_stable_codes(client, case):
    _, method, path, params, body, content_type, status, code = case
    if content_type == "multipart":
        response = client.post(path, data={"other": "x"}, files={"unrelated": ("a.txt", b"x", "text/plain")})
    else:
        headers = {"content-type": content_type} if content_type else {}
        response = client.request(method, path, params=params, content=body or None, headers=headers)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["message"]


def test_list_models_and_health(client):
    models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert models["efficientnet_lite0"]["task"] == "classify" and models["efficientnet_lite0"]["labels"] == 1000
    assert models["fasterrcnn_v2"]["task"] == "detect" and models["fasterrcnn_v2"]["labels"] == 91
    assert models["lite0-embed"]["task"] == "embed" and models["lite0-embed"]["dim"] == 1280
    assert models["lite0-embed"]["model"] == "efficientnet_lite0"
    assert models["efficientnet_lite0"]["device"] == "cpu"
    assert models["efficientnet_lite0"]["batching"]["max_batch_size"] == 8
    health = client.get("/healthz")
    assert health.status_code == 200 and set(health.json()["deployments"].values()) == {"HEALTHY"}


def batching_app(max_batch_size: int, wait: float):
    """A classifier alone (random weights, slivers of CPU), for a test that redeploys it: a redeploy
    through ``serve.run`` starts every replica of the app again."""
    return build(
        AppArgs.model_validate(
            {
                "ingress": {"num_cpus": SLIVER, "decode_threads": 1},
                "models": [
                    {
                        "model": {"name": "efficientnet_lite0", "weights": "random"},
                        "num_cpus": SLIVER,
                        "max_ongoing_requests": 8,
                        "batching": {
                            "max_batch_size": max_batch_size,
                            "batch_wait_timeout_s": wait,
                            "max_concurrent_batches": 1,
                        },
                    }
                ],
            }
        )
    )


def test_batching_follows_user_config(serve_url):
    app = "twinfer-batching"

    def describe(http):
        return {m["name"]: m for m in http.get("/v1/models").json()["models"]}["efficientnet_lite0"]

    serve.run(batching_app(8, 0.2), name=app, route_prefix=f"/{app}")
    try:
        with httpx.Client(base_url=f"{serve_url}/{app}", timeout=60) as http:
            assert describe(http)["batching"]["max_batch_size"] == 8
            serve.run(batching_app(4, 0.05), name=app, route_prefix=f"/{app}")
            assert describe(http)["batching"] == {
                "max_batch_size": 4,
                "batch_wait_timeout_s": 0.05,
                "max_concurrent_batches": 1,
            }
            assert classify(http, images.small_jpeg("coffee")).status_code == 200
    finally:
        serve.delete(app)
