"""JPEG decode on the model's device (nvJPEG through ``torchvision.io.decode_jpeg``), in batches.

With ``decode.on_device`` the CPU half only reads and checks the header (``shared.decode.open_image``:
format, pixel cap, size) and hands the JPEG's bytes over as an ``Encoded`` item: about a third of
the bytes of the uint8 crop, and no CPU decode. The device half decodes all of a batch's JPEGs in
one call, applies the EXIF orientation, and resizes/crops them with the same
``shared.prepare.prepare_tensor`` the CPU path uses.

What the device decoder might get wrong stays on the CPU path, decided from the header:
non-JPEG formats, MPO, CMYK/YCCK JPEGs, and files that do not end in the JPEG end-of-image
marker (truncated, or trailing data). A JPEG the device decoder still rejects is decoded on the
CPU, alone; if that fails too, only that image fails (``InvalidImage``), never its batch.
"""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from shared.errors import InvalidImage

logger = logging.getLogger(__name__)

EXIF_ORIENTATION = 0x0112
JPEG_EOI = b"\xff\xd9"


@dataclass(frozen=True)
class Encoded:
    """A JPEG whose header passed every check, left encoded for the device decoder."""

    data: np.ndarray  # uint8 1-D: the file's bytes
    orientation: int  # EXIF orientation, 1 (upright) to 8
    original_size: tuple[int, int]  # (height, width) after orientation, as the CPU path reports it


def encoded_if_device_decodable(image: Image.Image, data: bytes) -> Encoded | None:
    """The ``Encoded`` item for a header-checked Pillow image, or None when the CPU path should
    decode it (see the module docstring for which files those are)."""
    if image.format != "JPEG" or image.mode not in ("RGB", "L"):
        return None
    if not data.rstrip(b"\x00").endswith(JPEG_EOI):  # truncated, or data after the image
        return None
    orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    if orientation not in range(1, 9):
        orientation = 1  # as Pillow's exif_transpose: an unknown value is ignored
    width, height = image.size
    size = (width, height) if orientation >= 5 else (height, width)  # 5-8 swap the axes
    return Encoded(np.frombuffer(data, np.uint8), orientation, size)


def decode_jpegs(items: list[Encoded], device: torch.device) -> list[torch.Tensor | InvalidImage]:
    """uint8 (3, H, W) RGB tensors on ``device``, upright; an ``InvalidImage`` for a JPEG that
    neither the batched call nor a single-image retry could decode. Never raises for bad data."""
    if not items:
        return []
    from torchvision.io import ImageReadMode, decode_jpeg

    # inputs must be CPU uint8 tensors; a copy of the (often read-only) bytes, ~50 KB each
    inputs = [torch.frombuffer(bytearray(item.data), dtype=torch.uint8) for item in items]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torchvision 0.29 marks its decoders deprecated
        try:
            decoded: list = list(decode_jpeg(inputs, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:  # one bad image fails the whole batched call: retry one at a time
            decoded = []
            for tensor in inputs:
                try:
                    decoded.append(decode_jpeg(tensor, mode=ImageReadMode.RGB, device=device))
                except RuntimeError as exc:
                    decoded.append(InvalidImage(f"corrupt JPEG: {_reason(exc)}"))
    return [out if isinstance(out, InvalidImage) else orient(out, item.orientation) for out, item in zip(decoded, items)]


def _reason(exc: Exception) -> str:
    """torchvision's message without its source-file prefix ("decode_jpeg, /path/x.cpp:171, reason")."""
    return str(exc).splitlines()[0].rsplit(", ", 1)[-1] if str(exc) else type(exc).__name__


def orient(chw: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation (1-8) to a (C, H, W) tensor, as Pillow's ``exif_transpose`` does."""
    if orientation == 2:
        return chw.flip(2)
    if orientation == 3:
        return chw.flip(1, 2)
    if orientation == 4:
        return chw.flip(1)
    if orientation == 5:
        return chw.transpose(1, 2)
    if orientation == 6:
        return chw.rot90(-1, (1, 2))
    if orientation == 7:
        return chw.transpose(1, 2).flip(1, 2)
    if orientation == 8:
        return chw.rot90(1, (1, 2))
    return chw


def blank_jpeg(size: int) -> Encoded:
    """A plain ``size`` x ``size`` JPEG, to warm the device decoder before any request."""
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (127, 127, 127)).save(buffer, "JPEG")
    return Encoded(np.frombuffer(buffer.getvalue(), np.uint8), 1, (size, size))
