"""A benchmark dataset: ~50 KB JPEGs of 400-640 px cut from scikit-image's sample photos."""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from twinfer.samples import SAMPLE_NAMES, encode, sample_array

_photos: dict[str, Image.Image] = {}


def make_dataset(root: Path, n: int, seed: int = 0, workers: int | None = None) -> list[Path]:
    """``n`` JPEGs under ``root/<photo name>/``; crops, flips and sizes vary so no two are equal.

    Image i depends only on (seed, i), so the set is the same whatever the number of worker
    processes (one per core by default; 2000 images took 8.3 s on one worker and 4.1 s on two).
    Written beside ``root`` and renamed into place, so an interrupted run never leaves a partial
    dataset that a later run would take for a whole one. A ``root`` already holding JPEGs is
    refused; one without (an old run's empty folders) is replaced."""
    root = Path(root)
    if root.exists():
        if any(root.rglob("*.jpg")):
            raise FileExistsError(f"{root} already holds JPEGs; use it as it is or pick another folder")
        shutil.rmtree(root)
    staging = root.with_name(root.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    workers = workers or min(os.cpu_count() or 1, n // 500 + 1)  # a process per ~500 images at most
    size = max(1, min(1000, -(-n // workers)))
    chunks = [(staging, seed, start, min(start + size, n)) for start in range(0, n, size)]
    if workers == 1:
        names = [name for chunk in chunks for name in _write_chunk(chunk)]
    else:
        with ProcessPoolExecutor(workers) as pool:
            names = [name for written in pool.map(_write_chunk, chunks) for name in written]
    staging.rename(root)
    return [root / name for name in names]


def _write_chunk(chunk: tuple[Path, int, int, int]) -> list[str]:
    staging, seed, start, stop = chunk
    return [_write_one(staging, seed, i) for i in range(start, stop)]


def _write_one(staging: Path, seed: int, i: int) -> str:
    rng = np.random.default_rng([seed, i])
    name = SAMPLE_NAMES[i % len(SAMPLE_NAMES)]
    if name not in _photos:
        _photos[name] = Image.fromarray(sample_array(name)).convert("RGB")
    photo = _photos[name]
    w, h = photo.size
    cw, ch = int(w * rng.uniform(0.7, 1.0)), int(h * rng.uniform(0.7, 1.0))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    crop = photo.crop((x, y, x + cw, y + ch))
    side = int(rng.integers(400, 641))
    scale = side / max(crop.size)
    crop = crop.resize((max(1, round(crop.width * scale)), max(1, round(crop.height * scale))), Image.BILINEAR)
    if rng.random() < 0.5:
        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
    relative = f"{name}/{i:06d}.jpg"
    path = staging / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode(np.asarray(crop), quality=85))
    return relative
