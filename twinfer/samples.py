"""scikit-image's bundled sample photos as encoded image bytes (demo, tests and benchmarks)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

SAMPLE_NAMES = ("chelsea", "coffee", "rocket", "astronaut", "motorcycle")


def sample_array(name: str) -> np.ndarray:
    import skimage.data

    if name == "motorcycle":
        return skimage.data.stereo_motorcycle()[0]
    return getattr(skimage.data, name)()


def encode(array: np.ndarray, fmt: str = "JPEG", **save_kwargs) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(array)
    if fmt == "JPEG":
        save_kwargs.setdefault("quality", 90)
        image = image.convert("RGB")
    image.save(buffer, fmt, **save_kwargs)
    return buffer.getvalue()


def sample_jpegs(names=SAMPLE_NAMES) -> dict[str, bytes]:
    return {name: encode(sample_array(name)) for name in names}
