"""What the sections share: the run's context, a section's report, child processes, Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
GIB = 2**30


class Report:
    """A section's figures (the table's rows) and details (JSON only). A section adds to it as it
    goes, so what it measured before raising is kept."""

    def __init__(self) -> None:
        self.figures: list[dict] = []
        self.details: dict[str, Any] = {}

    def add(self, figure: str, value: Any, *, passed: bool | None = None, threshold: str | None = None) -> None:
        self.figures.append({"figure": figure, "value": value, "pass": passed, "threshold": threshold})


@dataclass
class Context:
    """The run as sections see it. ``tiny``: CPU harness mode (``--allow-cpu`` without CUDA, or
    ``--tiny``): every size small, so the plain Python paths run in seconds."""

    cuda: bool
    tiny: bool
    images_wanted: int  # the dataset's size
    data_root: Path | None  # where the dataset lives (default: the temp dir, per size)
    work: Path  # scratch space for this run
    options: dict[str, Any] = field(default_factory=dict)  # the CLI's section knobs (clients, duration, ...)
    deadline: float | None = None  # time.monotonic() at which --budget-minutes runs out
    dataset_info: dict[str, Any] | None = None
    _images: list[Path] | None = None
    _serve_port: int | None = None

    def pick(self, full, tiny):
        return tiny if self.tiny else full

    def child_timeout(self, seconds: float) -> float:
        """A child process's time limit: ``seconds``, cut to what is left of the budget (at least
        a minute), so one slow child cannot take the sections after it."""
        if self.deadline is None:
            return seconds
        return max(60.0, min(seconds, self.deadline - time.monotonic()))

    @property
    def device(self) -> str:
        return "cuda" if self.cuda else "cpu"

    @property
    def data_dir(self) -> Path:
        return self.data_root or Path(tempfile.gettempdir()) / f"twinfer-bench-{self.images_wanted}"

    def images(self, count: int | None = None) -> list[Path]:
        """The benchmark dataset's first ``count`` JPEGs (all by default), generated on first use.
        Image i depends only on i (``bench.dataset``), so any folder of this size holds the same files."""
        if self._images is None:
            from bench.dataset import make_dataset

            started = time.perf_counter()
            reused = self.data_dir.exists() and any(self.data_dir.rglob("*.jpg"))
            if not reused:
                make_dataset(self.data_dir, self.images_wanted)
            self._images = sorted(self.data_dir.rglob("*.jpg"))
            self.dataset_info = {
                "path": str(self.data_dir),
                "images": len(self._images),
                "reused": reused,
                "seconds": round(time.perf_counter() - started, 1),
            }
        return self._images[:count]

    def ensure_ray(self) -> None:
        import ray

        if not ray.is_initialized():
            ray.init(include_dashboard=False, log_to_driver=False)

    @property
    def serve_started(self) -> bool:
        return self._serve_port is not None

    def serve_port(self) -> int:
        """Serve's HTTP port, starting Ray and Serve on first use."""
        if self._serve_port is None:
            from bench.serving import start_serve

            self.ensure_ray()
            self._serve_port = start_serve().http
        return self._serve_port


def run_child(module: str, args: list[str], *, timeout: float, env: dict[str, str] | None = None) -> dict:
    """``python -m module *args`` in a fresh process (its own CUDA context, dynamo state and
    global switches). Returns ``result`` (the JSON of its last stdout line, or None), ``rc``
    (None on timeout), ``seconds``, ``stderr`` (all of it) and ``stderr_tail``."""
    started = time.perf_counter()
    command = [sys.executable, "-m", module, *args]
    try:
        proc = subprocess.run(
            command, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout
        )
        rc, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, stdout, stderr = None, _text(exc.stdout), _text(exc.stderr) + f"\n[killed after {timeout:.0f} s]"
    result = None
    lines = stdout.strip().splitlines()
    if lines:
        try:
            result = json.loads(lines[-1])
        except json.JSONDecodeError:
            result = None
    return {
        "result": result,
        "rc": rc,
        "seconds": round(time.perf_counter() - started, 1),
        "stderr": stderr,
        "stderr_tail": stderr[-1500:],
        "command": " ".join(command[1:]),
    }


def child_failure(child: dict) -> str:
    """One line on why a child gave no result."""
    if child["rc"] is None:
        return f"timed out after {child['seconds']} s"
    tail = [line for line in child["stderr_tail"].splitlines() if line.strip()]
    return f"exit {child['rc']}: {tail[-1] if tail else 'no output'}"


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def cuda_memory_gib() -> dict[str, float]:
    """This process's allocated and peak-allocated device memory (torch's caching allocator)."""
    import torch

    return {
        "allocated_gib": round(torch.cuda.memory_allocated() / GIB, 3),
        "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / GIB, 3),
    }


def load_all(loader, paths: list[Path], threads: int | None = None) -> list:
    """``loader.load`` (the CPU half) of every file, on a thread pool (Pillow releases the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads or min(16, os.cpu_count() or 1)) as pool:
        return list(pool.map(lambda path: loader.load(path.read_bytes()), paths))


def top1(wrapper, items: list, batch_size: int) -> list[int]:
    """Top-1 class index of every item, ``predict_batch`` ``batch_size`` at a time (-1 for an
    image that failed to decode on the device)."""
    out: list[int] = []
    for start in range(0, len(items), batch_size):
        results = wrapper.predict_batch(items[start : start + batch_size])
        out += [result[0]["index"] if isinstance(result, list) else -1 for result in results]
    return out


def agreement(got: list[int], want: list[int]) -> tuple[int, int, float]:
    same = sum(a == b for a, b in zip(got, want))
    return same, len(want), same / max(1, len(want))


def release_cuda() -> None:
    """Give cached device memory back between measurements (no-op without CUDA)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
