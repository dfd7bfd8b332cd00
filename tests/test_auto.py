"""``auto`` settles batch size, compile and torch threads from the device the model will run on
(known from the reservation alone) and the task; explicit values always win."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from batch.config import BackfillConfig
from deployments.config import ModelDeploymentConfig
from deployments.model_server import ModelServer
from shared import ModelConfig, auto
from shared.tasks import ClassifyTask, DetectTask, EmbedTask

LABELS = ("a", "b")


@pytest.mark.parametrize(
    "task, device, online, expected",
    [
        (ClassifyTask(LABELS), "cpu", False, auto.CPU_BATCH),
        (EmbedTask(LABELS), "cpu", True, auto.CPU_BATCH),
        (ClassifyTask(LABELS), "cuda", True, auto.CUDA_ONLINE_BATCH),
        (ClassifyTask(LABELS), "cuda", False, auto.CUDA_BACKFILL_BATCH),
        (DetectTask(LABELS), "cpu", False, auto.CPU_DETECT_BATCH),
        (DetectTask(LABELS), "cuda", True, auto.CUDA_DETECT_BATCH),
    ],
)
def test_auto_batch_size_follows_device_task_and_path(task, device, online, expected):
    assert auto.batch_size(task, device, online=online) == expected


def test_auto_compile_is_on_for_a_cpu_with_a_compiler_and_a_job_that_pays(monkeypatch):
    monkeypatch.setenv(auto.AUTO_COMPILE_ENV, "1")
    classify = ClassifyTask(LABELS)
    assert auto.compiles(classify, "cpu") is (auto.cxx_compiler() is not None)
    assert (
        auto.compiles(classify, "cpu", images=auto.COMPILE_PAYS_FROM_IMAGES - 1) is False
    )  # start-up would not pay back
    assert auto.compiles(classify, "cuda") is False  # unmeasured on a GPU: eager + cuDNN autotune
    assert auto.compiles(DetectTask(LABELS), "cpu") is False  # inputs of any size
    monkeypatch.setenv(auto.AUTO_COMPILE_ENV, "0")
    assert auto.compiles(classify, "cpu") is False
    monkeypatch.setenv(auto.AUTO_COMPILE_ENV, "1")
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    monkeypatch.setattr(auto.shutil, "which", lambda name: None)
    assert auto.compiles(classify, "cpu") is False  # no compiler: inductor could not build kernels


def test_a_cpu_backfill_resolves_every_auto_for_its_cores_and_size(monkeypatch):
    monkeypatch.setenv(auto.AUTO_COMPILE_ENV, "1")
    monkeypatch.setattr(auto, "cxx_compiler", lambda: "/usr/bin/g++")
    config = BackfillConfig(input="/in", output="/out", actor_pool_size=1)
    big = config.resolved(images=5000, node_cpus=2)
    assert (big.batch_size, big.model.compile, big.model.cpu_threads) == (auto.CPU_BATCH, True, 2)
    small = config.resolved(images=10, node_cpus=2)
    assert small.model.compile is False
    assert config.resolved(images=5000, node_cpus=8).model.cpu_threads == 8
    assert BackfillConfig(input="/in", output="/out", actor_pool_size=2).resolved(5000, 8).model.cpu_threads == 4
    assert big.settings() == {"device": "cpu", "batch_size": 4, "compile": True, "cpu_threads": 2, "actors": 1}


def test_a_gpu_backfill_resolves_auto_from_its_reservation():
    config = BackfillConfig(input="/in", output="/out", num_gpus_per_actor=1).resolved(images=40_000, node_cpus=16)
    assert config.device_type == "cuda" and config.batch_size == auto.CUDA_BACKFILL_BATCH
    assert config.model.compile is False and config.model.cpu_threads == "auto"  # threads: Ray's, unused on CUDA


def test_explicit_values_win_over_auto():
    config = BackfillConfig(
        input="/in", output="/out", batch_size=16, model=ModelConfig(compile=False, cpu_threads=1)
    ).resolved(images=40_000, node_cpus=8)
    assert (config.batch_size, config.model.compile, config.model.cpu_threads) == (16, False, 1)


def test_serve_auto_batching_is_settled_from_num_gpus_and_checked_resolved():
    cpu = ModelDeploymentConfig()
    assert cpu.batching.max_batch_size == "auto" and cpu.resolved_batching.max_batch_size == auto.CPU_BATCH
    gpu = ModelDeploymentConfig(num_gpus=1, max_ongoing_requests=256)
    assert gpu.resolved_batching.max_batch_size == auto.CUDA_ONLINE_BATCH
    with pytest.raises(ValidationError, match="batches can never fill"):  # 64 x 2 concurrent > 100
        ModelDeploymentConfig(num_gpus=1, max_ongoing_requests=100)


def test_a_replica_settles_auto_in_reconfigure():
    server = ModelServer({"name": "efficientnet_lite0", "weights": "random"}, max_ongoing_requests=32)
    server.reconfigure({"max_batch_size": "auto", "max_concurrent_batches": 1})
    assert server.batching.max_batch_size == auto.CPU_BATCH
    assert server.wrapper.compiled is False  # TWINFER_AUTO_COMPILE=0 in the tests


def test_settle_gives_every_choice_for_device_task_and_workload(monkeypatch):
    monkeypatch.setenv(auto.AUTO_COMPILE_ENV, "1")
    monkeypatch.setattr(auto, "cxx_compiler", lambda: "/usr/bin/g++")
    server = auto.Workload(online=True)
    on_gpu = auto.settle(ModelConfig(), "cuda", server)
    assert on_gpu == auto.Settled(
        device="cuda",
        batch_size=auto.CUDA_ONLINE_BATCH,
        compile=False,
        precision="fp16",
        channels_last=True,
        cudnn_benchmark=True,
        decode_on_device=False,
        cpu_threads="auto",
    )
    detector = auto.settle(ModelConfig(name="fasterrcnn_v2", weights="random"), "cuda", server)
    assert (detector.batch_size, detector.precision, detector.channels_last, detector.cudnn_benchmark) == (
        auto.CUDA_DETECT_BATCH,
        "fp32",  # torchvision's detection heads are fp32 code
        False,
        False,
    )
    backfill = auto.settle(ModelConfig(), "cpu", auto.Workload(online=False, images=5000, node_cpus=8, actors=2))
    assert (backfill.batch_size, backfill.compile, backfill.precision, backfill.cpu_threads) == (4, True, "fp32", 4)
    explicit = ModelConfig(precision="bf16", compile=False, cpu_threads=3, channels_last=False)
    chosen = auto.settle(explicit, "cpu", auto.Workload(online=False, batch_size=16, images=5000, node_cpus=8))
    assert (chosen.batch_size, chosen.compile, chosen.precision, chosen.cpu_threads, chosen.channels_last) == (
        16,
        False,
        "bf16",
        3,
        False,
    )
    # the Serve replica reports what settle gave it (/v1/models)
    monkeypatch.setenv(auto.AUTO_COMPILE_ENV, "0")  # no compiled model built here
    replica = ModelServer({"name": "efficientnet_lite0", "weights": "random"}, max_ongoing_requests=32)
    assert replica.settled == auto.settle(replica.config, "cpu", auto.Workload(online=True))
