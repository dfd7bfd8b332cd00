"""What ``auto`` means, for the device a model will run on, the task it does and its workload.

``settle(model, device_type, workload) -> Settled`` is the one place ``auto`` becomes a value;
both paths call it at start-up, before any model is built:
the device is known from the reservation alone (``shared.devices.planned_device_type``: CUDA
exactly when the process reserves a GPU), so the driver of a backfill and a Serve deployment's
config can settle batch sizes without touching a GPU. Explicit values always win. The figures
behind these choices are in bench/RESULTS.md; the reasons are here.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from typing import Literal

from shared.config import ModelConfig
from shared.tasks import TASKS, Task

AUTO = "auto"
# A CPU has no batch-level parallelism to fill: past a few images per call a convolution's cost per
# image stops falling, and bigger batches only add latency and cache misses.
CPU_BATCH = 4
CPU_DETECT_BATCH = 1  # detection inputs differ in size: they run one by one inside the model anyway
# A GPU needs many images per kernel launch to be busy; latency-bound online batches stay smaller
# than a backfill's, which only cares for throughput.
CUDA_ONLINE_BATCH = 64
CUDA_BACKFILL_BATCH = 128
CUDA_DETECT_BATCH = 8
# Compiling costs seconds per batch size at start-up and pays back per image: a backfill of fewer
# images than this finishes sooner uncompiled.
COMPILE_PAYS_FROM_IMAGES = 1000
AUTO_COMPILE_ENV = "TWINFER_AUTO_COMPILE"  # "0": auto never compiles (tests, quick local runs)


def batch_size(task: Task, device_type: str, *, online: bool) -> int:
    """Images per model call (a backfill) or the most a batcher may gather (online)."""
    if not task.fixed_size:
        return CUDA_DETECT_BATCH if device_type == "cuda" else CPU_DETECT_BATCH
    if device_type == "cuda":
        return CUDA_ONLINE_BATCH if online else CUDA_BACKFILL_BATCH
    return CPU_BATCH


def compiles(task: Task, device_type: str, images: int | None = None) -> bool:
    """``compile: auto``. On a CPU torch.compile (inductor, frozen weights, static shapes) runs
    the model about twice as fast once warm, if a C++ compiler is there to build its kernels.
    On CUDA it stays off until measured there: eager CUDA with cuDNN autotune is the known quantity.
    ``images``: how many a backfill will run (None: a server, long-lived)."""
    if os.environ.get(AUTO_COMPILE_ENV, "1") == "0" or not task.fixed_size or device_type != "cpu":
        return False
    if images is not None and images < COMPILE_PAYS_FROM_IMAGES:
        return False
    return cxx_compiler() is not None


def cxx_compiler() -> str | None:
    return shutil.which(os.environ.get("CXX") or "g++") or shutil.which("c++") or shutil.which("clang++")


def backfill_threads(node_cpus: float, model_actors: int) -> int:
    """torch threads per model actor on a CPU. The model is the bottleneck and decode tasks need
    only a fraction of a core each, so the model actors share every core rather than only the
    CPUs they reserve (Ray would give an actor of 1 CPU a single thread)."""
    return max(1, int(node_cpus) // max(1, model_actors))


@dataclass(frozen=True)
class Workload:
    """What the model is run for: a server (``online``), or a backfill of ``images`` files whose
    ``actors`` share ``node_cpus`` cores (None: a remote cluster, where the reservation decides).
    ``batch_size``: the configured images per call (a backfill) or most per batch (a server)."""

    online: bool
    batch_size: int | Literal["auto"] = AUTO
    images: int | None = None
    node_cpus: float | None = None
    actors: int = 1


@dataclass(frozen=True)
class Settled:
    """Every choice ``auto`` makes, settled; explicit config values pass through unchanged."""

    device: str  # "cpu" or "cuda"
    batch_size: int
    compile: bool
    precision: str  # "fp32", "fp16" or "bf16"
    channels_last: bool
    cudnn_benchmark: bool
    decode_on_device: bool
    cpu_threads: int | Literal["auto"]  # auto: the threads Ray gives the process's CPU reservation


def settle(model: ModelConfig, device_type: str, workload: Workload) -> Settled:
    task = TASKS[model.resolved_task]
    if workload.batch_size != AUTO:
        batch = workload.batch_size
    else:
        batch = batch_size(task, device_type, online=workload.online)
    if model.compile != AUTO:
        compile_ = model.compile
    else:
        compile_ = compiles(task, device_type, None if workload.online else workload.images)
    threads = model.cpu_threads
    if threads == AUTO and not workload.online and device_type == "cpu" and workload.node_cpus:
        threads = backfill_threads(workload.node_cpus, workload.actors)
    if not task.fixed_size:
        precision = "fp32"  # torchvision's detection heads are fp32 code
    elif model.precision == AUTO:
        precision = "fp16" if device_type == "cuda" else "fp32"
    else:
        precision = model.precision
    return Settled(
        device=device_type,
        batch_size=batch,
        compile=compile_,
        precision=precision,
        channels_last=model.channels_last and task.fixed_size,  # pays on CPU too (bench/RESULTS.md)
        # autotuned per input shape, so only at the warmed (padded-to) sizes; detection sizes vary
        cudnn_benchmark=model.cudnn_benchmark and device_type == "cuda" and task.fixed_size,
        decode_on_device=model.decode.on_device and device_type == "cuda",
        cpu_threads=threads,
    )
