"""A benchmark dataset: ~50 KB JPEGs of 400-640 px cut from scikit-image's sample photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from twinfer.samples import SAMPLE_NAMES, encode, sample_array


def make_dataset(root: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` JPEGs under ``root/<photo name>/``; crops, flips and sizes vary so no two are equal."""
    rng = np.random.default_rng(seed)
    photos = {name: Image.fromarray(sample_array(name)).convert("RGB") for name in SAMPLE_NAMES}
    paths = []
    for i in range(n):
        name = SAMPLE_NAMES[i % len(SAMPLE_NAMES)]
        photo = photos[name]
        w, h = photo.size
        cw, ch = int(w * rng.uniform(0.7, 1.0)), int(h * rng.uniform(0.7, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = photo.crop((x, y, x + cw, y + ch))
        side = int(rng.integers(400, 641))
        scale = side / max(crop.size)
        crop = crop.resize((max(1, round(crop.width * scale)), max(1, round(crop.height * scale))), Image.BILINEAR)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        path = root / name / f"{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode(np.asarray(crop), quality=85))
        paths.append(path)
    return paths
