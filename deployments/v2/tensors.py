"""Open Inference Protocol tensors, whatever the transport: the request a client sends (its one
input, ``image``: N encoded images as a BYTES tensor), and the output tensors sent back.

HTTP (``rest``) and gRPC (``grpc_service``) parse into an ``InferRequest`` and serialise
``OutputTensor``s; what the outputs hold is each task's (``outputs``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared.errors import InvalidRequest

IMAGE_INPUT = "image"
MAX_IMAGES = 256  # per request; the service decodes and runs them a window at a time (deployments/service.py)
VERSION = "1"  # every served name has one version
PLATFORM = "pytorch"
SERVER_NAME = "twinfer"
EXTENSIONS = ("binary_tensor_data", "classification")

_RAW_DTYPES = {"FP32": np.dtype("<f4"), "INT64": np.dtype("<i8"), "INT32": np.dtype("<i4")}
_DATATYPES = {
    np.dtype(np.float32): "FP32",
    np.dtype(np.int64): "INT64",
    np.dtype(np.int32): "INT32",
    np.dtype(object): "BYTES",
}
_LENGTH = struct.Struct("<I")  # a BYTES element: its length, 4 bytes little-endian, then its bytes


@dataclass
class InferRequest:
    images: list[bytes]
    parameters: dict[str, Any] = field(default_factory=dict)
    # requested outputs, name -> parameters, in request order; None = the task's default set
    outputs: dict[str, dict[str, Any]] | None = None
    id: str = ""
    binary_output: bool = False  # HTTP: binary_data_output, the default of outputs' binary_data


@dataclass
class OutputTensor:
    name: str
    datatype: str
    shape: list[int]
    array: np.ndarray

    @classmethod
    def of(cls, name: str, array: np.ndarray) -> "OutputTensor":
        return cls(name, _DATATYPES[array.dtype], list(array.shape), array)

    def raw(self) -> bytes:
        """Row-major, no padding: little-endian numbers, or length-prefixed BYTES elements."""
        if self.datatype == "BYTES":
            return serialize_bytes_elements(self.array.reshape(-1))
        return np.ascontiguousarray(self.array, _RAW_DTYPES[self.datatype]).tobytes()

    def json_data(self) -> list:
        """Flattened, as the spec allows; BYTES elements (labels, classifications) are UTF-8 text."""
        flat = self.array.reshape(-1)
        if self.datatype == "BYTES":
            return [element.decode("utf-8", "replace") for element in flat]
        return flat.tolist()


def image_count(name: Any, datatype: Any, shape: Any) -> int:
    """N for a valid ``image`` input: BYTES, shape [N] or [N, 1], 1 <= N <= MAX_IMAGES."""
    if name != IMAGE_INPUT:
        raise InvalidRequest(
            f"unknown input {name!r}: the model takes one input, {IMAGE_INPUT!r} (BYTES, shape [N] or [N, 1])"
        )
    if datatype != "BYTES":
        raise InvalidRequest(f"input {IMAGE_INPUT!r} is BYTES (encoded images), not {datatype!r}")
    valid = (
        isinstance(shape, (list, tuple))
        and len(shape) in (1, 2)
        and all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
        and (len(shape) == 1 or shape[1] == 1)
    )
    if not valid:
        raise InvalidRequest(f"input {IMAGE_INPUT!r} has shape [N] or [N, 1], not {shape!r}")
    if not 1 <= shape[0] <= MAX_IMAGES:
        raise InvalidRequest(f"a request holds 1 to {MAX_IMAGES} images, not {shape[0]}")
    return shape[0]


def split_bytes_elements(data: bytes | memoryview, count: int) -> list[bytes]:
    """Exactly ``count`` length-prefixed elements that fill ``data`` (Triton's BYTES serialisation).
    At most ``count`` elements are read: whatever follows the last one is refused unread."""
    view = memoryview(data)
    elements, offset = [], 0
    while len(elements) < count:
        if offset + 4 > len(view):
            if offset == len(view):
                break
            raise InvalidRequest(f"BYTES element {len(elements)}: its 4-byte length is cut off")
        (size,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + size > len(view):
            raise InvalidRequest(f"BYTES element {len(elements)}: {size} bytes announced, {len(view) - offset} left")
        elements.append(bytes(view[offset : offset + size]))
        offset += size
    if len(elements) != count or offset != len(view):
        more = "" if offset == len(view) else f" and {len(view) - offset} more bytes"
        raise InvalidRequest(
            f"input {IMAGE_INPUT!r}: shape says {count} image(s), the data holds {len(elements)}{more}"
        )
    return elements


def serialize_bytes_elements(elements) -> bytes:
    return b"".join(_LENGTH.pack(len(e)) + bytes(e) for e in elements)
