"""Colour conversion needs little memory beyond the decoder's own output and the result.

A 5 Mpx image of each mode is decoded in a fresh interpreter (no other test's heap): the rise of
the peak resident set (Linux ``VmHWM``, reset just before) over the decode is the extra peak
memory. Pillow's decoded image (1-4 bytes a pixel, by mode) is the decoder's own; beyond it the
conversion may hold the RGB result (3 bytes a pixel) and a quarter of another, plus 4 MiB for
the allocator. Whole-image float64 copies, Pillow conversions and composites, or a transposed
copy next to the result, need two to eight results' worth.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

WIDTH, HEIGHT = 2500, 2000
SLACK = 4 << 20
STORED_BYTES = {"I;16": 2, "P": 1, "L": 1}  # bytes a pixel in Pillow's decoded image; 4 for the rest

MEASURE = r"""
import ctypes, gc, json, sys, types

# shared/__init__.py imports the model stack (torch): seconds of start-up, none of it measured here
package = types.ModuleType("shared")
package.__path__ = [sys.argv[1]]
sys.modules["shared"] = package
from shared.decode import decode_image

libc = ctypes.CDLL("libc.so.6")

def peak_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

results = {}
for name, path in zip(sys.argv[2::2], sys.argv[3::2]):
    data = open(path, "rb").read()
    decode_image(data)  # once first: codecs and caches loaded outside the measurement
    gc.collect()
    libc.malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # peak resident set := current
    before = peak_kib()
    out = decode_image(data)
    results[name] = {"extra": (peak_kib() - before) * 1024, "final": out.nbytes, "shape": list(out.shape)}
    del out
    gc.collect()
    libc.malloc_trim(0)
print(json.dumps(results))
"""


def gradient(bands: int) -> np.ndarray:
    """uint8 (HEIGHT, WIDTH, bands): smooth ramps, quick to make and to compress."""
    x = (np.arange(WIDTH) * 255 // WIDTH).astype(np.uint8)[None, :]
    y = (np.arange(HEIGHT) * 255 // HEIGHT).astype(np.uint8)[:, None]
    planes = [x, y, x // 2 + y // 2, (np.arange(WIDTH) % 256).astype(np.uint8)[None, :]]
    return np.stack([np.broadcast_to(plane, (HEIGHT, WIDTH)) for plane in planes[:bands]], axis=2)


def encoded(mode: str) -> bytes:
    buffer = io.BytesIO()
    if mode == "I;16":
        Image.fromarray((gradient(1)[:, :, 0].astype(np.uint16) * 257)).save(buffer, "PNG", compress_level=1)
    elif mode in ("I", "F"):
        values = gradient(1)[:, :, 0].astype(np.int32) * 257 if mode == "I" else gradient(1)[:, :, 0] / 255.0
        Image.fromarray(values.astype(np.int32 if mode == "I" else np.float32), mode).save(
            buffer, "TIFF", compression="tiff_adobe_deflate"
        )
    elif mode == "P":  # 64 colours, the first transparent
        palette = Image.fromarray(gradient(1)[:, :, 0] // 4, "P")
        palette.putpalette([channel for i in range(64) for channel in (i * 4, 255 - i * 4, 128)])
        palette.save(buffer, "PNG", transparency=0, compress_level=1)
    elif mode == "RGB-rotated":  # EXIF orientation 6: the result is the transpose
        exif = Image.Exif()
        exif[0x0112] = 6
        Image.fromarray(gradient(3)).save(buffer, "JPEG", exif=exif, quality=90)
    else:
        pixels = gradient(len(mode))
        Image.fromarray(pixels[:, :, 0] if mode == "L" else pixels, mode).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


MODES = ["I;16", "RGBA", "LA", "P", "I", "F", "RGB", "RGB-rotated", "L"]


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("memory")
    args = []
    for mode in MODES:
        path = folder / f"{mode.replace(';', '_')}.img"
        path.write_bytes(encoded(mode))
        args += [mode, str(path)]
    root = Path(__file__).resolve().parents[1]
    # every allocation over 256 KiB mapped and unmapped on its own, so the resident set follows the heap
    env = {**os.environ, "PYTHONPATH": str(root), "MALLOC_MMAP_THRESHOLD_": "262144", "MALLOC_TRIM_THRESHOLD_": "0"}
    command = [sys.executable, "-c", MEASURE, str(root / "shared"), *args]
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.process  # measured in a fresh Python
@pytest.mark.parametrize("mode", MODES)
def test_conversion_holds_little_more_than_the_result_beyond_the_decoded_image(measured, mode):
    result = measured[mode]
    final = result["final"]
    assert final == WIDTH * HEIGHT * 3
    assert result["shape"] == ([WIDTH, HEIGHT, 3] if mode == "RGB-rotated" else [HEIGHT, WIDTH, 3])
    decoded = WIDTH * HEIGHT * STORED_BYTES.get(mode, 4)
    conversion = result["extra"] - decoded
    assert conversion <= 1.25 * final + SLACK, (
        f"{mode}: {result['extra'] / 2**20:.0f} MiB extra peak, {decoded / 2**20:.0f} MiB of it the decoded image; "
        f"conversion {conversion / final:.1f}x the {final / 2**20:.0f} MiB result"
    )
