"""Every Open Inference Protocol request is bounded work, decided before the work, and every parser
error is a documented 4xx, over HTTP and gRPC alike. No Ray: the real ingress application and
service, with model handles standing in for the model deployments (``tests/service_doubles.py``).
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import threading

import grpc
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2

from deployments.v2 import grpc_service, rest
from deployments.v2.tensors import MAX_IMAGES, split_bytes_elements
from shared.errors import InvalidRequest, TwinferError
from tests.images import small_jpeg
from tests.service_doubles import MODEL, FakeContext, service_with

INFER = f"/v2/models/{MODEL}/infer"


def binary_request(payload: bytes, count: int = 1, **tensor) -> tuple[bytes, str]:
    """JSON header + binary tensor data, as tritonclient sends it."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [count],
                    "parameters": {"binary_data_size": len(payload)},
                    **tensor,
                }
            ]
        }
    ).encode()
    return header + payload, str(len(header))


def json_request(images: list[bytes], parameters: dict | None = None, **extra) -> bytes:
    data = [base64.b64encode(i).decode() for i in images]
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(images)], "data": data}], **extra}
    if parameters is not None:
        body["parameters"] = parameters
    return json.dumps(body).encode()


@pytest.fixture
def app():
    service, handle = service_with()
    return service, handle


@pytest.fixture
def client(app):
    from starlette.testclient import TestClient

    from deployments.ingress import http_app

    with TestClient(http_app(app[0])) as client:
        yield client


# ---- the table, one row at a time -------------------------------------------------------------
def test_a_small_gzip_body_of_a_huge_zero_tensor_is_refused_at_its_first_element(client, app):
    """20 MiB of zeros (a 20 KB gzip body) is 5 M empty BYTES elements: splitting stops at the one
    the shape declares and refuses the rest unread."""
    zeros = b"\x00" * (20 * 2**20 - 400)
    body, header_length = binary_request(zeros)
    compressed = gzip.compress(body, 9)
    assert len(compressed) < 30_000
    response = client.post(
        INFER, content=compressed, headers={"content-encoding": "gzip", rest.HEADER_LENGTH: header_length}
    )
    assert response.status_code == 400
    assert response.json()["error"] == (
        f"invalid_request: input 'image': shape says 1 image(s), the data holds 1 and {len(zeros) - 4} more bytes"
    )
    assert app[1].calls == []  # nothing reached the model


def test_splitting_reads_no_element_past_the_declared_count():
    data = b"\x01\x00\x00\x00a" + b"\x00" * 4_000_000  # one element, then a million empty ones
    with pytest.raises(InvalidRequest, match="holds 1 and 4000000 more bytes"):
        split_bytes_elements(data, 1)
    assert split_bytes_elements(b"\x01\x00\x00\x00a\x00\x00\x00\x00", 2) == [b"a", b""]


def test_brackets_by_the_hundred_thousand_are_invalid_request(client):
    for body in (b"[" * 100_000, b"{" * 5000, b"[" * 3000 + b"]" * 3000):
        response = client.post(INFER, content=body)
        assert response.status_code == 400 and response.json()["error"].startswith("invalid_request: "), body[:9]


def test_json_nested_past_pythons_recursion_limit_is_invalid_request():
    import sys

    deep = b'{"inputs": ' + b"[" * 3000 + b"]" * 3000 + b"}"  # within the structure cap
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)  # Python's default (torch and others raise it in this process)
    try:
        with pytest.raises(InvalidRequest, match="not valid JSON"):
            rest.parse_infer(deep, None)
    finally:
        sys.setrecursionlimit(limit)


def test_a_header_length_of_thousands_of_digits_is_invalid_request(client):
    body, _ = binary_request(b"\x01\x00\x00\x00a")
    response = client.post(INFER, content=body, headers={rest.HEADER_LENGTH: "9" * 5000})
    assert response.status_code == 400 and response.json()["error"].startswith("invalid_request: ")


@pytest.mark.parametrize(
    "parameters, message",
    [
        ({"top_k": float("inf")}, "top_k must be an integer"),
        ({"top_k": float("nan")}, "top_k must be an integer"),
        ({"top_k": 1e300}, "top_k must be between"),
        ({"top_k": "9" * 5000}, "top_k must be an integer"),
        ({"binary_data_output": "false"}, "binary_data_output must be true or false"),
    ],
    ids=["infinity", "nan", "huge", "digits", "flag_text"],
)
def test_non_finite_or_mistyped_parameters_are_invalid_parameter(client, parameters, message):
    response = client.post(INFER, content=json_request([small_jpeg()], parameters))
    assert response.status_code == 422, response.text
    assert response.json()["error"].startswith(f"invalid_parameter: {message}")


def test_an_outputs_binary_data_flag_must_be_a_boolean(client):
    body = json_request([small_jpeg()], outputs=[{"name": "scores", "parameters": {"binary_data": "false"}}])
    response = client.post(INFER, content=body)
    assert response.status_code == 422 and "binary_data must be true or false" in response.json()["error"]


def test_the_count_is_checked_before_any_image_is_base64_decoded():
    body = json.dumps(
        {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["!!not base64!!"] * 200}]}
    ).encode()
    with pytest.raises(InvalidRequest, match="shape says 1 image"):
        rest.parse_infer(body, None)


def test_bodies_are_parsed_off_the_event_loop_while_health_answers(app, monkeypatch):
    """A request whose parsing is held (as a slow parse would be) does not hold up /v2/health/live."""
    from deployments.ingress import http_app

    started, release = threading.Event(), threading.Event()
    parse = rest.parse_body

    def held_parse(*args):
        started.set()
        assert release.wait(30)
        return parse(*args)

    monkeypatch.setattr(rest, "parse_body", held_parse)

    async def run():
        transport = httpx.ASGITransport(app=http_app(app[0]))
        async with httpx.AsyncClient(transport=transport, base_url="http://twinfer") as client:
            infer = asyncio.ensure_future(client.post(INFER, content=json_request([small_jpeg()])))
            while not started.is_set():
                await asyncio.sleep(0.01)
            live = await client.get("/v2/health/live")
            assert not infer.done()  # still parsing, and health answered meanwhile
            release.set()
            return live, await infer

    live, infer = asyncio.run(run())
    assert live.status_code == 200 and live.json() == {"live": True}
    assert infer.status_code == 200, infer.text


# ---- gRPC: the same parser errors, as status codes -------------------------------------------------------
def grpc_message(count: int, raw: bytes | None = None, contents: list[bytes] | None = None, **parameters):
    message = service_pb2.ModelInferRequest(model_name=MODEL, id="x")
    tensor = message.inputs.add(name="image", datatype="BYTES", shape=[count])
    if contents is not None:
        tensor.contents.bytes_contents.extend(contents)
    if raw is not None:
        message.raw_input_contents.append(raw)
    for key, value in parameters.items():
        if isinstance(value, str):
            message.parameters[key].string_param = value
        else:
            message.parameters[key].double_param = value
    return message


@pytest.mark.parametrize(
    "message, status, prefix",
    [
        (
            grpc_message(1, raw=b"\x00" * 1_000_000),
            grpc.StatusCode.INVALID_ARGUMENT,
            "invalid_request: input 'image': shape says 1 image(s), the data holds 1 and 999996",
        ),
        (grpc_message(2, contents=[b"a"]), grpc.StatusCode.INVALID_ARGUMENT, "invalid_request"),
        (grpc_message(MAX_IMAGES + 1, contents=[]), grpc.StatusCode.INVALID_ARGUMENT, "invalid_request"),
        (grpc_message(1, contents=[b"\xff\xd8"], top_k=float("inf")), grpc.StatusCode.INVALID_ARGUMENT, "invalid_par"),
        (grpc_message(1, contents=[b"\xff\xd8"], top_k="9" * 5000), grpc.StatusCode.INVALID_ARGUMENT, "invalid_par"),
        (grpc_message(1, contents=[b"not an image"]), grpc.StatusCode.INVALID_ARGUMENT, "invalid_image: image 0"),
    ],
    ids=["zeros_past_count", "count", "too_many", "infinity", "digits", "not_an_image"],
)
def test_grpc_parser_errors_are_documented_status_codes(app, message, status, prefix):
    from deployments.v2.grpc_service import GrpcInference
    from deployments.v2.protocol import OpenInference

    rpcs = GrpcInference(OpenInference(app[0]), pb=service_pb2)
    context = FakeContext()
    asyncio.run(rpcs.ModelInfer(message, context))
    assert context.code == status and context.details.startswith(prefix), context.details
    assert app[1].calls == []


# ---- property: whatever the bytes, a documented 4xx or a request -------------------------------------------
HEADERS = st.one_of(st.none(), st.text(max_size=30), st.integers(0, 300).map(str))
ENCODINGS = st.sampled_from([None, "identity", "gzip", "deflate", "br", ""])


def assert_documented(exc: Exception) -> None:
    assert isinstance(exc, TwinferError) and type(exc) is not TwinferError, repr(exc)
    assert 400 <= exc.http_status < 500, exc


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.binary(max_size=400), header_length=HEADERS, encoding=ENCODINGS)
def test_any_bytes_parse_or_are_a_documented_4xx(body, header_length, encoding):
    try:
        rest.parse_body(body, encoding, header_length, 10_000)
    except Exception as exc:
        assert_documented(exc)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)
TENSOR = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["image", "pixels"]) | JSON,
        "datatype": st.sampled_from(["BYTES", "UINT8"]) | JSON,
        "shape": st.lists(st.integers(-2, 300), max_size=3) | JSON,
        "data": st.lists(st.sampled_from(["AA==", "!!", ""]) | JSON, max_size=4) | JSON,
        "parameters": st.fixed_dictionaries({}, optional={"binary_data_size": st.integers(-5, 50) | JSON}) | JSON,
    },
)
REQUEST = st.fixed_dictionaries(
    {},
    optional={
        "inputs": st.lists(TENSOR, max_size=2) | JSON,
        "outputs": st.lists(st.fixed_dictionaries({}, optional={"name": JSON, "parameters": JSON}), max_size=3) | JSON,
        "parameters": st.dictionaries(st.sampled_from(["top_k", "binary_data_output", "x"]), JSON) | JSON,
        "id": JSON,
    },
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=REQUEST, binary=st.binary(max_size=40), with_binary=st.booleans())
def test_any_json_request_parses_or_is_a_documented_4xx(request, binary, with_binary):
    header = json.dumps(request).encode()
    try:
        parsed = rest.parse_infer(header + binary if with_binary else header, str(len(header)) if with_binary else None)
    except Exception as exc:
        assert_documented(exc)
        return
    assert 1 <= len(parsed.images) <= MAX_IMAGES and all(isinstance(i, bytes) for i in parsed.images)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    count=st.integers(-3, 300),
    raw=st.lists(st.binary(max_size=30), max_size=2),
    contents=st.lists(st.binary(max_size=10), max_size=3),
    names=st.lists(st.sampled_from(["image", "x"]), min_size=0, max_size=2),
)
def test_any_grpc_request_parses_or_is_a_documented_4xx(count, raw, contents, names):
    message = service_pb2.ModelInferRequest(model_name=MODEL)
    for name in names or ["image"]:
        message.inputs.add(name=name, datatype="BYTES", shape=[count]).contents.bytes_contents.extend(contents)
    message.raw_input_contents.extend(raw)
    try:
        grpc_service.infer_request(message, 1000)
    except Exception as exc:
        assert_documented(exc)
