"""Every preprocessing mode's resize needs little memory beyond the decoded image, whatever its aspect.

1 x N and N x 1 images at a pixel cap of 4 M are prepared for each preprocessing mode the registry
uses, in a fresh interpreter (as ``test_decode_memory.py`` measures): the rise of the peak resident
set over ``prepare_image`` may be at most twice the decoded RGB array, plus 8 MiB for torch's
allocator. A resize that holds its intermediate at the input's height times the output's width
(hundreds of times the image for a column squashed to a square), or filter weights for every input
pixel of a long side, needs far more. The same holds through ``ImageLoader.load`` from a PNG.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.prepare import PreprocessSpec
from shared.registry import get_spec, list_models

CAP = 4_000_000
SLACK = 8 << 20
ROOT = Path(__file__).resolve().parents[1]

MEASURE = r"""
import ctypes, gc, json, sys
import numpy as np
from shared.prepare import prepare_image
from shared.registry import get_spec
from shared import ImageLoader, ModelConfig

libc = ctypes.CDLL("libc.so.6")

def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

def measured(work):
    work()  # once first: torch's kernels and caches loaded outside the measurement
    gc.collect()
    libc.malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # peak resident set := current
    before = peak()
    out = work()
    extra = peak() - before
    del out
    return extra

results = {}
for name, height, width in json.loads(sys.argv[1]):
    spec = get_spec(name).preprocess
    image = np.full((height, width, 3), 128, np.uint8)
    extra = measured(lambda: prepare_image(image, spec))
    results[f"{name} {height}x{width}"] = {"extra": extra, "decoded": image.nbytes}
    del image
for name, path in json.loads(sys.argv[2]):
    loader = ImageLoader(ModelConfig(name=name, weights="random", decode={"max_pixels": 4_000_000}))
    data = open(path, "rb").read()
    extra = measured(lambda: loader.load(data))
    results[f"load {name} {path.rsplit('/', 1)[-1]}"] = {"extra": extra, "decoded": 3 * 4_000_000}
print(json.dumps(results))
"""


def modes() -> dict[str, str]:
    """One short-named model per preprocessing mode; the registry must use every mode there is."""
    found = {}
    for name in list_models():
        found.setdefault(get_spec(name).preprocess.mode, name)
    assert set(found) == set(typing.get_args(typing.get_type_hints(PreprocessSpec)["mode"]))
    return found


SHAPES = [(1, CAP), (CAP, 1)]


def png(height: int, width: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (120, 130, 140)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> dict:
    cases = [(name, h, w) for name in modes().values() for h, w in SHAPES]
    files = []
    folder = tmp_path_factory.mktemp("strips")
    for h, w in SHAPES:
        path = folder / f"{h}x{w}.png"
        path.write_bytes(png(h, w))
        files += [(name, str(path)) for name in modes().values()]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MALLOC_MMAP_THRESHOLD_": "262144", "MALLOC_TRIM_THRESHOLD_": "0"}
    command = [sys.executable, "-c", MEASURE, json.dumps(cases), json.dumps(files)]
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.process  # measured in a fresh Python
@pytest.mark.parametrize("shape", SHAPES, ids=["1xN", "Nx1"])
@pytest.mark.parametrize("mode", sorted(modes()))
def test_each_mode_prepares_a_strip_at_the_cap_in_little_more_than_its_pixels(measured, mode, shape):
    result = measured[f"{modes()[mode]} {shape[0]}x{shape[1]}"]
    assert result["extra"] <= 2 * result["decoded"] + SLACK, (
        f"{mode} {shape}: {result['extra'] / 2**20:.0f} MiB extra peak for a {result['decoded'] / 2**20:.0f} MiB image"
    )


@pytest.mark.process  # measured in a fresh Python
@pytest.mark.parametrize("shape", SHAPES, ids=["1xN", "Nx1"])
@pytest.mark.parametrize("mode", sorted(modes()))
def test_loading_a_strip_png_stays_within_the_decoders_image_and_two_more(measured, mode, shape):
    """Pillow's own image (4 bytes a pixel, and 8 a row for its row table: a 1-pixel-wide column's
    table is twice its pixels), the RGB result, and the resize's 2 x: nothing more."""
    height, width = shape
    pillow = 4 * height * width + 8 * height
    result = measured[f"load {modes()[mode]} {height}x{width}.png"]
    allowed = pillow + 3 * result["decoded"] + SLACK
    assert result["extra"] <= allowed, f"{result['extra'] / 2**20:.0f} MiB, allowed {allowed / 2**20:.0f} MiB"


def test_a_squashed_strip_keeps_its_content():
    """The block means before the resize keep what the strip shows: a left-to-right ramp stays one.
    (``resize_crop`` keeps the strip's centre, by design.)"""
    from shared.prepare import prepare_image

    ramp = np.broadcast_to(np.linspace(0, 255, CAP).astype(np.uint8)[None, :, None], (1, CAP, 3)).copy()
    for mode, name in modes().items():
        if mode == "resize_crop":
            continue
        spec = get_spec(name).preprocess
        out = prepare_image(ramp, spec).pixels
        row = out[0, out.shape[1] // 2].astype(int)
        assert out.shape[0] == 3 and np.all(np.diff(row) >= 0) and row[-1] - row[0] > 200, (name, out.shape)
