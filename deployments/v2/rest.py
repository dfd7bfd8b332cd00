"""The Open Inference Protocol over HTTP (``/v2/...``): routes, request bodies in, responses and
errors out.

Bodies are JSON, or JSON followed by binary tensor data (Triton's ``binary_tensor_data``
extension: the JSON's length in the ``Inference-Header-Content-Length`` header, an input's
``parameters.binary_data_size`` bytes in input order, BYTES elements each a 4-byte little-endian
length and the bytes). In plain JSON the spec leaves BYTES open: twinfer takes each image as a
base64 string. Output BYTES (labels, classifications) are text, sent as JSON strings.

Parsing is bounded before it starts and runs in the service's pool, off the event loop: the body
is read within the byte cap and the replica's byte budget; a gzip or deflate body inflates no
further than the cap; the JSON may hold at most ``MAX_JSON_STRUCTURE`` structural characters
(a request's images are base64 or binary, which hold none); the image count is checked against
the shape before any element is split or base64-decoded, and splitting stops at that count.

Health routes are open, like ``/healthz`` (probes), and answer up/down only; the rest need the
API key when keys are on.
"""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from deployments.endpoints import require, route
from deployments.http import error_headers, read_body
from deployments.v2.protocol import OpenInference
from deployments.v2.tensors import (
    VERSION,
    InferRequest,
    InvalidRequest,
    OutputTensor,
    image_count,
    split_bytes_elements,
)
from shared.errors import BodyTooLarge, InvalidParameter, NotFound, TwinferError, UnsupportedMediaType

HEADER_LENGTH = "inference-header-content-length"
MAX_JSON_STRUCTURE = 4096  # characters [ { , : in a request's JSON (256 base64 images: ~300)
_STRUCTURE = (b"[", b"{", b",", b":")


def routes(protocol: OpenInference) -> list[Route]:
    service = protocol.service

    async def health(request: Request) -> Response:
        require(request, "GET")
        which = request.path_params["which"]
        if which == "live":
            return JSONResponse({"live": True})
        if which == "ready":
            ready = await protocol.server_ready()
            return JSONResponse({"ready": ready}, status_code=200 if ready else 400)  # the spec: 4xx is false
        raise NotFound(f"no route {request.method} {request.url.path}")

    async def server(request: Request) -> Response:
        service.authorize(request.headers.get("authorization"))
        require(request, "GET")
        return JSONResponse(protocol.server_metadata())

    async def model(request: Request) -> Response:
        service.authorize(request.headers.get("authorization"))
        name, version, action = _model_path(request)
        if action == "infer":
            require(request, "POST")
            return await infer(request, name, version)
        require(request, "GET")
        if action is None:
            return JSONResponse(await protocol.model_metadata(name, version))
        if action == "ready":
            ready = await protocol.model_ready(name, version)
            return JSONResponse({"name": name, "ready": ready}, status_code=200 if ready else 400)
        if action == "config":
            return JSONResponse(await protocol.model_config(name, version))
        raise NotFound(f"no route {request.method} {request.url.path}")

    async def infer(request: Request, name: str, version: str | None) -> Response:
        protocol.model(name, version)  # an unknown model is 404 before its body is read
        cap = service.settings.max_body_bytes
        encoding = request.headers.get("content-encoding")
        with service.admission.body_bytes() as hold:
            body = await read_body(request, cap, hold)
            if (encoding or "identity").strip().lower() != "identity":
                hold.grow(cap)  # what it may inflate to, reserved before inflating
            parsed = await service.offload(parse_body, body, encoding, request.headers.get(HEADER_LENGTH), cap)
            del body
            tensors = await protocol.infer(name, version, parsed)
            return await service.offload(infer_response, name, VERSION, parsed, tensors)

    async def unknown(request: Request) -> Response:
        service.authorize(request.headers.get("authorization"))
        raise NotFound(f"no route {request.method} {request.url.path}")

    return [
        route(service, "/v2/health/{which}", health, error_response),
        route(service, "/v2", server, error_response),
        route(service, "/v2/models/{model}", model, error_response),
        route(service, "/v2/models/{model}/{action}", model, error_response),
        route(service, "/v2/models/{model}/versions/{version}", model, error_response),
        route(service, "/v2/models/{model}/versions/{version}/{action}", model, error_response),
        route(service, "/v2/{rest:path}", unknown, error_response),
    ]


def _model_path(request: Request) -> tuple[str, str | None, str | None]:
    params = request.path_params
    action = params.get("action")
    if action == "versions":  # /v2/models/{m}/versions: not a route
        raise NotFound(f"no route {request.method} {request.url.path}")
    return params["model"], params.get("version"), action


def error_response(error: TwinferError) -> JSONResponse:
    """The spec's ``{"error": "<message>"}``; the message starts with twinfer's error code."""
    return JSONResponse(
        {"error": f"{error.code}: {error}"}, status_code=error.http_status, headers=error_headers(error)
    )


def parse_body(body: bytes, encoding: str | None, header_length: str | None, max_bytes: int) -> InferRequest:
    """A whole request body as received: inflated, then parsed."""
    return parse_infer(decompress(body, encoding, max_bytes), header_length)


def decompress(body: bytes, encoding: str | None, max_bytes: int) -> bytes:
    """A gzip or deflate body (tritonclient's ``request_compression_algorithm``), inflated no
    further than the body cap."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise UnsupportedMediaType(f"content-encoding {encoding!r} is not supported; send gzip, deflate or identity")
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    try:
        inflated = inflater.decompress(body, max_bytes + 1)
    except zlib.error as exc:
        raise InvalidRequest(f"the {encoding} body does not inflate: {exc}") from None
    if len(inflated) > max_bytes or inflater.unconsumed_tail:
        raise BodyTooLarge(f"the inflated body exceeds the limit of {max_bytes} bytes")
    if not inflater.eof:
        raise InvalidRequest(f"the {encoding} body is cut off")
    return inflated


def parse_infer(body: bytes, header_length: str | None) -> InferRequest:
    """An inference request body (JSON, or JSON + binary data) -> ``InferRequest``."""
    binary = memoryview(b"")
    if header_length is not None:
        text = header_length.strip()
        if not (text.isdigit() and text.isascii() and len(text) <= 19) or not 0 < int(text) <= len(body):
            raise InvalidRequest(
                f"Inference-Header-Content-Length {header_length[:40]!r} is not a length within the "
                f"{len(body)}-byte body"
            )
        binary = memoryview(body)[int(text) :]
        body = body[: int(text)]
    header = _json_object(body, binary_follows=header_length is not None)

    inputs = header.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InvalidRequest("'inputs' must hold exactly one input, 'image' (BYTES, shape [N] or [N, 1])")
    tensor = inputs[0]
    count = image_count(tensor.get("name"), tensor.get("datatype"), tensor.get("shape"))
    tensor_parameters = _object(tensor.get("parameters"), "the input's 'parameters'")
    if "shared_memory_region" in tensor_parameters:
        raise InvalidRequest("shared-memory inputs are not supported: send the images in the body")
    size = tensor_parameters.get("binary_data_size")
    if size is not None:
        if "data" in tensor:
            raise InvalidRequest("the input has both 'data' and 'binary_data_size'")
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= len(binary):
            raise InvalidRequest(f"binary_data_size {size!r} does not fit the {len(binary)} bytes after the JSON")
        images = split_bytes_elements(binary[:size], count)
        binary = binary[size:]
    else:
        elements = _flat(tensor.get("data"))
        if len(elements) != count:  # before any element is decoded
            raise InvalidRequest(f"input 'image': shape says {count} image(s), 'data' holds {len(elements)}")
        images = [_base64(element, i) for i, element in enumerate(elements)]
    if len(binary):
        raise InvalidRequest(f"{len(binary)} bytes follow the JSON that no input's binary_data_size accounts for")

    parameters = _object(header.get("parameters"), "'parameters'")
    outputs = None
    if header.get("outputs") is not None:
        if not isinstance(header["outputs"], list):
            raise InvalidRequest("'outputs' must be a list of {'name': ..., 'parameters': {...}}")
        outputs = {}
        for output in header["outputs"]:
            if not isinstance(output, dict) or not isinstance(output.get("name"), str):
                raise InvalidRequest("each of 'outputs' must be an object with a 'name'")
            if output["name"] in outputs:
                raise InvalidRequest(f"output {output['name']!r} is requested twice")
            output_parameters = _object(output.get("parameters"), f"output {output['name']!r}'s 'parameters'")
            if "binary_data" in output_parameters:
                _flag(output_parameters["binary_data"], f"output {output['name']!r}'s binary_data")
            outputs[output["name"]] = output_parameters
    request_id = header.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidRequest("'id' must be a string")
    binary_output = _flag(parameters.get("binary_data_output", False), "binary_data_output")
    return InferRequest(images, parameters, outputs or None, request_id, binary_output)


def infer_response(model: str, version: str, request: InferRequest, tensors: list[OutputTensor]) -> Response:
    """JSON, or JSON + binary data for the outputs asked in binary (``binary_data`` on the output,
    else the request's ``binary_data_output``)."""
    outputs, blobs = [], []
    requested = request.outputs or {}
    for tensor in tensors:
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}
        if requested.get(tensor.name, {}).get("binary_data", request.binary_output):
            raw = tensor.raw()
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = tensor.json_data()
        outputs.append(entry)
    body: dict[str, Any] = {"model_name": model, "model_version": version}
    if request.id:
        body["id"] = request.id
    body["outputs"] = outputs
    header = json.dumps(body, separators=(",", ":")).encode()
    if not blobs:
        return Response(header, media_type="application/json")
    return Response(
        header + b"".join(blobs),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(header))},
    )


def _json_object(body: bytes, binary_follows: bool) -> dict:
    """The request's JSON object. Its structure is counted first (C-speed byte counts): parsing
    a body of nothing but brackets or commas would build millions of objects (or recurse until
    Python stops it); such a body is refused unparsed."""
    structure = sum(body.count(mark) for mark in _STRUCTURE)
    if structure > MAX_JSON_STRUCTURE:
        raise InvalidRequest(
            f"the request's JSON holds {structure} of the characters [ {{ , : (at most {MAX_JSON_STRUCTURE}): "
            "send images as base64 strings or binary data"
        )
    try:
        header = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        hint = "" if binary_follows else " (binary data needs the Inference-Header-Content-Length header)"
        raise InvalidRequest(f"the request is not valid JSON: {str(exc)[:200]}{hint}") from None
    if not isinstance(header, dict):
        raise InvalidRequest("the request must be a JSON object with 'inputs'")
    return header


def _object(value: Any, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest(f"{what} must be a JSON object")
    return value


def _flag(value: Any, what: str) -> bool:
    """A boolean parameter: JSON true or false, nothing else (``bool("false")`` is true)."""
    if not isinstance(value, bool):
        raise InvalidParameter(f"{what} must be true or false, not {value!r:.40}")
    return value


def _flat(data: Any) -> list:
    """Tensor data flattened: the spec allows nested rows ([[a], [b]] for shape [2, 1]); no deeper."""
    if not isinstance(data, list):
        raise InvalidRequest("input 'image' needs 'data' (base64 strings) or parameters.binary_data_size")
    flat = []
    for element in data:
        if not isinstance(element, list):
            flat.append(element)
            continue
        if any(isinstance(inner, list) for inner in element):
            raise InvalidRequest("input 'image': 'data' nests deeper than its shape [N, 1]")
        flat.extend(element)
    return flat


def _base64(element: Any, index: int) -> bytes:
    if not isinstance(element, str):
        raise InvalidRequest(f"image {index}: in JSON an image is a base64 string, not {type(element).__name__}")
    try:
        return base64.b64decode(element, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"image {index}: not valid base64 (in JSON each image is a base64 string)") from None
