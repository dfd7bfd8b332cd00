"""``compile``: static shapes warmed before any request; every batch is padded or split to a
warmed size, so no user request ever compiles, and the answers equal the eager model's."""

import pytest
import torch
from pydantic import ValidationError

from shared import ModelConfig, ModelWrapper
from shared.wrapper import bucket_sizes
from twinfer.samples import SAMPLE_NAMES, encode, sample_array

pytestmark = pytest.mark.slow

PHOTOS = SAMPLE_NAMES


def test_bucket_sizes_cover_every_batch_a_batcher_may_send():
    assert bucket_sizes(1) == (1,)
    assert bucket_sizes(4) == (1, 2, 4)
    assert bucket_sizes(6) == (1, 2, 4, 6)
    assert bucket_sizes(64) == (1, 2, 4, 8, 16, 32, 64)


def test_compile_is_refused_for_detection():
    with pytest.raises(ValidationError, match="compile is for classification"):
        ModelConfig(name="fasterrcnn_v2", weights="random", compile=True)


@pytest.fixture(scope="module")
def compiled() -> ModelWrapper:
    wrapper = ModelWrapper(ModelConfig(compile=True), batch_sizes=(4,))
    assert wrapper.warmed_batch_sizes == (4,)
    wrapper.warmup((1, 4))  # adds 1 only
    return wrapper


def test_compiled_warmup_records_its_sizes(compiled):
    assert compiled.warmed_batch_sizes == (1, 4)


def test_a_compiled_model_with_no_warmed_size_refuses_to_compile_on_a_request():
    wrapper = ModelWrapper(ModelConfig(compile=True, weights="random"), batch_sizes=())
    item = wrapper.load(encode(sample_array("coffee")))
    with pytest.raises(RuntimeError, match="no warmed batch size"):
        wrapper.predict([item])


def test_compiled_answers_equal_eager_at_any_batch_size_without_recompiling(compiled, embedded_wrapper):
    items = [embedded_wrapper.load(encode(sample_array(name))) for name in PHOTOS]
    for n in (1, 2, 3, 4, 5, 9):  # padded to 1 or 4; 5 and 9 split at 4
        batch = (items * 2)[:n]
        with torch._dynamo.config.patch(error_on_recompile=True):
            got = compiled.predict(batch)
        want = embedded_wrapper.predict(batch)
        assert got.shape == want.shape == (n, 1000)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
        assert got.argmax(1).tolist() == want.argmax(1).tolist()


def test_an_unwarmed_shape_would_recompile(compiled):
    """The guard above can fail: a batch of 3 straight into the graph is a new shape."""
    pixels = compiled.load(encode(sample_array("coffee"))).pixels
    with torch._dynamo.config.patch(error_on_recompile=True), pytest.raises(Exception, match="[Rr]ecompil"):
        compiled._forward(compiled._batch_on_device([pixels] * 3))
