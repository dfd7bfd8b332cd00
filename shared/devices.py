"""Which device a model runs on. Inside Ray, ``auto`` follows the process's GPU reservation.

Ray 2.60 no longer hides GPUs from workers that reserved none: it leaves ``CUDA_VISIBLE_DEVICES``
alone when ``num_gpus`` is 0 (ray#54868). So "torch can see a GPU" does not mean "this process
may use one". In a Ray worker (a Serve replica, a Ray Data actor), ``auto`` is CUDA exactly when
Ray assigned the worker a GPU. Outside Ray (a script, the demo's direct wrapper) it is CUDA
when torch sees one.

A GPU that was reserved but that torch cannot use fails at start-up, with the reason. That
happens with a driver older than torch's CUDA build, or with a CPU-only torch. The process
never silently runs fp32 on the CPU while it holds the GPU.
"""

from __future__ import annotations

import shutil
import subprocess
import warnings

import torch


class CudaUnusable(RuntimeError):
    """CUDA is needed here (asked for, or reserved through Ray) but torch cannot use it."""


def ray_assigned_gpus() -> list[str] | None:
    """The GPU ids Ray assigned to this worker process, or None outside a Ray worker (a driver
    script counts as outside: Ray assigns it nothing and it reserves nothing)."""
    try:
        import ray
        from ray._private.worker import WORKER_MODE
    except ImportError:
        return None
    if not ray.is_initialized():
        return None
    context = ray.get_runtime_context()
    if context.worker.mode != WORKER_MODE:
        return None
    return list(context.get_accelerator_ids().get("GPU", []))


def planned_device_type(requested: str, num_gpus: float | None) -> str:
    """``cuda`` or ``cpu``, from the config alone: what ``resolve_device`` will pick in a Ray
    process that reserves ``num_gpus`` (None: outside Ray, where what torch sees decides)."""
    if requested != "auto":
        return requested
    if num_gpus is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if num_gpus > 0 else "cpu"


def resolve_device(requested: str, assigned_gpus: list[str] | None) -> torch.device:
    """``requested`` is ``auto``, ``cpu`` or ``cuda``; ``assigned_gpus`` is what
    ``ray_assigned_gpus()`` returned (None outside Ray)."""
    if requested == "cpu":
        return torch.device("cpu")
    if assigned_gpus is None:  # not a Ray worker: what torch sees decides
        if requested == "auto" and not torch.cuda.is_available():
            return torch.device("cpu")
        require_cuda("device 'cuda' was asked for")
        return torch.device("cuda")
    if not assigned_gpus:
        if requested == "cuda":
            raise CudaUnusable(
                "device 'cuda' in a Ray process that reserved no GPU: reserve one (Serve: num_gpus; "
                "backfill: --gpus-per-actor). Ray does not hide GPUs from processes that reserved none, "
                "so using one unreserved would share it with whatever Ray places there"
            )
        return torch.device("cpu")
    require_cuda(f"Ray reserved GPU(s) {', '.join(assigned_gpus)} for this process")
    return torch.device("cuda")


def require_cuda(why: str) -> None:
    """Raise ``CudaUnusable`` with the reason torch gives (driver, build) unless CUDA works."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    if available:
        return
    reasons = [str(w.message).strip() for w in caught if str(w.message).strip()]
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA (a CPU-only build)"
    driver = nvidia_driver_version()
    raise CudaUnusable(
        f"{why}, but torch cannot use CUDA. torch {torch.__version__} is built for {build}; "
        f"NVIDIA driver: {driver or 'not found (nvidia-smi missing or failing)'}."
        + (f" torch says: {' '.join(reasons)}" if reasons else "")
        + " Install a torch build that this driver supports, or update the driver."
    )


def nvidia_driver_version() -> str | None:
    """The driver version nvidia-smi reports, or None without a working nvidia-smi."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run(
            [smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    versions = sorted({line.strip() for line in out.stdout.splitlines() if line.strip()})
    return ", ".join(versions) if out.returncode == 0 and versions else None
