"""Stage 2 of the wrapper: uint8 HWC images -> uint8 CHW tensors at the model's input size.

Runs on CPU workers (Ray Data tasks, the online decode pool); the result stays uint8 so what
crosses a process boundary is 1 byte per channel. Normalisation happens later, on the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torchvision.transforms.v2.functional as F

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
    chw = prepare_tensor(torch.from_numpy(image).permute(2, 0, 1), spec)
    return Prepared(np.ascontiguousarray(chw.numpy()), (image.shape[0], image.shape[1]))


def prepare_tensor(chw: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """uint8 (3, H, W) -> uint8 (3, h, w) at the model's size, on whatever device ``chw`` is on:
    the CPU half runs it on decoded arrays, the device half on JPEGs decoded on the GPU."""
    height, width = chw.shape[1:]
    mode = INTERPOLATION[spec.interpolation]
    if spec.mode == "resize_crop":
        chw = _bound_aspect(chw, MAX_ASPECT)
        return F.center_crop(F.resize(chw, spec.resize or spec.size, interpolation=mode, antialias=True), spec.size)
    if spec.mode == "resize_exact":
        # squash, then crop: how Hugging Face processors with a height/width size and a crop_size
        # (DeiT) and timm's crop_mode "squash" with crop_pct < 1 prepare images
        side = spec.resize or spec.size
        chw = F.resize(chw, [side, side], interpolation=mode, antialias=True)
        return chw if side == spec.size else F.center_crop(chw, spec.size)
    if spec.mode == "max_side":
        scale = spec.size / max(height, width)
        if scale < 1:
            size = [max(1, round(height * scale)), max(1, round(width * scale))]
            return F.resize(chw, size, interpolation=mode, antialias=True)
        return chw
    raise ValueError(spec.mode)  # pragma: no cover - the Literal keeps this out


INTERPOLATION = {"bilinear": F.InterpolationMode.BILINEAR, "bicubic": F.InterpolationMode.BICUBIC}
MAX_ASPECT = 4  # the centre crop never reaches beyond this; bounds resize's intermediate


def _bound_aspect(chw: torch.Tensor, max_aspect: int) -> torch.Tensor:
    """Centre-crop the long side to ``max_aspect`` x the short side. A no-op for ordinary photos;
    for a 1 x 100000 strip it stops resize-then-crop from allocating a 256 x 25600000 image."""
    height, width = chw.shape[1:]
    short = min(height, width)
    if max(height, width) <= short * max_aspect:
        return chw
    return F.center_crop(chw, [min(height, short * max_aspect), min(width, short * max_aspect)])


def stack(pixels: list[np.ndarray]) -> np.ndarray:
    """Same-size uint8 CHW images -> one uint8 NCHW array."""
    return np.stack(pixels) if pixels else np.zeros((0, 3, 1, 1), np.uint8)
