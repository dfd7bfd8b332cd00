"""Section ``env`` (checklist step 1), and what the run records about the machine: is CUDA usable
(and if not, why), the GPU, driver, CUDA and cuDNN, the nvJPEG op, /dev/shm, library versions.

Only torch and the standard library are imported here, so the refusal without CUDA is quick and
needs none of Ray's packages.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import warnings
from importlib import metadata
from pathlib import Path

from bench.gpu_checks.common import GIB
from bench.provenance import commit

MIN_DRIVER = 580  # the cu13 wheels' minimum (R580)
PACKAGES = (
    "torch",
    "torchvision",
    "ray",
    "numpy",
    "pillow",
    "pyarrow",
    "pydantic",
    "transformers",
    "timm",
    "aiohttp",
    "httpx",
    "scikit-image",
)


def nvidia_smi(fields: str) -> list[dict[str, str]] | None:
    """One dict per GPU for ``--query-gpu=fields``, or None without a working nvidia-smi."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run(
            [smi, f"--query-gpu={fields}", "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=15
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    names = fields.split(",")
    return [dict(zip(names, (v.strip() for v in line.split(",")))) for line in out.stdout.splitlines() if line.strip()]


def driver_version() -> str | None:
    gpus = nvidia_smi("driver_version")
    return ", ".join(sorted({g["driver_version"] for g in gpus})) if gpus else None


def cuda_status() -> dict:
    """What decides whether the GPU sections can run: ``torch.cuda.is_available()`` (and any
    warning torch gives with it), the CUDA version torch was built for, the driver."""
    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    return {
        "available": available,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "driver": driver_version(),
        "torch_says": [str(w.message).strip() for w in caught if str(w.message).strip()],
    }


def refusal(status: dict) -> str:
    build = f"CUDA {status['torch_cuda']}" if status["torch_cuda"] else "no CUDA (a CPU-only build)"
    lines = [
        "bench.gpu: no usable CUDA device, so nothing was measured.",
        f"  torch.cuda.is_available(): {status['available']}",
        f"  torch {status['torch']} is built for {build}",
        f"  NVIDIA driver (nvidia-smi): {status['driver'] or 'not found (nvidia-smi missing or failing)'}",
    ]
    lines += [f"  torch says: {message}" for message in status["torch_says"]]
    lines.append(
        f"Run it on a CUDA machine (the cu13 wheels need driver R{MIN_DRIVER} or newer), or pass --allow-cpu "
        "to test the harness itself on this CPU with tiny sizes."
    )
    return "\n".join(lines)


def machine() -> dict:
    import torch

    gpus = nvidia_smi("name,driver_version,memory.total,compute_cap") or []
    return {
        "host": platform.node(),
        "cores": os.cpu_count(),
        "memory_gib": round(_mem_total() / GIB, 1),
        "gpu": gpus[0]["name"] if gpus else None,
        "gpus": len(gpus),
        "gpu_memory_gib": round(float(gpus[0]["memory.total"]) / 1024, 1)
        if gpus and _number(gpus[0]["memory.total"])
        else None,
        "driver": gpus[0]["driver_version"] if gpus else None,
        "compute_capability": gpus[0].get("compute_cap") if gpus else None,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
    }


def versions() -> dict:
    import torch
    import torchvision

    found = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    found.update(torch=torch.__version__, torchvision=torchvision.__version__)  # with the build's local tag (+cu130)
    found["commit"] = commit()
    return found


def run(ctx, report) -> None:
    import torch
    import torchvision.io  # noqa: F401 - registers torch.ops.image

    status = cuda_status()
    judge = ctx.cuda  # on a CPU (--allow-cpu) the figures are recorded, not judged
    driver = status["driver"]
    major = int(driver.split(".")[0]) if driver and driver.split(".")[0].isdigit() else None
    report.add(
        "NVIDIA driver",
        driver or "not found",
        passed=(major or 0) >= MIN_DRIVER if judge else None,
        threshold=f">= R{MIN_DRIVER}",
    )
    report.add("torch.cuda.is_available()", status["available"], passed=status["available"] if judge else None)
    report.add("torch / its CUDA build", f"{status['torch']} / {status['torch_cuda'] or 'none'}")
    info = machine()
    report.add(
        "GPU", f"{info['gpu']} ({info['gpu_memory_gib']} GiB), {info['gpus']} visible" if info["gpu"] else "none"
    )
    report.add("cuDNN", info["cudnn"], passed=info["cudnn"] is not None if judge else None)
    has_op = hasattr(torch.ops.image, "decode_jpegs_cuda")
    report.add(
        "torch.ops.image.decode_jpegs_cuda", "present" if has_op else "missing", passed=has_op if judge else None
    )
    if ctx.cuda:
        report.add("nvJPEG decode of a grey test JPEG", *_nvjpeg_smoke())
    shm = shutil.disk_usage("/dev/shm") if Path("/dev/shm").exists() else None
    wanted = 0.3 * _mem_total()  # Ray's object store default; below it Ray falls back to /tmp
    report.add(
        "/dev/shm",
        f"{shm.total / GIB:.1f} GiB ({shm.free / GIB:.1f} free)" if shm else "missing",
        passed=bool(shm and shm.total >= wanted) if judge else None,
        threshold=f">= {wanted / GIB:.0f} GiB (30 % of RAM, Ray's object store)",
    )
    report.details.update(status=status, machine=info, cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"))


def _nvjpeg_smoke() -> tuple[str, bool]:
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    from shared.device_decode import blank_jpeg

    item = blank_jpeg(64)
    try:
        out = decode_jpeg(
            torch.frombuffer(bytearray(item.data), dtype=torch.uint8), mode=ImageReadMode.RGB, device="cuda"
        )
        torch.cuda.synchronize()
    except Exception as exc:  # noqa: BLE001 - the reason is the figure
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", False
    mean = float(out.float().mean())
    return f"shape {tuple(out.shape)} on {out.device}, mean {mean:.1f} (127 expected)", tuple(out.shape) == (
        3,
        64,
        64,
    ) and abs(mean - 127) < 3


def _mem_total() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False
