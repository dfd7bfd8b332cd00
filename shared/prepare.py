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
    resize: int | None = None  # resize_crop: shorter side before the centre crop
    mean: tuple[float, float, float] = IMAGENET_MEAN  # in [0, 1] units; used on the device
    std: tuple[float, float, float] = IMAGENET_STD

    @property
    def draft_size(self) -> int:
        """Smallest side a JPEG may be draft-decoded to without losing resize quality."""
        return self.resize or self.size


@dataclass(frozen=True)
class Prepared:
    """One image ready to join a batch: uint8 CHW pixels plus its original size."""

    pixels: np.ndarray  # uint8, (3, h, w)
    original_size: tuple[int, int]  # (height, width) of the decoded image


def prepare_image(image: np.ndarray, spec: PreprocessSpec) -> Prepared:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected uint8 HxWx3, got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    chw = torch.from_numpy(image).permute(2, 0, 1)
    if spec.mode == "resize_crop":
        chw = F.center_crop(F.resize(chw, spec.resize or spec.size, antialias=True), spec.size)
    elif spec.mode == "resize_exact":
        chw = F.resize(chw, [spec.size, spec.size], antialias=True)
    elif spec.mode == "max_side":
        scale = spec.size / max(height, width)
        if scale < 1:
            chw = F.resize(chw, [max(1, round(height * scale)), max(1, round(width * scale))], antialias=True)
    else:  # pragma: no cover - the Literal keeps this out
        raise ValueError(spec.mode)
    return Prepared(np.ascontiguousarray(chw.numpy()), (height, width))


def stack(pixels: list[np.ndarray]) -> np.ndarray:
    """Same-size uint8 CHW images -> one uint8 NCHW array."""
    return np.stack(pixels) if pixels else np.zeros((0, 3, 1, 1), np.uint8)
