"""The Open Inference Protocol against a live Serve app, driven by the ecosystem's own clients:
tritonclient.http (binary tensor data and JSON) and tritonclient.grpc (Serve's gRPC ingress on the
session's Serve instance). Answers must equal /v1's to 1e-5.
"""

from __future__ import annotations

import base64
import json

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from ray import serve
from tritonclient.utils import InferenceServerException

from deployments.app import model_deployment_name
from tests import images
from tests.serving import BODY_CAP, STANDARD_APP
from twinfer.samples import SAMPLE_NAMES, encode, sample_array

CLASSIFIER, EMBEDDER, DETECTOR = "efficientnet_lite0", "lite0-embed", "fasterrcnn_v2"
APP = STANDARD_APP


@pytest.fixture(scope="module")
def app(standard_app, serve_grpc_address):
    return standard_app.removeprefix("http://"), serve_grpc_address


@pytest.fixture(scope="module")
def http(app):
    with httpx.Client(base_url=f"http://{app[0]}", timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def triton_http(app):
    client = httpclient.InferenceServerClient(app[0], network_timeout=120, connection_timeout=120)
    yield client
    client.close()


# the session's Serve instance may run other apps: name ours (Serve's `application` metadata key)
ROUTE = {"application": APP}


@pytest.fixture(scope="module")
def triton_grpc(app):
    with grpcclient.InferenceServerClient(app[1]) as client:
        yield client


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    """8 small JPEGs: the sample photos and crops of them."""
    small = [images.small_jpeg(name, 160) for name in SAMPLE_NAMES]
    return small + [images.small_jpeg(name, 120) for name in SAMPLE_NAMES[:3]]


def v1_top(http, data: bytes, k: int = 5) -> list[dict]:
    response = http.post(
        f"/v1/models/{CLASSIFIER}/classify", params={"top_k": k}, content=data, headers={"content-type": "image/jpeg"}
    )
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


def image_input(module, photos: list[bytes], binary: bool = True):
    tensor = module.InferInput("image", [len(photos)], "BYTES")
    data = np.array(photos, dtype=np.object_)
    if module is httpclient:
        tensor.set_data_from_numpy(data, binary_data=binary)
    else:
        tensor.set_data_from_numpy(data)
    return tensor


def classifications(strings: np.ndarray) -> list[list[tuple[float, int, str]]]:
    """Triton's "score:index:label" rows, parsed."""
    rows = []
    for row in strings:
        parsed = []
        for element in row:
            score, index, label = (element.decode() if isinstance(element, bytes) else element).split(":", 2)
            parsed.append((float(score), int(index), label))
        rows.append(parsed)
    return rows


def assert_same_top(got: list[tuple[float, int, str]], expected: list[dict]) -> None:
    assert [(i, label) for _, i, label in got] == [(p["index"], p["label"]) for p in expected]
    assert np.allclose([s for s, _, _ in got], [p["score"] for p in expected], atol=1e-5, rtol=0)


# ---- HTTP, tritonclient.http ----------------------------------------------------------------------------
def test_http_health_and_server_metadata(triton_http):
    assert triton_http.is_server_live() and triton_http.is_server_ready()
    metadata = triton_http.get_server_metadata()
    assert metadata["name"] == "twinfer" and {"binary_tensor_data", "classification"} <= set(metadata["extensions"])
    assert triton_http.is_model_ready(CLASSIFIER) and triton_http.is_model_ready(CLASSIFIER, "1")
    assert not triton_http.is_model_ready("alexnet")


def test_health_answers_carry_the_specs_json_bodies(http):
    """The Open Inference Protocol's REST spec gives health and readiness JSON bodies; the status
    says the same (200 true, 4xx false), for clients that read only that."""
    assert http.get("/v2/health/live").json() == {"live": True}
    ready = http.get("/v2/health/ready")
    assert ready.status_code == 200 and ready.json() == {"ready": True}
    model = http.get(f"/v2/models/{CLASSIFIER}/ready")
    assert model.status_code == 200 and model.json() == {"name": CLASSIFIER, "ready": True}
    assert http.get(f"/v2/models/{CLASSIFIER}/versions/1/ready").json()["ready"] is True


def test_model_config_has_what_tritons_tools_read(triton_http, http):
    """Triton's model configuration extension, as perf_analyzer and model-analyzer read it: name,
    platform/backend, max_batch_size, and each input and output's name, data_type and dims (the
    batch dimension left out when max_batch_size > 0)."""
    config = triton_http.get_model_config(CLASSIFIER)  # tritonclient's own reader of the extension
    assert config["name"] == CLASSIFIER and config["platform"] == config["backend"] == "pytorch"
    assert config["max_batch_size"] == 256
    assert config["input"] == [{"name": "image", "data_type": "TYPE_STRING", "dims": [1]}]
    outputs = {o["name"]: (o["data_type"], o["dims"]) for o in config["output"]}
    assert outputs["probabilities"] == ("TYPE_FP32", [1000]) and outputs["labels"] == ("TYPE_STRING", [-1])
    detector = http.get(f"/v2/models/{DETECTOR}/config").json()
    assert detector["max_batch_size"] == 0 and detector["input"][0]["dims"] == [-1]
    assert {o["name"]: o["dims"] for o in detector["output"]}["boxes"] == [-1, 4]
    # a request shaped as the config says ([batch] + dims) is answered
    image = httpclient.InferInput("image", [2, 1], "BYTES")
    image.set_data_from_numpy(np.array([[images.small_jpeg()]] * 2, dtype=np.object_), binary_data=True)
    assert triton_http.infer(CLASSIFIER, [image]).as_numpy("scores").shape == (2, 5)
    assert http.get("/v2/models/alexnet/config").status_code == 404


def test_http_model_metadata_comes_from_the_task_and_the_model(triton_http):
    classifier = triton_http.get_model_metadata(CLASSIFIER)
    assert classifier["name"] == CLASSIFIER and classifier["versions"] == ["1"]
    assert classifier["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    outputs = {o["name"]: (o["datatype"], o["shape"]) for o in classifier["outputs"]}
    assert outputs == {
        "scores": ("FP32", [-1, -1]),
        "indices": ("INT64", [-1, -1]),
        "labels": ("BYTES", [-1, -1]),
        "probabilities": ("FP32", [-1, 1000]),
    }
    embedder = triton_http.get_model_metadata(EMBEDDER)
    assert embedder["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, 1280]}]
    detector = {o["name"]: o["shape"] for o in triton_http.get_model_metadata(DETECTOR)["outputs"]}
    assert detector == {"boxes": [-1, 4], "scores": [-1], "label_indices": [-1], "labels": [-1], "image_index": [-1]}


def test_http_binary_classification_equals_v1(triton_http, http):
    data = encode(sample_array("chelsea"))
    result = triton_http.infer(  # /v2/models/{m}/versions/1/infer
        CLASSIFIER,
        [image_input(httpclient, [data])],
        model_version="1",
        outputs=[httpclient.InferRequestedOutput("probabilities", class_count=5)],
    )
    assert result.get_response()["model_version"] == "1"
    strings = result.as_numpy("probabilities")
    assert strings.shape == (1, 5)
    assert_same_top(classifications(strings)[0], v1_top(http, data))


def test_http_batch_of_8_in_one_request_batches_and_equals_v1(triton_http, http, photos):
    handle = serve.get_deployment_handle(model_deployment_name(CLASSIFIER), APP)
    before = handle.batch_stats.remote().result()
    outputs = [httpclient.InferRequestedOutput(name) for name in ("scores", "indices", "labels")]
    result = triton_http.infer(CLASSIFIER, [image_input(httpclient, photos)], outputs=outputs, parameters={"top_k": 5})
    after = handle.batch_stats.remote().result()
    scores, indices, labels = (result.as_numpy(n) for n in ("scores", "indices", "labels"))
    assert (
        scores.shape == indices.shape == labels.shape == (8, 5)
        and scores.dtype == np.float32
        and indices.dtype == np.int64
    )
    for row, data in enumerate(photos):
        expected = v1_top(http, data)
        assert_same_top(list(zip(scores[row], indices[row], [label.decode() for label in labels[row]])), expected)
    grown = {size: after.get(size, 0) - before.get(size, 0) for size in after}
    assert sum(size * n for size, n in grown.items()) == 8 and max(size for size, n in grown.items() if n) > 1, grown


def test_http_json_base64_and_full_probabilities(triton_http, http):
    data = images.small_jpeg("coffee", 160)
    tensor = httpclient.InferInput("image", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[base64.b64encode(data)]], dtype=np.object_), binary_data=False)
    result = triton_http.infer(
        CLASSIFIER, [tensor], outputs=[httpclient.InferRequestedOutput("probabilities", binary_data=False)]
    )
    (output,) = result.get_response()["outputs"]
    assert "data" in output and output["shape"] == [1, 1000]
    probabilities = result.as_numpy("probabilities")[0]
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-4)
    top = v1_top(http, data)
    assert list(np.argsort(-probabilities)[:5]) == [p["index"] for p in top]
    assert np.allclose(probabilities[[p["index"] for p in top]], [p["score"] for p in top], atol=1e-5, rtol=0)


def test_http_default_outputs_in_binary_and_gzip_request(triton_http, http):
    data = images.small_jpeg("rocket", 160)
    result = triton_http.infer(CLASSIFIER, [image_input(httpclient, [data])], request_compression_algorithm="gzip")
    assert {o["name"] for o in result.get_response()["outputs"]} == {"scores", "indices", "labels"}
    assert result.as_numpy("indices")[0].tolist() == [p["index"] for p in v1_top(http, data)]


def test_http_embedding_equals_v1(triton_http, http):
    data = images.small_jpeg("chelsea", 160)
    result = triton_http.infer(EMBEDDER, [image_input(httpclient, [data, data])])
    embedding = result.as_numpy("embedding")
    assert embedding.shape == (2, 1280) and embedding.dtype == np.float32
    v1 = http.post(f"/v1/models/{EMBEDDER}/embed", content=data, headers={"content-type": "image/jpeg"}).json()[
        "embedding"
    ]
    assert np.allclose(embedding, [v1, v1], atol=1e-5, rtol=0)


def test_http_detections_are_ragged_safe_tensors(triton_http, http):
    # the same image twice: a detector pads a batch to its largest image, so only same-size
    # images give exactly /v1's (batch of one) detections
    data = images.small_jpeg("astronaut", 150)
    result = triton_http.infer(DETECTOR, [image_input(httpclient, [data, data])], parameters={"score_threshold": 0.0})
    boxes, scores, where = result.as_numpy("boxes"), result.as_numpy("scores"), result.as_numpy("image_index")
    assert boxes.shape == (len(scores), 4) and where.dtype == np.int32 and len(result.as_numpy("labels")) == len(scores)
    v1 = http.post(
        f"/v1/models/{DETECTOR}/detect",
        params={"score_threshold": 0.0},
        content=data,
        headers={"content-type": "image/jpeg"},
    )
    detections = v1.json()["detections"]
    labels = result.as_numpy("label_indices")
    for index in (0, 1):
        mine = np.flatnonzero(where == index)
        assert len(mine) == len(detections)
        # float32 convolutions over a batch of 2 and of 1 may round differently (oneDNN picks its
        # kernels by shape), and random weights leave many near-equal scores: at times more than
        # 1e-5 apart, so two near-equal detections may come in either order. Each /v1 detection
        # must be one of this image's tensor rows: its label, its box to 0.02 px + 0.1 %, its score to 1e-4.
        unmatched = list(mine)
        for d in detections:
            row = next(
                (
                    r
                    for r in unmatched
                    if labels[r] == d["index"]
                    and np.allclose(boxes[r], d["box"], atol=0.02, rtol=1e-3)
                    and abs(scores[r] - d["score"]) <= 1e-4
                ),
                None,
            )
            assert row is not None, (d, boxes[mine], scores[mine])
            unmatched.remove(row)


def test_http_one_bad_image_fails_the_request_naming_its_index(triton_http, photos):
    batch = photos[:3] + [images.corrupt_jpeg()]
    with pytest.raises(InferenceServerException) as caught:
        triton_http.infer(CLASSIFIER, [image_input(httpclient, batch)])
    assert caught.value.status() == "400" and caught.value.message().startswith("invalid_image: image 3:")


def json_infer_body(data: bytes) -> bytes:
    """A JSON infer request of one image, base64 in the ``image`` tensor."""
    tensor = {"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(data).decode()]}
    return json.dumps({"inputs": [tensor]}).encode()


def test_http_unknown_model_and_version(triton_http):
    for call in (
        lambda: triton_http.get_model_metadata("alexnet"),
        lambda: triton_http.infer("alexnet", [image_input(httpclient, [b"x"])]),
    ):
        with pytest.raises(InferenceServerException) as caught:
            call()
        assert caught.value.status() == "404" and "model_not_found" in caught.value.message()
    with pytest.raises(InferenceServerException, match="no version '2'"):
        triton_http.get_model_metadata(CLASSIFIER, "2")


ERRORS = [
    # (id, method, path, body, headers, status, code)
    ("not_json", "POST", f"/v2/models/{CLASSIFIER}/infer", b"{oops", {}, 400, "invalid_request"),
    (
        "wrong_input",
        "POST",
        f"/v2/models/{CLASSIFIER}/infer",
        json.dumps({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": ["AA=="]}]}).encode(),
        {},
        400,
        "invalid_request",
    ),
    (
        "not_image",
        "POST",
        f"/v2/models/{CLASSIFIER}/infer",
        json_infer_body(images.not_an_image()),
        {},
        400,
        "invalid_image",
    ),
    (
        "pixel_bomb",
        "POST",
        f"/v2/models/{CLASSIFIER}/infer",
        json_infer_body(images.pixel_bomb()),
        {},
        413,
        "image_too_large",
    ),
    ("body_cap", "POST", f"/v2/models/{CLASSIFIER}/infer", b"x" * (BODY_CAP + 1), {}, 413, "body_too_large"),
    (
        "unknown_output",
        "POST",
        f"/v2/models/{CLASSIFIER}/infer",
        json.dumps(
            {
                "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["AA=="]}],
                "outputs": [{"name": "boxes"}],
            }
        ).encode(),
        {},
        422,
        "invalid_parameter",
    ),
    (
        "top_k",
        "POST",
        f"/v2/models/{CLASSIFIER}/infer",
        json.dumps(
            {
                "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["AA=="]}],
                "parameters": {"top_k": 0},
            }
        ).encode(),
        {},
        422,
        "invalid_parameter",
    ),
    (
        "encoding",
        "POST",
        f"/v2/models/{CLASSIFIER}/infer",
        b"{}",
        {"content-encoding": "br"},
        415,
        "unsupported_media_type",
    ),
    ("method", "GET", f"/v2/models/{CLASSIFIER}/infer", b"", {}, 405, "method_not_allowed"),
    ("route", "GET", "/v2/repository/index", b"", {}, 404, "not_found"),
]


@pytest.mark.parametrize("case", ERRORS, ids=[c[0] for c in ERRORS])
def test_http_errors_are_the_spec_error_object(http, case):
    _, method, path, body, headers, status, code = case
    response = http.request(method, path, content=body or None, headers=headers)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"} and response.json()["error"].startswith(f"{code}: ")


# ---- gRPC, tritonclient.grpc -------------------------------------------------------------------------------
def test_grpc_health_and_metadata(triton_grpc):
    assert triton_grpc.is_server_live(headers=ROUTE) and triton_grpc.is_server_ready(headers=ROUTE)
    assert triton_grpc.is_model_ready(CLASSIFIER, headers=ROUTE)
    assert "classification" in triton_grpc.get_server_metadata(headers=ROUTE).extensions
    metadata = triton_grpc.get_model_metadata(CLASSIFIER, headers=ROUTE, as_json=True)
    assert metadata["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": ["-1"]}]  # int64 in JSON is text
    assert {o["name"]: o["shape"] for o in metadata["outputs"]}["probabilities"] == ["-1", "1000"]
    assert triton_grpc.get_model_metadata(EMBEDDER, headers=ROUTE).outputs[0].shape == [-1, 1280]


def test_grpc_classification_equals_v1_one_and_eight_images(triton_grpc, http, photos):
    output = [grpcclient.InferRequestedOutput("probabilities", class_count=5)]
    data = encode(sample_array("coffee"))
    result = triton_grpc.infer(CLASSIFIER, [image_input(grpcclient, [data])], outputs=output, headers=ROUTE)
    assert_same_top(classifications(result.as_numpy("probabilities"))[0], v1_top(http, data))
    batch = triton_grpc.infer(
        CLASSIFIER, [image_input(grpcclient, photos)], outputs=output, headers=ROUTE, request_id="eight"
    )
    assert batch.get_response().id == "eight"
    for row, parsed in enumerate(classifications(batch.as_numpy("probabilities"))):
        assert_same_top(parsed, v1_top(http, photos[row]))


def test_grpc_errors_are_status_codes(triton_grpc, photos):
    cases = [
        (
            lambda: triton_grpc.infer(
                CLASSIFIER, [image_input(grpcclient, photos[:2] + [images.truncated_jpeg()])], headers=ROUTE
            ),
            "StatusCode.INVALID_ARGUMENT",
            "invalid_image: image 2:",
        ),
        (
            lambda: triton_grpc.infer("alexnet", [image_input(grpcclient, photos[:1])], headers=ROUTE),
            "StatusCode.NOT_FOUND",
            "model_not_found:",
        ),
        (lambda: triton_grpc.get_model_metadata("alexnet", headers=ROUTE), "StatusCode.NOT_FOUND", "model_not_found:"),
        (
            lambda: triton_grpc.infer(
                CLASSIFIER,
                [image_input(grpcclient, photos[:1])],
                outputs=[grpcclient.InferRequestedOutput("labels", class_count=2)],
                headers=ROUTE,
            ),
            "StatusCode.INVALID_ARGUMENT",
            "invalid_parameter:",
        ),
    ]
    for call, status, message in cases:
        with pytest.raises(InferenceServerException) as caught:
            call()
        assert caught.value.status() == status and caught.value.message().startswith(message), caught.value


def test_grpc_without_application_metadata_reaches_the_only_app(triton_grpc):
    # the suite's shared Serve instance usually runs this app alone; when an earlier module's app is
    # still there, Serve needs the key. The same call against `serve run serve_config.yaml` (one
    # app, never skipped) is in test_serve_reliability.py.
    if len(serve.status().applications) != 1:
        pytest.skip("another application runs on this Serve instance: Serve needs the `application` key then")
    assert triton_grpc.is_model_ready(CLASSIFIER)
