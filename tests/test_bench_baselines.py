"""The benchmark's baselines do the same job as twinfer: same model, same answers on clear photos."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from bench.baselines import BASELINES, pil_first_transform, seed_transform
from shared import ModelConfig
from twinfer.samples import encode, sample_array

PHOTOS = ("chelsea", "coffee", "rocket")


def test_the_seed_transform_is_totensor_then_the_weights_preset():
    """The seeds' Compose([ToTensor(), weights.transforms()]): a float32 tensor of the whole
    photo first, then the preset's antialiased float resize, crop and normalise."""
    from torchvision.transforms._presets import ImageClassification

    transform = seed_transform(ModelConfig())
    assert type(transform.transforms[1]) is ImageClassification
    photo = sample_array("coffee")
    out = transform(photo)
    assert out.dtype == torch.float32 and out.shape == (3, 224, 224)
    pil = pil_first_transform(ModelConfig())(__import__("PIL.Image").Image.fromarray(photo))
    assert pil.shape == out.shape and not torch.equal(pil, out)  # two different pipelines


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_baseline_batch_writes_one_row_per_image_with_twinfers_top1(name, ray_session, tmp_path, embedded_wrapper):
    source = tmp_path / "images"
    source.mkdir()
    for photo in PHOTOS:
        (source / f"{photo}.jpg").write_bytes(encode(sample_array(photo)))
    rows = BASELINES[name](str(source), str(tmp_path / "out"), ModelConfig(), actors=1, batch_size=2, num_gpus=0)
    assert rows == len(PHOTOS)
    table = pq.read_table(tmp_path / "out").to_pylist()
    got = {row["path"].rsplit("/", 1)[-1].removesuffix(".jpg"): int(np.asarray(row["top_indices"])[0]) for row in table}
    want = {photo: embedded_wrapper.classify_bytes(encode(sample_array(photo)), 1)[0]["index"] for photo in PHOTOS}
    assert got == want
