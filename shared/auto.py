"""What ``auto`` means, for the device a model will run on and the task it does.

Both paths resolve ``auto`` at start-up, from the same functions, before any model is built:
the device is known from the reservation alone (``shared.devices.planned_device_type``: CUDA
exactly when the process reserves a GPU), so the driver of a backfill and a Serve deployment's
config can settle batch sizes without touching a GPU. Explicit values always win. The figures
behind these choices are in bench/RESULTS.md; the reasons are here.
"""

from __future__ import annotations

import os
import shutil

from shared.tasks import Task

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
