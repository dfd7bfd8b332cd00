"""What would break on the first CUDA run, proven on the CPU: device placement under Ray,
dynamo's graph limit, compiling while batches run, health of the device, nvJPEG routing and
bisection, padding for cuDNN autotune, and top-k on the device."""

from __future__ import annotations

import copy
import io
import threading
import time

import numpy as np
import pytest
import ray
import torch
import yaml
from PIL import Image

import shared.torch_process
import shared.wrapper
from deployments.model_server import ModelServer
from shared import ImageLoader, ModelConfig, ModelWrapper, device_decode
from shared.device_decode import (
    CUDA_DECODE_LOCK,
    DeviceDecoder,
    Encoded,
    decode_jpegs,
    encoded_if_device_decodable,
)
from shared.devices import CudaUnusable, ray_assigned_gpus, resolve_device
from shared.errors import InvalidImage
from shared.prepare import Prepared
from shared.runner import bucket_sizes
from tests import images
from tests.test_device_decode import ON_DEVICE, bogus_huffman_jpeg
from tests.tiny_models import register_tiny
from twinfer.samples import encode, sample_array


# ---- 1. device placement ---------------------------------------------------------------------
def test_auto_follows_the_ray_reservation_not_what_torch_can_see(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU is visible to the process
    assert resolve_device("auto", []) == torch.device("cpu")  # a Ray worker that reserved none
    assert resolve_device("auto", None) == torch.device("cuda")  # outside Ray, what torch sees decides
    with pytest.raises(CudaUnusable, match="reserved no GPU"):
        resolve_device("cuda", [])


def test_a_reserved_gpu_that_torch_cannot_use_fails_with_the_reason(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(CudaUnusable, match=r"Ray reserved GPU\(s\) 0 .*torch cannot use CUDA.*driver"):
        resolve_device("auto", ["0"])
    assert resolve_device("auto", None) == torch.device("cpu")


@ray.remote(num_cpus=0.5, num_gpus=0)
class WrapperInRay:
    def device_with_a_visible_gpu(self) -> tuple[list | None, str]:
        torch.cuda.is_available = lambda: True  # as on a GPU node, where Ray no longer hides the GPU
        wrapper = ModelWrapper(ModelConfig(weights="random"))
        return ray_assigned_gpus(), str(wrapper.device)


def test_a_ray_worker_without_a_gpu_reservation_runs_auto_on_the_cpu(ray_session):
    actor = WrapperInRay.remote()
    try:
        assert ray.get(actor.device_with_a_visible_gpu.remote(), timeout=300) == ([], "cpu")
    finally:
        ray.kill(actor)
    assert ray_assigned_gpus() is None  # the test process is a driver: no reservation to follow


# ---- 2. dynamo's graph limit -------------------------------------------------------------------
def counting_backend(graphs: list):
    def backend(gm, example_inputs):
        graphs.append(tuple(example_inputs[0].shape) if example_inputs else ())
        return gm.forward

    return backend


def test_more_warmed_sizes_than_dynamos_default_limit_all_run_compiled(monkeypatch):
    name = register_tiny(monkeypatch)
    graphs: list = []
    monkeypatch.setattr(shared.torch_process, "COMPILE_BACKEND", counting_backend(graphs))
    sizes = bucket_sizes(256)
    assert len(sizes) > 8  # dynamo's default recompile_limit
    wrapper = ModelWrapper(ModelConfig(name=name, weights="random", compile=True), batch_sizes=sizes)
    assert len(graphs) == len(sizes)  # one graph per size: none fell back to eager
    item = wrapper.load(images.small_jpeg())
    for n in sizes:  # every size runs its graph; a compile now would be an error
        assert wrapper.predict([item] * n).shape == (n, 1000)
    assert len(graphs) == len(sizes)


# ---- 3. live reconfigure compiles alone -------------------------------------------------------
def test_reconfigure_never_compiles_while_batches_run(monkeypatch):
    name = register_tiny(monkeypatch)
    compiling = threading.Event()
    compile_threads: list[int] = []

    def slow_backend(gm, example_inputs):
        compiling.set()
        compile_threads.append(threading.get_ident())
        time.sleep(0.2)  # widens the window a concurrent batch would fall into
        compiling.clear()
        return gm.forward

    monkeypatch.setattr(shared.torch_process, "COMPILE_BACKEND", slow_backend)
    server = ModelServer({"name": name, "weights": "random", "compile": True}, max_ongoing_requests=64)
    server.reconfigure({"max_batch_size": 1, "max_concurrent_batches": 1})
    item = server.wrapper.load(images.small_jpeg("coffee"))
    (expected,) = server.run_batch([item], [{"top_k": 3}])

    real_forward = server.wrapper.runner.forward
    overlapped, answers = [], []

    def watched_forward(x):
        overlapped.append(compiling.is_set())
        out = real_forward(x)
        overlapped.append(compiling.is_set())
        return out

    monkeypatch.setattr(server.wrapper.runner, "forward", watched_forward)
    stop = threading.Event()

    def client():
        while not stop.is_set():
            answers.extend(server.run_batch([item], [{"top_k": 3}]))

    clients = [threading.Thread(target=client) for _ in range(2)]
    for thread in clients:
        thread.start()
    while len(answers) < 4:  # batches are running
        time.sleep(0.01)
    compiles_before = len(compile_threads)
    server.reconfigure({"max_batch_size": 8})  # warms 2, 4 and 8: three compiles
    settled = len(answers)
    while len(answers) < settled + 4:  # and batches run again afterwards
        time.sleep(0.01)
    stop.set()
    for thread in clients:
        thread.join(timeout=60)
    assert len(compile_threads) - compiles_before == 3
    assert set(compile_threads) == {threading.get_ident()}  # every compile on the reconfiguring thread
    assert not any(overlapped)  # no batch ran while a compile was in progress
    assert all(answer == expected for answer in answers)


# ---- 4. health of the device ------------------------------------------------------------------
def test_check_health_fails_when_the_device_does(monkeypatch):
    server = ModelServer({"name": "efficientnet_lite0", "weights": "random"}, max_ongoing_requests=8)
    server.check_health()

    def poisoned(device):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(shared.wrapper, "device_probe", poisoned)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        server.check_health()


# ---- 5. nvJPEG's slow paths stay on CPU workers; failed batches are bisected -------------------
def jpeg_with(**save_kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(images.small_photo("coffee", 64)).save(buffer, "JPEG", **save_kwargs)
    return buffer.getvalue()


def grayscale_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(sample_array("camera")[:50, :70]).save(buffer, "JPEG")  # mode L
    return buffer.getvalue()


def with_sampling_factors(data: bytes, luma: int) -> bytes:
    """The JPEG with its luma sampling factors byte set (0x41 = 4:1:1, which nvJPEG's batched decoder lacks)."""
    out = bytearray(data)
    sof = out.index(b"\xff\xc0")
    out[sof + 11] = luma  # SOF0: length(2) precision(1) height(2) width(2) count(1), then id, factors
    return bytes(out)


def test_jpegs_nvjpeg_would_decode_on_the_host_take_the_cpu_path():
    loader = ImageLoader(ON_DEVICE)
    assert isinstance(loader.load(jpeg_with(quality=90)), Encoded)  # baseline 4:2:0 colour: the GPU's
    for data in (
        jpeg_with(quality=90, progressive=True),
        grayscale_jpeg(),
    ):
        item = loader.load(data)
        assert isinstance(item, Prepared) and item.pixels.shape == (3, 224, 224)
    odd = with_sampling_factors(jpeg_with(quality=90, subsampling=0), 0x41)
    assert encoded_if_device_decodable(Image.open(io.BytesIO(odd)), odd) is None


def test_a_failed_batched_decode_is_bisected(monkeypatch):
    import torchvision.io

    real = torchvision.io.decode_jpeg
    calls = []

    def counting(inputs, **kwargs):
        calls.append(len(inputs) if isinstance(inputs, list) else 1)
        return real(inputs, **kwargs)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", counting)
    loader = ImageLoader(ON_DEVICE)
    good = loader.load(jpeg_with(quality=90))
    items = [good] * 8
    items[5] = loader.load(bogus_huffman_jpeg())
    decoded = decode_jpegs(items, torch.device("cpu"))
    assert [isinstance(d, InvalidImage) for d in decoded] == [i == 5 for i in range(8)]
    # depth first: [0-3] good, [4-7] bad, [4, 5] bad, [4] good, [5] bad, [6, 7] good; not 1 + 8 calls
    assert calls == [8, 4, 4, 2, 1, 1, 2]


def test_the_cpu_fallback_runs_after_the_device_lock_is_released(embedded_wrapper, monkeypatch):
    monkeypatch.setattr(device_decode, "DECODING_ON_DEVICE", threading.Event())
    held_during_fallback = []

    def rejected_by_the_device(chunk, device):
        return [InvalidImage("simulated nvJPEG reject")] * len(chunk)

    def cpu_decode(data):
        held_during_fallback.append(CUDA_DECODE_LOCK.locked())
        return embedded_wrapper.loader.decode_and_prepare(data)

    on_cuda = copy.copy(embedded_wrapper)
    # only the lock choice and the decoder see CUDA; the model runs on the CPU
    on_cuda.decoder = DeviceDecoder(torch.device("cuda"), embedded_wrapper.spec.preprocess, cpu_decode, False)
    monkeypatch.setattr(device_decode, "decode_jpegs", rejected_by_the_device)
    data = encode(sample_array("coffee"))
    results = on_cuda.predict_batch([ImageLoader(ON_DEVICE).load(data)], [{"top_k": 1}])
    assert held_during_fallback == [False]
    assert results[0][0]["label"] == "espresso"


# ---- 6. eager CUDA batches run at warmed sizes (cuDNN autotunes per shape) ----------------------
def test_eager_cuda_batches_are_padded_to_warmed_sizes(monkeypatch):
    name = register_tiny(monkeypatch)
    wrapper = ModelWrapper(ModelConfig(name=name, weights="random"))
    assert not wrapper.pads_batches  # eager on the CPU: nothing to autotune, no padding
    runner = copy.copy(wrapper.runner)
    runner.device = torch.device("cuda")
    runner.warmed_batch_sizes = (1, 4)
    on_cuda = copy.copy(wrapper)
    on_cuda.runner = runner
    assert on_cuda.pads_batches
    shapes = []
    real_forward = wrapper.runner.forward
    monkeypatch.setattr(runner, "stack_to_device", lambda pixels: torch.from_numpy(np.stack(pixels)))
    monkeypatch.setattr(runner, "forward", lambda x: shapes.append(len(x)) or real_forward(x))
    item = wrapper.load(images.small_jpeg())
    assert on_cuda.predict([item] * 3).shape == (3, 1000)
    assert shapes == [4]
    assert ModelConfig().cudnn_benchmark and not ModelConfig(cudnn_benchmark=False).cudnn_benchmark


# ---- 8. only the top k cross to the host ----------------------------------------------------------
def test_top_k_on_the_device_gives_the_full_probabilities_answers(embedded_wrapper):
    items = [embedded_wrapper.load(encode(sample_array(name))) for name in ("chelsea", "coffee", "rocket")]
    params = [{"top_k": 1}, {"top_k": 7}, {}]
    scores, indices = embedded_wrapper.predict_reduced(items, params)
    assert scores.shape == indices.shape == (3, 7)  # the batch's largest k, not 1000 classes
    reduced = embedded_wrapper.predict_batch(items, params)
    full = embedded_wrapper.postprocess(embedded_wrapper.predict(items), items, params)
    assert [len(r) for r in reduced] == [1, 7, 5]
    for got, want in zip(reduced, full):
        assert [p["index"] for p in got] == [p["index"] for p in want]
        assert [p["score"] for p in got] == pytest.approx([p["score"] for p in want], abs=1e-6)


# ---- 7. a GPU profile whose models fit one GPU together --------------------------------------------
def test_the_gpu_profile_validates_and_fits_one_gpu_and_sixteen_cores():
    from pathlib import Path

    from deployments.config import AppArgs

    config = yaml.safe_load((Path(__file__).resolve().parent.parent / "serve_config.gpu.yaml").read_text())
    (app,) = config["applications"]
    args = AppArgs.model_validate(app["args"])
    models = args.models  # enabled or not: enabling them all must still fit
    assert sum(m.num_gpus for m in models) <= 1.0
    for entry in models:
        assert entry.num_gpus > 0 and entry.model.device == "cuda"
        assert entry.batching.max_batch_size >= 8
    efficientnet = next(m for m in models if m.model.name == "efficientnet_lite0")
    assert efficientnet.enabled and efficientnet.batching.max_batch_size == 64
    cpus = args.ingress.most_replicas * args.ingress.num_cpus + sum(m.most_replicas * m.num_cpus for m in models)
    assert args.ingress.most_replicas > 1 and cpus <= 16
