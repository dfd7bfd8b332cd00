"""Memory while a benchmark block runs: host (whole machine) and GPU (whole device, nvidia-smi).

Reports the peak above the start and the growth: the median of the last tenth of the samples
minus the median of the samples from 20 % to 30 % of the run (past start-up and warm-up). A
steady pipeline shows growth near 0 however long it runs; a leak shows up as growth that
scales with the run.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import threading
from pathlib import Path

GIB = 2**30


class MemorySampler:
    def __init__(self, interval_s: float = 0.5):
        self.interval_s = interval_s
        self.host: list[int] = []
        self.gpu: list[int] = []
        self._nvidia_smi = shutil.which("nvidia-smi")

    def __enter__(self) -> "MemorySampler":
        self._sample_once()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample_once()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample_once()

    def _sample_once(self) -> None:
        self.host.append(host_used_bytes())
        if self._nvidia_smi:
            used = gpu_used_bytes(self._nvidia_smi)
            if used is not None:
                self.gpu.append(used)

    def summary(self) -> dict:
        """GiB: ``host_mem_gib`` (peak above start), ``host_growth_gib``, and for the GPU its peak,
        growth, and the first and last samples (None without nvidia-smi); growth is None with
        fewer than 10 samples."""
        return {
            "host_mem_gib": _peak_above_start(self.host),
            "host_growth_gib": growth(self.host),
            "gpu_mem_peak_gib": round(max(self.gpu) / GIB, 2) if self.gpu else None,
            "gpu_growth_gib": growth(self.gpu),
            "gpu_start_gib": round(self.gpu[0] / GIB, 2) if self.gpu else None,
            "gpu_end_gib": round(self.gpu[-1] / GIB, 2) if self.gpu else None,
        }


def growth(samples: list[int]) -> float | None:
    if len(samples) < 10:
        return None
    n = len(samples)
    early = statistics.median(samples[int(n * 0.2) : max(int(n * 0.3), int(n * 0.2) + 1)])
    late = statistics.median(samples[-max(1, n // 10) :])
    return round((late - early) / GIB, 3)


def _peak_above_start(samples: list[int]) -> float | None:
    return round((max(samples) - samples[0]) / GIB, 2) if samples else None


def host_used_bytes() -> int:
    """MemTotal - MemAvailable: what the machine has in use."""
    info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    kib = lambda key: int(info[key].split()[0])  # noqa: E731
    return (kib("MemTotal") - kib("MemAvailable")) * 1024


def gpu_used_bytes(nvidia_smi: str) -> int | None:
    """Memory in use on GPU 0 (all processes), or None if nvidia-smi does not answer."""
    try:
        out = subprocess.run(
            [nvidia_smi, "--query-gpu=memory.used", "--format=csv,noheader,nounits", "--id=0"],
            capture_output=True, text=True, timeout=5, check=True,
        )
        return int(out.stdout.strip().splitlines()[0]) * 2**20  # MiB
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None
