"""The Open Inference Protocol adapter without Serve: request bodies as tritonclient builds them
(HTTP and gRPC), responses read back by tritonclient, and each task's output tensors.

tritonclient's own gRPC messages stand in for the generated ones (the same ``inference.*``
messages; protobuf refuses both in one process, see ``deployments.v2.grpc_service``).
"""

from __future__ import annotations

import base64
import gzip
import json
import re
import subprocess
import sys
import zlib
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2
from tritonclient.grpc._utils import _get_inference_request as grpc_request
from tritonclient.http._utils import _get_inference_request as http_request

from deployments.v2 import grpc_service, rest
from deployments.v2.outputs import OUTPUTS, outputs_for
from deployments.v2.tensors import (
    MAX_IMAGES,
    InferRequest,
    InvalidRequest,
    OutputTensor,
    image_count,
    split_bytes_elements,
)
from shared.errors import (
    BodyTooLarge,
    ImageTooLarge,
    InvalidImage,
    InvalidParameter,
    ModelNotFound,
    Overloaded,
    Unauthorized,
    Unavailable,
    for_image,
)
from shared.tasks import TASKS, ClassifyTask, DetectTask, EmbedTask

ROOT = Path(__file__).resolve().parent.parent
IMAGES = [b"\xff\xd8first", b"", b"\x89PNG third\x00"]  # any bytes: nothing is decoded here


def images_input(module, images, binary_data=True, shape=None):
    tensor = module.InferInput("image", shape or [len(images)], "BYTES")
    tensor.set_data_from_numpy(
        np.array(images, dtype=np.object_).reshape(shape or [len(images)]),
        **({"binary_data": binary_data} if module is httpclient else {}),
    )
    return tensor


def http_body(inputs, outputs=None, parameters=None, request_id=""):
    body, json_size = http_request(inputs, request_id, outputs, 0, False, False, 0, None, parameters)
    return body, None if json_size is None else str(json_size)


# ---- HTTP requests, as tritonclient.http sends them --------------------------------------------------
def test_binary_images_with_classification_output():
    outputs = [httpclient.InferRequestedOutput("probabilities", class_count=5)]
    body, header_length = http_body([images_input(httpclient, IMAGES)], outputs, {"top_k": 3}, "req-1")
    request = rest.parse_infer(body, header_length)
    assert request.images == IMAGES
    assert request.outputs == {"probabilities": {"binary_data": True, "classification": 5}}
    assert request.parameters == {"top_k": 3} and request.id == "req-1" and not request.binary_output


def test_no_outputs_named_asks_every_default_output_in_binary():
    body, header_length = http_body([images_input(httpclient, IMAGES[:1])])
    request = rest.parse_infer(body, header_length)
    assert request.outputs is None and request.binary_output


def test_json_images_are_base64_flat_or_nested():
    encoded = [base64.b64encode(i).decode() for i in IMAGES]
    for shape, data in (([3], encoded), ([3, 1], [[e] for e in encoded])):
        body = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": shape, "data": data}]}).encode()
        assert rest.parse_infer(body, None).images == IMAGES
    # tritonclient with binary_data=False sends strings as they are: base64 them first
    tensor = httpclient.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([base64.b64encode(IMAGES[0])], dtype=np.object_), binary_data=False)
    body, header_length = http_body([tensor])
    assert header_length is None and rest.parse_infer(body, None).images == IMAGES[:1]


def binary_body(size: int, data: bytes) -> tuple[bytes, str]:
    header = json.dumps(
        {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": size}}]}
    ).encode()
    return header + data, str(len(header))


BAD_BODIES = [
    ("not_json", b"{not json", None, "not valid JSON"),
    ("not_object", b"[1, 2]", None, "JSON object"),
    ("no_inputs", b'{"inputs": []}', None, "exactly one input"),
    ("two_inputs", json.dumps({"inputs": [{"name": "image"}, {"name": "image"}]}).encode(), None, "exactly one input"),
    (
        "input_name",
        json.dumps({"inputs": [{"name": "pixels", "datatype": "BYTES", "shape": [1], "data": ["AA=="]}]}).encode(),
        None,
        "unknown input 'pixels'",
    ),
    (
        "datatype",
        json.dumps({"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1], "data": [1]}]}).encode(),
        None,
        "is BYTES",
    ),
    (
        "shape",
        json.dumps(
            {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1, 2], "data": ["AA==", "AA=="]}]}
        ).encode(),
        None,
        "shape [N] or [N, 1]",
    ),
    (
        "zero_images",
        json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [0], "data": []}]}).encode(),
        None,
        "1 to",
    ),
    (
        "too_many",
        json.dumps(
            {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [MAX_IMAGES + 1], "data": []}]}
        ).encode(),
        None,
        "1 to",
    ),
    (
        "count",
        json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": ["AA=="]}]}).encode(),
        None,
        "holds 1",
    ),
    (
        "base64",
        json.dumps(
            {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["not base64!"]}]}
        ).encode(),
        None,
        "image 0: not valid base64",
    ),
    (
        "number",
        json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [7]}]}).encode(),
        None,
        "base64 string",
    ),
    (
        "no_data",
        json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1]}]}).encode(),
        None,
        "needs 'data'",
    ),
    (
        "shm",
        json.dumps(
            {
                "inputs": [
                    {"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"shared_memory_region": "r"}}
                ]
            }
        ).encode(),
        None,
        "shared-memory",
    ),
    ("header_length", b'{"inputs": []}', "999", "not a length"),
    ("binary_size", *binary_body(10, b"\x01\x00\x00\x00a"), "does not fit"),
    ("leftover", *binary_body(5, b"\x01\x00\x00\x00aEXTRA"), "follow the JSON"),
    (
        "outputs",
        json.dumps(
            {
                "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["AA=="]}],
                "outputs": [{"name": "x"}, {"name": "x"}],
            }
        ).encode(),
        None,
        "requested twice",
    ),
]


@pytest.mark.parametrize("case", BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
def test_malformed_requests_are_invalid_request(case):
    _, body, header_length, message = case
    with pytest.raises(InvalidRequest, match=re.escape(message)) as caught:
        rest.parse_infer(body, header_length)
    assert caught.value.http_status == 400 and caught.value.code == "invalid_request"


def test_length_prefixed_elements():
    assert split_bytes_elements(b"\x02\x00\x00\x00ab\x00\x00\x00\x00", 2) == [b"ab", b""]
    for data, message in (
        (b"\x02\x00\x00", "cut off"),
        (b"\x05\x00\x00\x00ab", "5 bytes announced"),
        (b"\x00\x00\x00\x00", "holds 1"),
    ):
        with pytest.raises(InvalidRequest, match=message):
            split_bytes_elements(data, 2 if message == "holds 1" else 1)


def test_image_count_takes_n_or_n_by_1():
    assert image_count("image", "BYTES", [4]) == 4 and image_count("image", "BYTES", [4, 1]) == 4
    for shape in ([4, 2], [True], "4", [], [1, 1, 1]):
        with pytest.raises(InvalidRequest):
            image_count("image", "BYTES", shape)


def test_compressed_bodies_inflate_within_the_cap():
    body = json.dumps({"inputs": []}).encode()
    assert rest.decompress(gzip.compress(body), "gzip", 100) == body
    assert rest.decompress(zlib.compress(body), "deflate", 100) == body
    assert rest.decompress(body, None, 100) == body
    with pytest.raises(BodyTooLarge):  # a small body that inflates past the cap
        rest.decompress(gzip.compress(b"\x00" * 10_000), "gzip", 1000)
    with pytest.raises(InvalidRequest):
        rest.decompress(b"not gzip", "gzip", 1000)
    with pytest.raises(InvalidRequest, match="cut off"):
        rest.decompress(gzip.compress(body)[:-12], "gzip", 1000)
    with pytest.raises(Exception, match="br"):
        rest.decompress(body, "br", 1000)


# ---- HTTP responses, read back by tritonclient.http ------------------------------------------------------
TENSORS = [
    OutputTensor.of("scores", np.array([[0.5, 0.25], [0.75, 0.125]], np.float32)),
    OutputTensor.of("indices", np.array([[3, 1], [2, 0]], np.int64)),
    OutputTensor.of("image_index", np.array([0, 1, 1], np.int32)),
    OutputTensor.of("labels", np.array([[b"tabby", b"tiger cat"], [b"espresso", b"cup"]], object)),
    OutputTensor.of("empty", np.zeros((0, 4), np.float32)),
]


def read_http(response) -> httpclient.InferResult:
    length = response.headers.get("inference-header-content-length")
    return httpclient.InferResult.from_response_body(
        response.body, header_length=None if length is None else int(length)
    )


@pytest.mark.parametrize("binary", [True, False])
def test_http_response_reads_back_in_tritonclient(binary):
    request = InferRequest([b"x"], id="abc", binary_output=binary)
    response = rest.infer_response("m", "1", request, TENSORS)
    assert response.media_type == ("application/octet-stream" if binary else "application/json")
    result = read_http(response)
    assert result.get_response()["model_name"] == "m" and result.get_response()["id"] == "abc"
    for tensor in TENSORS:
        got = result.as_numpy(tensor.name)
        assert got.shape == tensor.array.shape
        if tensor.datatype == "BYTES":
            assert [g if isinstance(g, bytes) else g.encode() for g in got.reshape(-1)] == list(
                tensor.array.reshape(-1)
            )
        else:
            assert got.dtype == tensor.array.dtype and np.array_equal(got, tensor.array)


def test_output_binary_data_overrides_the_request_default():
    request = InferRequest(
        [b"x"], outputs={"scores": {"binary_data": True}, "indices": {"binary_data": False}}, binary_output=False
    )
    header = read_http(rest.infer_response("m", "1", request, TENSORS[:2])).get_response()
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 16} and "data" in header["outputs"][1]


def test_http_errors_are_the_spec_error_object():
    response = rest.error_response(for_image(InvalidImage("cannot identify image file"), 3))
    assert response.status_code == 400
    assert json.loads(response.body) == {"error": "invalid_image: image 3: cannot identify image file"}
    overloaded = rest.error_response(Overloaded("busy"))
    assert overloaded.status_code == 503 and overloaded.headers["retry-after"] == "1"
    assert rest.error_response(Unauthorized("key")).headers["www-authenticate"].startswith("Bearer")


# ---- gRPC, with tritonclient's messages ----------------------------------------------------------------
def test_grpc_request_from_tritonclient():
    outputs = [
        grpcclient.InferRequestedOutput("probabilities", class_count=5),
        grpcclient.InferRequestedOutput("scores"),
    ]
    message = grpc_request(
        "m",
        [images_input(grpcclient, IMAGES, shape=[3, 1])],
        "",
        "id-7",
        outputs,
        0,
        False,
        False,
        0,
        None,
        {"top_k": 3, "score_threshold": 0.25},
    )
    request = grpc_service.infer_request(message, 1000)
    assert request.images == IMAGES and request.id == "id-7"
    assert request.outputs == {"probabilities": {"classification": 5}, "scores": {}}
    assert request.parameters == {"top_k": 3, "score_threshold": 0.25}


def test_grpc_request_with_bytes_contents_and_the_cap():
    message = service_pb2.ModelInferRequest(model_name="m")
    message.inputs.add(name="image", datatype="BYTES", shape=[2]).contents.bytes_contents.extend([b"a", b"bc"])
    assert grpc_service.infer_request(message, 3).images == [b"a", b"bc"]
    with pytest.raises(BodyTooLarge):
        grpc_service.infer_request(message, 2)
    message.raw_input_contents.append(b"\x01\x00\x00\x00a")
    with pytest.raises(InvalidRequest, match="contents then stays empty"):
        grpc_service.infer_request(message, 100)


def test_grpc_response_reads_back_in_tritonclient():
    response = grpc_service.infer_response(service_pb2, "m", "1", "id", TENSORS)
    result = grpcclient.InferResult(service_pb2.ModelInferResponse.FromString(response.SerializeToString()))
    for tensor in TENSORS:
        got = result.as_numpy(tensor.name)
        assert got.shape == tensor.array.shape
        assert list(got.reshape(-1)) == list(tensor.array.reshape(-1))


def test_model_metadata_message():
    metadata = {
        "name": "m",
        "versions": ["1"],
        "platform": "pytorch",
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "scores", "datatype": "FP32", "shape": [-1, -1]}],
    }
    message = grpc_service.model_metadata(service_pb2, metadata)
    assert (
        message.inputs[0].name == "image"
        and list(message.outputs[0].shape) == [-1, -1]
        and list(message.versions) == ["1"]
    )


def test_grpc_status_codes():
    assert grpc_service.status_code(InvalidImage("x")) == grpc.StatusCode.INVALID_ARGUMENT
    assert grpc_service.status_code(InvalidParameter("x")) == grpc.StatusCode.INVALID_ARGUMENT
    assert grpc_service.status_code(ImageTooLarge("x")) == grpc.StatusCode.INVALID_ARGUMENT
    assert grpc_service.status_code(ModelNotFound("x")) == grpc.StatusCode.NOT_FOUND
    assert grpc_service.status_code(Unauthorized("x")) == grpc.StatusCode.UNAUTHENTICATED
    assert grpc_service.status_code(Overloaded("x")) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert grpc_service.status_code(Unavailable("x")) == grpc.StatusCode.UNAVAILABLE


@pytest.mark.process
def test_generated_stubs_load_and_name_the_ingress_methods():
    """In a process of their own (tritonclient's stubs are loaded in this one): the checked-in
    modules import with the installed protobuf and grpcio, and every RPC has an ingress method."""
    from deployments.ingress import Ingress

    script = (
        "from deployments.v2 import open_inference_grpc_pb2 as pb, open_inference_grpc_pb2_grpc\n"
        "print(' '.join(pb.DESCRIPTOR.services_by_name['GRPCInferenceService'].methods_by_name))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    methods = out.stdout.split()
    assert "ModelInfer" in methods and all(callable(getattr(Ingress, m, None)) for m in methods), methods


# ---- the tasks' output tensors -----------------------------------------------------------------------------
LABELS = tuple(f"class {i}" for i in range(10))


def classify_answers(task):
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(10), size=3).astype(np.float32)
    order = np.argsort(-probabilities, axis=1)
    return probabilities, [
        [{"label": task.label(int(i)), "index": int(i), "score": float(p[i])} for i in row]
        for p, row in zip(probabilities, order)
    ]


def test_every_task_has_output_tensors():
    assert set(OUTPUTS) == set(TASKS)


def test_classify_tensors():
    task = ClassifyTask(LABELS)
    v2 = outputs_for(task)
    probabilities, answers = classify_answers(task)
    outputs = v2.requested({"scores": {}, "indices": {}, "labels": {}, "probabilities": {}})
    params = task.params({"top_k": 2})
    assert v2.model_params(params, outputs)["top_k"] > 10  # every class, for probabilities
    tensors = v2.tensors(answers, outputs, params)
    assert tensors["scores"].shape == (3, 2) and tensors["scores"].dtype == np.float32
    assert np.array_equal(tensors["indices"], np.argsort(-probabilities, axis=1)[:, :2])
    assert tensors["labels"][0, 0] == f"class {tensors['indices'][0, 0]}".encode()
    assert np.allclose(tensors["probabilities"], probabilities) and tensors["probabilities"].shape == (3, 10)


def test_classification_extension_strings():
    task = ClassifyTask(LABELS)
    v2 = outputs_for(task)
    probabilities, answers = classify_answers(task)
    outputs = v2.requested({"probabilities": {"classification": 3}})
    assert v2.model_params(task.params({}), outputs)["top_k"] == 3
    (strings,) = v2.tensors(answers, outputs, task.params({})).values()
    assert strings.shape == (3, 3)
    score, index, label = strings[0, 0].decode().split(":", 2)
    assert int(index) == int(np.argmax(probabilities[0])) and label == f"class {index}"
    assert abs(float(score) - probabilities[0].max()) < 1e-7


def test_default_outputs_and_output_errors():
    v2 = outputs_for(ClassifyTask(LABELS))
    assert list(v2.requested(None)) == ["scores", "indices", "labels"]
    with pytest.raises(InvalidParameter, match="no output 'boxes'"):
        v2.requested({"boxes": {}})
    with pytest.raises(InvalidParameter, match="not to 'labels'"):
        v2.requested({"labels": {"classification": 2}})
    for bad in (0, 101, 2.5, "x", True, float("inf"), float("nan"), "9" * 5000):
        with pytest.raises(InvalidParameter):
            v2.requested({"scores": {"classification": bad}})
    embed = outputs_for(EmbedTask(LABELS))
    with pytest.raises(InvalidParameter, match="not to 'embedding'"):
        embed.requested({"embedding": {"classification": 2}})
    described = {"labels": 10, "dim": None}
    assert v2.describe(described)["probabilities"] == ("FP32", [-1, 10])
    assert embed.describe({"dim": 1280}) == {"embedding": ("FP32", [-1, 1280])}


def test_detect_tensors_are_ragged_safe():
    task = DetectTask(LABELS)
    answers = [
        [{"label": "class 1", "index": 1, "score": 0.9, "box": [1.0, 2.0, 3.0, 4.0]}],
        [],
        [
            {"label": "class 2", "index": 2, "score": 0.8, "box": [5.0, 6.0, 7.0, 8.0]},
            {"label": "class 3", "index": 3, "score": 0.7, "box": [0, 0, 1, 1]},
        ],
    ]
    v2 = outputs_for(task)
    tensors = v2.tensors(answers, v2.requested(None), task.params({}))
    assert tensors["boxes"].shape == (3, 4) and tensors["image_index"].tolist() == [0, 2, 2]
    assert tensors["label_indices"].tolist() == [1, 2, 3] and tensors["labels"].tolist() == [
        b"class 1",
        b"class 2",
        b"class 3",
    ]
    empty = v2.tensors([[], []], v2.requested(None), task.params({}))
    assert empty["boxes"].shape == (0, 4) and empty["scores"].shape == (0,)
    assert all(OutputTensor.of(n, a).raw() == b"" for n, a in empty.items())


def test_embed_tensor():
    v2 = outputs_for(EmbedTask(LABELS))
    tensors = v2.tensors([[0.6, 0.8], [1.0, 0.0]], v2.requested(None), {})
    assert tensors["embedding"].dtype == np.float32 and tensors["embedding"].shape == (2, 2)


# ---- the ingress side: routes and API keys, on a real service without Serve -------------------------------
KEY = "a-test-key-of-enough-length"


class FakeContext:
    """What Serve hands a gRPC method: the call's metadata, and a code and details to set."""

    def __init__(self, metadata=()):
        self.metadata, self.code, self.details = list(metadata), None, None

    def invocation_metadata(self):
        return self.metadata

    def set_code(self, code):
        self.code = code

    def set_details(self, details):
        self.details = details


class CountingMetrics:
    def __init__(self):
        self.counted = []
        self.errors = self.decode_seconds = self.retries = self

    def inc(self, tags):
        self.counted.append(tags)

    def observe(self, value, tags):
        pass


@pytest.fixture
def keyed_service(monkeypatch):
    from deployments.config import IngressConfig
    from deployments.service import InferenceService

    monkeypatch.setenv("TWINFER_TEST_KEYS", KEY)
    return InferenceService(
        {},
        {},
        IngressConfig(api_keys_env="TWINFER_TEST_KEYS"),
        metrics=CountingMetrics(),
        deployment_states=lambda: {"ingress": "HEALTHY"},
    )


@pytest.fixture
def http_client(keyed_service):
    from starlette.testclient import TestClient

    from deployments.ingress import http_app

    with TestClient(http_app(keyed_service)) as client:
        yield client


@pytest.fixture
def grpc_ingress(keyed_service):
    from deployments.v2.grpc_service import GrpcInference
    from deployments.v2.protocol import OpenInference

    return GrpcInference(OpenInference(keyed_service), pb=service_pb2)  # tritonclient's: see the module docstring


def test_http_health_is_open_the_rest_needs_the_key(http_client, keyed_service):
    assert http_client.get("/v2/health/live").json() == {"live": True}
    ready = http_client.get("/v2/health/ready")
    assert ready.status_code == 200 and ready.json() == {"ready": True}
    refused = http_client.get("/v2")
    assert refused.status_code == 401 and refused.json()["error"].startswith("unauthorized: ")
    answered = http_client.get("/v2", headers={"authorization": f"Bearer {KEY}"})
    assert answered.status_code == 200 and answered.json()["name"] == "twinfer"
    unknown = http_client.get("/v2/models/alexnet", headers={"authorization": f"Bearer {KEY}"})
    assert unknown.status_code == 404 and unknown.json()["error"].startswith("model_not_found: ")
    assert http_client.post("/v2/health/live").status_code == 405
    assert {"model": "unknown", "code": "model_not_found"} in keyed_service.metrics.counted


def test_health_without_a_key_says_up_or_down_only(http_client):
    assert http_client.get("/healthz").json() == {"status": "ok"}
    detailed = http_client.get("/healthz", headers={"authorization": f"Bearer {KEY}"}).json()
    assert detailed == {"status": "ok", "deployments": {"ingress": "HEALTHY"}}


def test_grpc_needs_the_key_in_metadata(grpc_ingress):
    import asyncio

    refused = FakeContext()
    message = asyncio.run(grpc_ingress.ServerMetadata(service_pb2.ServerMetadataRequest(), refused))
    assert (
        refused.code == grpc.StatusCode.UNAUTHENTICATED
        and refused.details.startswith("unauthorized: ")
        and not message.name
    )
    allowed = FakeContext([("authorization", f"Bearer {KEY}")])
    message = asyncio.run(grpc_ingress.ServerMetadata(service_pb2.ServerMetadataRequest(), allowed))
    assert allowed.code is None and message.name == "twinfer" and "binary_tensor_data" in message.extensions
    unknown = FakeContext([("authorization", f"Bearer {KEY}")])
    asyncio.run(grpc_ingress.ModelInfer(service_pb2.ModelInferRequest(model_name="alexnet"), unknown))
    assert unknown.code == grpc.StatusCode.NOT_FOUND and unknown.details.startswith("model_not_found: ")
    assert asyncio.run(grpc_ingress.ServerLive(service_pb2.ServerLiveRequest(), FakeContext())).live
