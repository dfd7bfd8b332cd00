"""Memory while a benchmark block runs: host (whole machine) and GPU (whole device, nvidia-smi);
with it, how busy the CPUs (/proc/stat) and the GPU (nvidia-smi's utilization) were on average.

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
        self.gpu_util: list[int] = []  # % of the sample period a kernel ran, per nvidia-smi
        self._nvidia_smi = shutil.which("nvidia-smi")
        self._cpu_first: tuple[int, int] | None = None
        self._cpu_last: tuple[int, int] | None = None

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
        self._cpu_last = cpu_times()
        self._cpu_first = self._cpu_first or self._cpu_last
        if self._nvidia_smi:
            sample = gpu_sample(self._nvidia_smi)
            if sample is not None:
                self.gpu.append(sample[0])
                self.gpu_util.append(sample[1])

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
            "gpu_util_pct": round(statistics.mean(self.gpu_util), 1) if self.gpu_util else None,
            "cpu_busy_pct": _busy_pct(self._cpu_first, self._cpu_last),
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
    sample = gpu_sample(nvidia_smi)
    return sample[0] if sample else None


def gpu_sample(nvidia_smi: str) -> tuple[int, int] | None:
    """(bytes in use, utilization %) of GPU 0, all processes; None if nvidia-smi does not answer."""
    try:
        out = subprocess.run(
            [nvidia_smi, "--query-gpu=memory.used,utilization.gpu", "--format=csv,noheader,nounits", "--id=0"],
            capture_output=True, text=True, timeout=5, check=True,
        )
        used, util = out.stdout.strip().splitlines()[0].split(",")
        return int(used) * 2**20, int(util)  # MiB, %
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat; None where there is none."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def _busy_pct(first: tuple[int, int] | None, last: tuple[int, int] | None) -> float | None:
    """How busy all CPUs were between two ``cpu_times`` (the whole machine, not this process)."""
    if not first or not last or last[1] <= first[1]:
        return None
    return round(100 * (last[0] - first[0]) / (last[1] - first[1]), 1)
