"""JPEG decode on the model's device (nvJPEG through ``torchvision.io.decode_jpeg``), in batches.

With ``decode.on_device`` the CPU half only reads and checks the header (``shared.decode.open_image``:
format, pixel cap, size) and hands the JPEG's bytes over as an ``Encoded`` item. For a typical
web JPEG (~50 KB) that is a third of the bytes of the 224 x 224 uint8 crop, and no CPU decode; a
multi-megabyte camera photo is *more* bytes than its crop. The device half decodes a batch's
JPEGs in few calls, applies the EXIF orientation, and resizes/crops them with the same
``shared.prepare.prepare_tensor`` code the CPU path uses. The pixels are close to the CPU path's,
not equal: the CPU path decodes JPEGs at reduced scale (``decode.draft``), nvJPEG's inverse DCT
and chroma upsampling are its own, and on CUDA the resize runs in float32. The benchmark's top-1
agreement with the fp32 CPU path is the measure.

What the device decoder might get wrong, or would decode slowly, stays on the CPU path, decided
from the header: non-JPEG formats, MPO, CMYK/YCCK JPEGs, files that do not end in the JPEG
end-of-image marker (truncated, or trailing data), unreadable or non-integer EXIF orientation,
and the JPEGs nvJPEG's batched decoder does not take (``nvjpegDecodeBatchedSupported``):
progressive, grayscale and unusual chroma subsampling. torchvision would hand those to nvJPEG's
hybrid backend, a Huffman decode on the host plus a stream synchronize per image, in the GPU
process and under the device lock. CPU workers decode them in parallel instead. A JPEG the
device decoder still rejects is decoded on the CPU, alone, after the device lock is released.
If that fails too, only that image fails (``InvalidImage``), never its batch. A failed batched
call is bisected, so one bad JPEG costs about 2 log2(n) decode calls, not n.

nvJPEG's hardware engine does not wait for work already queued on the caller's CUDA stream
before it writes its outputs (pytorch/vision#9606, meta-pytorch/torchcodec#1634), so memory the
caching allocator hands it may still be read by queued kernels. ``decode_jpegs`` therefore
drains the stream before each decode call, and once any model in the process decodes on the
device (``DECODING_ON_DEVICE``), every CUDA batch there - with JPEGs to decode or not - holds
``CUDA_DECODE_LOCK`` (``DeviceDecoder.exclusive``; one per process: the stream is the process's)
over its decode and forward pass, so no other thread can queue work, or free memory still in use,
between a drain and a decode.
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, JpegImagePlugin

from shared.errors import InvalidImage, TwinferError
from shared.prepare import Prepared, PreprocessSpec, prepare_tensor

logger = logging.getLogger(__name__)

EXIF_ORIENTATION = 0x0112
CUDA_DECODE_LOCK = threading.Lock()  # held by every CUDA batch while nvJPEG may run in this process
DECODING_ON_DEVICE = threading.Event()  # set (for good) once a model in this process decodes on the device
JPEG_EOI = b"\xff\xd9"
# most decoded pixels held at once (full-size uint8 RGB: 3 bytes each), so a batch of large photos
# is decoded in several calls instead of holding every full-size image at the same time
MAX_PIXELS_PER_DECODE = 100_000_000

# torchvision 0.29 marks its decoders deprecated (in favour of TorchCodec) on every call
warnings.filterwarnings(
    "ignore", message="The image decoding and encoding capabilities of TorchVision", category=DeprecationWarning
)


@dataclass(frozen=True)
class Encoded:
    """A JPEG whose header passed every check, left encoded for the device decoder."""

    data: np.ndarray  # uint8 1-D: the file's bytes
    orientation: int  # EXIF orientation, 1 (upright) to 8
    original_size: tuple[int, int]  # (height, width) of the full-size image after orientation


class DeviceDecoder:
    """One model's device half of decoding: ``Encoded`` JPEGs -> ``Prepared`` with pixels on
    ``device``, and the lock that model's CUDA batches hold (``exclusive``). ``cpu_path`` decodes
    and prepares a file's bytes on the CPU: the fallback for a JPEG the device rejects."""

    def __init__(
        self, device: torch.device, preprocess: PreprocessSpec, cpu_path: Callable[[bytes], Prepared], enabled: bool
    ):
        self.device = device
        self.preprocess = preprocess
        self.cpu_path = cpu_path
        if enabled and device.type == "cuda":
            DECODING_ON_DEVICE.set()  # from now on every CUDA batch in this process takes the lock

    def exclusive(self, items: Sequence[object] = ()):
        """``CUDA_DECODE_LOCK`` for a CUDA batch once nvJPEG may run in this process, or when the
        batch itself has JPEGs to decode; nothing otherwise."""
        if self.device.type != "cuda":
            return contextlib.nullcontext()
        if DECODING_ON_DEVICE.is_set() or any(isinstance(item, Encoded) for item in items):
            return CUDA_DECODE_LOCK
        return contextlib.nullcontext()

    def decode(self, items: Sequence[object]) -> list:
        """Each ``Encoded`` item -> ``Prepared`` (pixels on the device) or, when neither the device
        nor the CPU path can read it, its ``TwinferError``; other items pass through."""
        encoded = [i for i, item in enumerate(items) if isinstance(item, Encoded)]
        out: list = list(items)
        if not encoded:
            return out
        failed: dict[int, TwinferError] = {}
        with self.exclusive(items):
            for chunk in pixel_budget_chunks([items[i] for i in encoded]):
                indices = [encoded[j] for j in chunk]
                for i, decoded in zip(indices, decode_jpegs([items[i] for i in indices], self.device)):
                    prepared = self._prepare(items[i], decoded)
                    if isinstance(prepared, Prepared):
                        out[i] = prepared
                    else:
                        failed[i] = prepared
        for i, reason in failed.items():  # after the lock: a full-size CPU decode must not stall the GPU
            out[i] = self._on_cpu(items[i], reason)
        return out

    def _prepare(self, item: Encoded, decoded: torch.Tensor | TwinferError) -> Prepared | TwinferError:
        if isinstance(decoded, TwinferError):
            return decoded
        try:
            return Prepared(prepare_tensor(decoded, self.preprocess), item.original_size)
        except RuntimeError as exc:  # e.g. out of device memory resizing a very large image
            return TwinferError(f"{type(exc).__name__}: {exc}".splitlines()[0])

    def _on_cpu(self, item: Encoded, reason: TwinferError) -> Prepared | TwinferError:
        logger.warning("device JPEG decode or resize failed (%s); decoding this image on the CPU", reason)
        try:
            return self.cpu_path(item.data.tobytes())
        except TwinferError as error:
            return error
        except Exception as exc:  # anything else still costs this image only
            logger.exception("unexpected error decoding an image on the CPU fallback")
            return InvalidImage(f"{type(exc).__name__}: {exc}")


def encoded_if_device_decodable(image: Image.Image, data: bytes) -> Encoded | None:
    """The ``Encoded`` item for a header-checked Pillow image, or None when the CPU path should
    decode it (see the module docstring for which files those are)."""
    if image.format != "JPEG" or image.mode != "RGB":  # grayscale: nvJPEG's host path
        return None
    if image.info.get("progressive") or image.info.get("progression"):  # nvJPEG's host path
        return None
    if JpegImagePlugin.get_sampling(image) == -1:  # not 4:4:4, 4:2:2 or 4:2:0
        return None
    if not data.rstrip(b"\x00").endswith(JPEG_EOI):  # truncated, or data after the image
        return None
    try:
        orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # a malformed EXIF block: the CPU path reports it as it always has
        return None
    if type(orientation) is not int:  # a float or rational tag: leave its reading to Pillow
        return None
    if orientation not in range(1, 9):
        orientation = 1  # as Pillow's exif_transpose: an unknown value is ignored
    width, height = image.size
    size = (width, height) if orientation >= 5 else (height, width)  # 5-8 swap the axes
    return Encoded(np.frombuffer(data, np.uint8), orientation, size)


def decode_jpegs(items: list[Encoded], device: torch.device) -> list[torch.Tensor | InvalidImage]:
    """uint8 (3, H, W) RGB tensors on ``device``, upright; an ``InvalidImage`` for a JPEG that
    no decode call could read. Never raises for bad data: a failed batched call is split in
    halves until the bad images stand alone.
    The caller must keep other threads from queueing work on ``device`` meanwhile (module docstring)."""
    if not items:
        return []
    from torchvision.io import ImageReadMode, decode_jpeg

    def drain() -> None:
        if device.type == "cuda":
            torch.cuda.current_stream(device).synchronize()  # nothing queued may read what nvJPEG is given

    def decode(tensors: list[torch.Tensor]) -> list[torch.Tensor | InvalidImage]:
        try:
            drain()
            if len(tensors) == 1:
                return [decode_jpeg(tensors[0], mode=ImageReadMode.RGB, device=device)]
            return list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device))
        except RuntimeError as exc:  # one bad image fails the whole call
            if len(tensors) == 1:
                return [InvalidImage(f"corrupt JPEG: {_reason(exc)}")]
            middle = len(tensors) // 2
            return decode(tensors[:middle]) + decode(tensors[middle:])

    # inputs must be CPU uint8 tensors; a copy of the (often read-only) bytes
    decoded = decode([torch.frombuffer(bytearray(item.data), dtype=torch.uint8) for item in items])
    return [
        out if isinstance(out, InvalidImage) else orient(out, item.orientation) for out, item in zip(decoded, items)
    ]


def pixel_budget_chunks(items: list[Encoded], max_pixels: int | None = None) -> list[list[int]]:
    """Indices of ``items`` in order, grouped so each group's full-size pixels stay under
    ``max_pixels`` (default ``MAX_PIXELS_PER_DECODE``; a single larger image gets a group of its own)."""
    max_pixels = max_pixels or MAX_PIXELS_PER_DECODE
    chunks: list[list[int]] = []
    total = 0
    for i, item in enumerate(items):
        pixels = item.original_size[0] * item.original_size[1]
        if not chunks or total + pixels > max_pixels:
            chunks.append([])
            total = 0
        chunks[-1].append(i)
        total += pixels
    return chunks


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
