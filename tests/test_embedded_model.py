"""The embedded EfficientNet-Lite0 on scikit-image's sample photos: real weights, real answers."""

import numpy as np
import pytest
import torch

from shared.prepare import Prepared
from twinfer.samples import encode, sample_array

CATS = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = {967}
MISSILE_OR_PROJECTILE = {657, 744}


@pytest.mark.parametrize("name, expected", [("chelsea", CATS), ("coffee", ESPRESSO), ("rocket", MISSILE_OR_PROJECTILE)])
def test_sample_photo_top5(embedded_wrapper, name, expected):
    predictions = embedded_wrapper.classify_bytes(encode(sample_array(name)), top_k=5)
    assert len(predictions) == 5
    assert expected & {p["index"] for p in predictions}, predictions
    assert predictions[0]["index"] in expected  # and it is the top answer
    scores = [p["score"] for p in predictions]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0 + 1e-6
    assert predictions[0]["label"] == embedded_wrapper.labels[predictions[0]["index"]]


def test_png_and_jpeg_of_the_same_photo_agree(embedded_wrapper):
    array = sample_array("coffee")
    assert embedded_wrapper.classify_bytes(encode(array, "PNG"))[0]["label"] == "espresso"
    assert embedded_wrapper.classify_bytes(encode(array, "WEBP"))[0]["label"] == "espresso"


def test_batch_answer_equals_single_answers(embedded_wrapper):
    items = [embedded_wrapper.load(encode(sample_array(n))) for n in ("chelsea", "coffee", "rocket")]
    batched = embedded_wrapper.predict_batch(items, [{"top_k": 3}, {"top_k": 1}, {"top_k": 5}])
    assert [len(r) for r in batched] == [3, 1, 5]
    for item, result in zip(items, batched):
        single = embedded_wrapper.predict_batch([item], [{"top_k": len(result)}])[0]
        assert [p["index"] for p in single] == [p["index"] for p in result]
        assert np.allclose([p["score"] for p in single], [p["score"] for p in result], atol=1e-5)


def test_prepare_gives_uint8_at_model_size(embedded_wrapper):
    prepared = embedded_wrapper.load(encode(sample_array("rocket")))
    assert isinstance(prepared, Prepared)
    assert prepared.pixels.dtype == np.uint8 and prepared.pixels.shape == (3, 224, 224)
    assert prepared.original_size == sample_array("rocket").shape[:2]


def test_normalisation_on_device_matches_reference(embedded_wrapper):
    """uint8 -> x*scale+shift equals the textbook (x/255 - mean)/std."""
    pixels = np.random.default_rng(0).integers(0, 256, (1, 3, 8, 8), dtype=np.uint8)
    spec = embedded_wrapper.spec.preprocess
    reference = (torch.from_numpy(pixels) / 255.0 - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(
        spec.std
    ).view(1, 3, 1, 1)
    runner = embedded_wrapper.runner
    fused = torch.addcmul(runner.shift, torch.from_numpy(pixels).float(), runner.scale)
    assert torch.allclose(fused, reference, atol=1e-5)
