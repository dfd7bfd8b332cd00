"""``compile``: static shapes warmed before any request; every batch is padded or split to a
warmed size, so no user request ever compiles, and the answers equal the eager model's."""

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from pydantic import ValidationError

from shared import ModelConfig, ModelWrapper, torch_process
from shared.runner import bucket_sizes
from tests import images
from tests.tiny_models import register_tiny
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
def tiny():
    """The test-only tiny classifier, compiled by inductor (the real backend) at 4, then at 1 as well,
    and the same model eager."""
    with pytest.MonkeyPatch.context() as patch:
        name = register_tiny(patch)
        wrapper = ModelWrapper(ModelConfig(name=name, weights="random", compile=True), batch_sizes=(4,))
        assert wrapper.warmed_batch_sizes == (4,)
        wrapper.warmup((1, 4))  # adds 1 only
        yield wrapper, ModelWrapper(ModelConfig(name=name, weights="random", compile=False))


@pytest.fixture(scope="module")
def compiled(tiny) -> ModelWrapper:
    return tiny[0]


def test_compiled_warmup_records_its_sizes(compiled):
    assert compiled.warmed_batch_sizes == (1, 4)


def test_a_compiled_model_with_no_warmed_size_refuses_to_compile_on_a_request():
    wrapper = ModelWrapper(ModelConfig(compile=True, weights="random"), batch_sizes=())
    item = wrapper.load(encode(sample_array("coffee")))
    with pytest.raises(RuntimeError, match="no warmed batch size"):
        wrapper.predict([item])


def test_compiled_answers_equal_eager_at_any_batch_size_without_recompiling(tiny):
    compiled, eager = tiny
    items = [eager.load(encode(sample_array(name))) for name in PHOTOS]
    for n in (1, 2, 3, 4, 5, 9):  # padded to 1 or 4; 5 and 9 split at 4
        batch = (items * 2)[:n]
        with torch._dynamo.config.patch(error_on_recompile=True):
            got = compiled.predict(batch)
        want = eager.predict(batch)
        assert got.shape == want.shape == (n, 1000)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
        assert got.argmax(1).tolist() == want.argmax(1).tolist()


def test_the_embedded_model_compiled_as_a_cpu_server_runs_it_answers_as_eager(embedded_wrapper):
    """What ``compile: auto`` gives a CPU server: the embedded model through inductor, warmed at 2;
    a batch of 1 is padded to it."""
    compiled = ModelWrapper(ModelConfig(compile=True), batch_sizes=(2,))
    items = [embedded_wrapper.load(encode(sample_array(name))) for name in PHOTOS[:2]]
    for batch in (items[:1], items):
        with torch._dynamo.config.patch(error_on_recompile=True):
            got = compiled.predict(batch)
        want = embedded_wrapper.predict(batch)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
        assert got.argmax(1).tolist() == want.argmax(1).tolist()


def test_an_unwarmed_shape_would_recompile(compiled):
    """The guard above can fail: a batch of 3 straight into the graph is a new shape."""
    pixels = compiled.load(encode(sample_array("coffee"))).pixels
    with torch._dynamo.config.patch(error_on_recompile=True), pytest.raises(Exception, match="[Rr]ecompil"):
        compiled.runner.forward(compiled.runner.batch_on_device([pixels] * 3))


def locked_backend(held: list):
    """A compile backend that runs the traced graph as it is, noting whether ``COMPILED_CALLS`` is held."""

    def backend(gm, example_inputs):
        def run(*args):
            held.append(torch_process.COMPILED_CALLS.locked())
            return gm.forward(*args)

        return run

    return backend


def test_compiled_calls_hold_the_process_lock_and_eager_calls_do_not(monkeypatch):
    """Two threads in one compiled frame race in dynamo's guard and recompile path: every call of
    a compiled model holds ``torch_process.COMPILED_CALLS``; an eager model never takes it."""
    name = register_tiny(monkeypatch)
    held: list[bool] = []
    monkeypatch.setattr(torch_process, "COMPILE_BACKEND", locked_backend(held))
    compiled = ModelWrapper(ModelConfig(name=name, weights="random", compile=True), batch_sizes=(1, 4))
    eager = ModelWrapper(ModelConfig(name=name, weights="random", compile=False))
    eager_held: list[bool] = []
    eager.model.register_forward_pre_hook(lambda module, args: eager_held.append(torch_process.COMPILED_CALLS.locked()))
    item = compiled.load(images.small_jpeg())
    held.clear()  # the warm-up's calls
    for n in (1, 3, 4, 6):  # 6 is split into 4 + 2 (padded to 4): two calls
        compiled.predict_batch([item] * n)
    assert held == [True] * 5 and not torch_process.COMPILED_CALLS.locked()
    eager.predict_batch([item] * 2)
    assert eager_held == [False]


def test_concurrent_calls_of_a_compiled_model_all_answer_as_eager(monkeypatch):
    name = register_tiny(monkeypatch)
    monkeypatch.setattr(torch_process, "COMPILE_BACKEND", locked_backend([]))
    compiled = ModelWrapper(ModelConfig(name=name, weights="random", compile=True), batch_sizes=bucket_sizes(8))
    eager = ModelWrapper(ModelConfig(name=name, weights="random", compile=False))
    items = [compiled.load(encode(sample_array(photo))) for photo in PHOTOS]
    sizes = [1 + i % 8 for i in range(48)]
    want = {n: eager.predict((items * 8)[:n]) for n in set(sizes)}
    errors: list[BaseException] = []
    got: dict[int, list[torch.Tensor]] = {n: [] for n in want}

    def call(n: int) -> None:
        try:
            got[n].append(compiled.predict((items * 8)[:n]))
        except BaseException as exc:  # noqa: BLE001 - every failure is reported below
            errors.append(exc)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(call, sizes))
    assert errors == []
    assert sum(len(v) for v in got.values()) == len(sizes)
    for n, outputs in got.items():
        for out in outputs:
            torch.testing.assert_close(out, want[n], atol=1e-5, rtol=0)
