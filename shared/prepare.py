"""Stage 2 of the wrapper: uint8 HWC images -> uint8 CHW tensors at the model's input size.

Runs on CPU workers (Ray Data tasks, the online decode pool); the result stays uint8 so what
crosses a process boundary is 1 byte per channel. Normalisation happens later, on the device.
The resize and centre crop are torchvision's tensor kernels (``torchvision.transforms.v2.functional``
``resize`` with antialias, ``center_crop``) written on torch alone, pixel for pixel the same
(tests/test_prepare_kernels.py): a process that only prepares pixels, as an ingress replica or a
decode task does, does not import torchvision, which costs seconds of CPU and its memory.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PreprocessSpec:
    """How one model wants its pixels. Travels with the registry entry."""

    mode: Literal["resize_crop", "resize_exact", "max_side"]
    size: int  # crop side / exact side / longest side
    # resize_crop: shorter side before the centre crop; resize_exact: the square side the image is
    # squashed to before a centre crop of ``size`` (None: squash straight to ``size``)
    resize: int | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN  # in [0, 1] units; used on the device
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"  # what the weights were trained with

    @property
    def draft_size(self) -> int | None:
        """Smallest side a JPEG may be draft-decoded to without losing resize quality. None for
        detection (``max_side``): its boxes are reported in the decoded image's pixels."""
        return None if self.mode == "max_side" else (self.resize or self.size)


@dataclass(frozen=True)
class Prepared:
    """One image ready to join a batch: uint8 CHW pixels plus its original size."""

    pixels: np.ndarray | torch.Tensor  # uint8 (3, h, w): a host array, or on the model's device
    original_size: tuple[int, int]  # (height, width) of the decoded image


def prepare_image(image: np.ndarray, spec: PreprocessSpec) -> Prepared:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected uint8 HxWx3, got {image.dtype} {image.shape}")
    original_size = (image.shape[0], image.shape[1])
    image = _box_shrink(image, resize_target(original_size, spec))
    chw = prepare_tensor(torch.from_numpy(image).permute(2, 0, 1), spec)
    return Prepared(np.ascontiguousarray(chw.numpy()), original_size)


def resize_target(size: tuple[int, int], spec: PreprocessSpec) -> tuple[int, int] | None:
    """The (height, width) ``prepare_tensor`` resizes an image of ``size`` to, for the modes whose
    shrink has no bound of its own (``resize_crop`` crops the aspect first: None)."""
    height, width = size
    if spec.mode == "resize_exact":
        side = spec.resize or spec.size
        return side, side
    if spec.mode == "max_side":
        scale = min(spec.size / max(height, width), 1.0)
        return max(1, round(height * scale)), max(1, round(width * scale))
    return None


def _box_shrink(image: np.ndarray, target: tuple[int, int] | None) -> np.ndarray:
    """Each side more than ``MAX_SHRINK`` x its target, shrunk by an integer factor to about
    ``BOX_LEAVES`` x it: block means, summed in uint32 without a widened copy of the image."""
    if target is None:
        return image
    for axis, goal in enumerate(target):
        length = image.shape[axis]
        if length <= goal * MAX_SHRINK:
            continue
        factor = length // (goal * BOX_LEAVES)
        kept = length // factor * factor
        if axis == 0:
            blocks = image[:kept].reshape(kept // factor, factor, image.shape[1], 3)
        else:
            blocks = image[:, :kept].reshape(image.shape[0], kept // factor, factor, 3)
        total = np.add.reduce(blocks, axis=axis + 1, dtype=np.uint32)
        total += factor // 2
        total //= factor
        image = total.astype(np.uint8)
    return image


def prepare_tensor(chw: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """uint8 (3, H, W) -> uint8 (3, h, w) at the model's size, on whatever device ``chw`` is on:
    the CPU half runs it on decoded arrays, the device half on JPEGs decoded on the GPU. Whatever
    the aspect, the work and memory stay within a small multiple of the image's own (``_resize``)."""
    height, width = chw.shape[1:]
    mode = spec.interpolation  # also torch.nn.functional.interpolate's name for it
    if spec.mode == "resize_crop":
        chw = _bound_aspect(chw, MAX_ASPECT)
        return center_crop(_resize(chw, _shorter_side(chw, spec.resize or spec.size), mode), (spec.size, spec.size))
    if spec.mode == "resize_exact":
        # squash, then crop: how Hugging Face processors with a height/width size and a crop_size
        # (DeiT) and timm's crop_mode "squash" with crop_pct < 1 prepare images
        side = spec.resize or spec.size
        chw = _resize(chw, (side, side), mode)
        return chw if side == spec.size else center_crop(chw, (spec.size, spec.size))
    if spec.mode == "max_side":
        scale = spec.size / max(height, width)
        if scale < 1:
            return _resize(chw, (max(1, round(height * scale)), max(1, round(width * scale))), mode)
        return chw
    raise ValueError(spec.mode)  # pragma: no cover - the Literal keeps this out


def _resize(chw: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """``resize`` to ``size`` (height, width), shrinking before it grows. The resize is separable:
    one pass along the width, then one along the height, with the whole intermediate held between
    them. When the height shrinks while the width grows (a tall strip squashed to a square) that
    intermediate is the input's height times the output's width: 1 000 000 x 224 for a 1 x 1 000 000
    column. Shrinking the height first, alone, keeps every intermediate within the input's and the
    output's size; the two orders give the same image (the passes commute; uint8 rounding aside)."""
    height, width = chw.shape[1:]
    out_height, out_width = size
    if out_height < height and out_width > width:
        chw = resize(chw, (out_height, width), mode)
    return resize(chw, (out_height, out_width), mode)


def _shorter_side(chw: torch.Tensor, side: int) -> tuple[int, int]:
    """(height, width) with the shorter side at ``side``, as torchvision's ``resize(chw, side)`` computes it."""
    height, width = chw.shape[1:]
    if height <= width:
        return side, int(side * width / height)
    return int(side * height / width), side


MAX_ASPECT = 4  # the centre crop never reaches beyond this; bounds resize's intermediate
# An antialiased resize weighs every input pixel of a row (or column) for each output pixel it
# covers: its filter weights take ~16 bytes per input pixel along the axis it shrinks. Negligible
# for a photo, it is 5 x the pixels themselves for a strip one pixel wide. Shrinks over MAX_SHRINK x
# (a 40 Mpx photo squashed to 224 shrinks ~30 x) first average blocks of pixels (``_box_shrink``,
# no weights) down to BOX_LEAVES x the target, and the resize does the rest.
MAX_SHRINK = 64
BOX_LEAVES = 8


def _bound_aspect(chw: torch.Tensor, max_aspect: int) -> torch.Tensor:
    """Centre-crop the long side to ``max_aspect`` x the short side. A no-op for ordinary photos;
    for a 1 x 100000 strip it stops resize-then-crop from allocating a 256 x 25600000 image."""
    height, width = chw.shape[1:]
    short = min(height, width)
    if max(height, width) <= short * max_aspect:
        return chw
    return center_crop(chw, (min(height, short * max_aspect), min(width, short * max_aspect)))


def resize(image: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Antialiased ``bilinear`` or ``bicubic`` resize of a (..., C, H, W) tensor to ``size``, as
    torchvision's ``resize_image`` does it: uint8 stays uint8 where torch has a uint8 kernel (on the
    CPU: bicubic always, bilinear with AVX2/AVX512 or on ARM); elsewhere through float32, rounded
    (and clamped, for bicubic) back. A 1CHW view of channels-last memory is restrided so that the
    output stays channels-last (torch otherwise allocates it contiguous and repacks it)."""
    shape = image.shape
    channels, height, width = shape[-3:]
    if (height, width) == tuple(size):
        return image
    if image.numel() == 0:
        return image.reshape(shape[:-3] + (channels, *size))
    dtype = image.dtype
    native = dtype in (torch.float32, torch.float64) or (
        dtype == torch.uint8 and image.device.type == "cpu" and _native_uint8_on_cpu(mode)
    )
    image = image.reshape(-1, channels, height, width)
    strides = image.stride()
    if image.is_contiguous(memory_format=torch.channels_last) and image.shape[0] == 1 and image.numel() != strides[0]:
        image = image.as_strided((1, channels, height, width), (image.numel(), *strides[1:]))
    if not native:
        image = image.to(dtype=torch.float32)
    image = torch.nn.functional.interpolate(image, size=list(size), mode=mode, align_corners=False, antialias=True)
    if not native:
        if mode == "bicubic" and dtype == torch.uint8:
            image = image.clamp_(min=0, max=255)
        if not dtype.is_floating_point:
            image = image.round_()
        image = image.to(dtype=dtype)
    return image.reshape(shape[:-3] + (channels, *size))


def _native_uint8_on_cpu(mode: str) -> bool:
    if mode == "bilinear":
        return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") or platform.machine() in (
            "aarch64",
            "arm64",
        )
    return True  # bicubic


def center_crop(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The centre ``size`` (height, width) of a (..., H, W) tensor, zero-padded where the image is
    smaller, as torchvision's ``center_crop_image``."""
    crop_height, crop_width = size
    height, width = image.shape[-2:]
    if crop_height > height or crop_width > width:
        pad_w, pad_h = max(crop_width - width, 0), max(crop_height - height, 0)
        padding = [pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2]  # left, right, top, bottom
        image = torch.nn.functional.pad(image, padding, value=0.0)
        height, width = image.shape[-2:]
        if (crop_height, crop_width) == (height, width):
            return image
    top, left = int(round((height - crop_height) / 2.0)), int(round((width - crop_width) / 2.0))
    return image[..., top : top + crop_height, left : left + crop_width]


def stack(pixels: list[np.ndarray]) -> np.ndarray:
    """Same-size uint8 CHW images -> one uint8 NCHW array."""
    return np.stack(pixels) if pixels else np.zeros((0, 3, 1, 1), np.uint8)
