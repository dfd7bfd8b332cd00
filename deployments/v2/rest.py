"""The Open Inference Protocol over HTTP: request bodies in, responses and errors out.

Bodies are JSON, or JSON followed by binary tensor data (Triton's ``binary_tensor_data``
extension: the JSON's length in the ``Inference-Header-Content-Length`` header, an input's
``parameters.binary_data_size`` bytes in input order, BYTES elements each a 4-byte little-endian
length and the bytes). In plain JSON the spec leaves BYTES open: twinfer takes each image as a
base64 string. Output BYTES (labels, classifications) are text, sent as JSON strings.
"""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from typing import Any

from starlette.responses import JSONResponse, Response

from deployments.http import error_headers
from deployments.v2.tensors import InferRequest, InvalidRequest, OutputTensor, image_count, split_bytes_elements
from shared.errors import BodyTooLarge, TwinferError, UnsupportedMediaType

HEADER_LENGTH = "inference-header-content-length"


def error_response(error: TwinferError) -> JSONResponse:
    """The spec's ``{"error": "<message>"}``; the message starts with twinfer's error code."""
    return JSONResponse(
        {"error": f"{error.code}: {error}"}, status_code=error.http_status, headers=error_headers(error)
    )


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
        if not header_length.strip().isdigit() or not 0 < int(header_length) <= len(body):
            raise InvalidRequest(
                f"Inference-Header-Content-Length {header_length!r} is not a length within the {len(body)}-byte body"
            )
        binary = memoryview(body)[int(header_length) :]
        body = body[: int(header_length)]
    try:
        header = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        hint = "" if header_length is not None else " (binary data needs the Inference-Header-Content-Length header)"
        raise InvalidRequest(f"the request is not valid JSON: {exc}{hint}") from None
    if not isinstance(header, dict):
        raise InvalidRequest("the request must be a JSON object with 'inputs'")

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
        images = [_base64(element, i) for i, element in enumerate(_flat(tensor.get("data")))]
        if len(images) != count:
            raise InvalidRequest(f"input 'image': shape says {count} image(s), 'data' holds {len(images)}")
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
            outputs[output["name"]] = _object(output.get("parameters"), f"output {output['name']!r}'s 'parameters'")
    request_id = header.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidRequest("'id' must be a string")
    return InferRequest(
        images, parameters, outputs or None, request_id, bool(parameters.get("binary_data_output", False))
    )


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


def _object(value: Any, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest(f"{what} must be a JSON object")
    return value


def _flat(data: Any) -> list:
    """Tensor data flattened: the spec allows nested rows ([[a], [b]] for shape [2, 1])."""
    if not isinstance(data, list):
        raise InvalidRequest("input 'image' needs 'data' (base64 strings) or parameters.binary_data_size")
    flat = []
    for element in data:
        flat.extend(_flat(element) if isinstance(element, list) else [element])
    return flat


def _base64(element: Any, index: int) -> bytes:
    if not isinstance(element, str):
        raise InvalidRequest(f"image {index}: in JSON an image is a base64 string, not {type(element).__name__}")
    try:
        return base64.b64decode(element, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"image {index}: not valid base64 (in JSON each image is a base64 string)") from None
