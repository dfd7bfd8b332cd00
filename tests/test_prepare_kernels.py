"""shared.prepare's resize and centre crop are torchvision's tensor kernels, pixel for pixel, and a
process that serves or prepares with the embedded model never imports torchvision."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.prepare import center_crop, resize

ROOT = Path(__file__).resolve().parent.parent
MODES = {"bilinear": F.InterpolationMode.BILINEAR, "bicubic": F.InterpolationMode.BICUBIC}
sides = st.integers(1, 48)


def image(seed: int, height: int, width: int, channels_last: bool) -> torch.Tensor:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    if channels_last:  # what prepare_image hands over: an HWC array seen as CHW
        return torch.from_numpy(pixels).permute(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))


def outcome(call) -> torch.Tensor | str:
    try:
        return call()
    except RuntimeError as error:
        return f"RuntimeError: {str(error).splitlines()[0]}"


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    size=st.tuples(sides, sides),
    target=st.tuples(sides, sides),
    mode=st.sampled_from(sorted(MODES)),
    channels_last=st.booleans(),
    as_float=st.booleans(),
)
def test_resize_equals_torchvisions(seed, size, target, mode, channels_last, as_float):
    chw = image(seed, *size, channels_last)
    if as_float:
        chw = chw.float() / 255
    ours = outcome(lambda: resize(chw, target, mode))
    reference = outcome(lambda: F.resize(chw, list(target), interpolation=MODES[mode], antialias=True))
    if isinstance(reference, str):  # torch's uint8 kernel refuses a few contiguous CHW shapes (to 1 x 1)
        assert ours == reference
        return
    assert ours.dtype == reference.dtype and ours.shape == reference.shape
    assert torch.equal(ours, reference)
    assert ours.is_contiguous(memory_format=torch.channels_last) == reference.is_contiguous(
        memory_format=torch.channels_last
    )


@pytest.mark.parametrize("mode", sorted(MODES))
def test_resize_through_float_where_torch_has_no_uint8_kernel_equals_torchvisions(monkeypatch, mode):
    """A CPU without AVX2 (and a GPU) resizes uint8 through float32; both read the capability then."""
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
    for seed, size, target in [(1, (37, 23), (16, 30)), (2, (8, 40), (20, 5)), (3, (30, 30), (31, 29))]:
        chw = image(seed, *size, channels_last=True)
        ours = resize(chw, target, mode)
        reference = F.resize(chw, list(target), interpolation=MODES[mode], antialias=True)
        assert ours.dtype == torch.uint8 and torch.equal(ours, reference)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**16), size=st.tuples(sides, sides), crop=st.tuples(sides, sides))
def test_centre_crop_equals_torchvisions_padding_included(seed, size, crop):
    chw = image(seed, *size, channels_last=True)
    assert torch.equal(center_crop(chw, crop), F.center_crop(chw, list(crop)))


def test_an_images_size_already_at_the_target_is_returned_as_it_is():
    chw = image(0, 12, 9, channels_last=True)
    assert resize(chw, (12, 9), "bilinear") is chw


@pytest.mark.process
def test_the_ingress_and_the_embedded_model_run_without_importing_torchvision():
    """The serving and preparing half of a replica: import the ingress, build the embedded model,
    classify a JPEG."""
    script = (
        "import sys\n"
        "import deployments.app\n"
        "from shared import ModelConfig, ModelWrapper\n"
        "from tests.images import small_jpeg\n"
        "labels = [p['label'] for p in ModelWrapper(ModelConfig()).classify_bytes(small_jpeg('coffee'))]\n"
        "print(labels[0], sorted(m for m in sys.modules if m.split('.')[0] == 'torchvision'))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["espresso", "[]"], done.stdout
