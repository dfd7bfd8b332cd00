"""Memory while a benchmark block runs: host (whole machine), GPU (whole device, nvidia-smi), and
the resident set of named groups of processes (``RssSampler``: Serve's proxy, replicas...); with it,
how busy the CPUs (/proc/stat) and the GPU (nvidia-smi's utilization) were on average.

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
import time
from collections.abc import Callable
from pathlib import Path

GIB = 2**30


class PeriodicSampler:
    """Calls ``_sample_once`` on entering, every ``interval_s`` on a daemon thread, and on leaving."""

    interval_s: float

    def __enter__(self):
        self._before_first_sample()
        self._sample_once()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample_once()

    def _before_first_sample(self) -> None:
        pass

    def _tick(self) -> None:
        self._sample_once()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._tick()

    def _sample_once(self) -> None:
        raise NotImplementedError


class MemorySampler(PeriodicSampler):
    """Host memory in use (``host_read``: the whole host's by default) and, with nvidia-smi, the GPU's."""

    def __init__(self, interval_s: float = 0.5, host_read: Callable[[], int] | None = None):
        self.interval_s = interval_s
        self._host_read = host_read or host_used_bytes
        self.host: list[int] = []
        self.gpu: list[int] = []
        self.gpu_util: list[int] = []  # % of the sample period a kernel ran, per nvidia-smi
        self._nvidia_smi = shutil.which("nvidia-smi")
        self._cpu_first: tuple[int, int] | None = None
        self._cpu_last: tuple[int, int] | None = None

    def _sample_once(self) -> None:
        self.host.append(self._host_read())
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
    """GiB: median of the last tenth minus median of the samples at 20-30 % of the run."""
    early_late = growth_window(samples)
    return None if early_late is None else round((early_late[1] - early_late[0]) / GIB, 3)


def growth_window(samples: list[int]) -> tuple[float, float] | None:
    """(median of the samples at 20-30 % of the run, median of the last tenth); None under 10 samples."""
    if len(samples) < 10:
        return None
    n = len(samples)
    early = statistics.median(samples[int(n * 0.2) : max(int(n * 0.3), int(n * 0.2) + 1)])
    late = statistics.median(samples[-max(1, n // 10) :])
    return early, late


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
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
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


TOTAL = "total"


class RssSampler(PeriodicSampler):
    """Resident set size of groups of processes, e.g. {"proxy": [pid], "model": [pid, pid]}, every
    ``interval_s``; ``groups`` is called again every ``refresh_s`` (replicas come and go). A
    process's children count with it (HAProxy under Serve's proxy actor); group ``total`` sums them.
    ``mark()`` and ``mark_end()`` bound the measured window that ``summary()`` reports on."""

    def __init__(self, groups: Callable[[], dict[str, list[int]]], interval_s: float = 0.5, refresh_s: float = 5.0):
        self.groups_fn, self.interval_s, self.refresh_s = groups, interval_s, refresh_s
        self.samples: dict[str, list[int]] = {}
        self.marked: dict[str, int] = {}  # group -> index of its first sample in the measured window
        self.ended: dict[str, int] = {}  # group -> index past its last sample in the window (default: all)

    def _before_first_sample(self) -> None:
        self._groups, self._refreshed = self.groups_fn(), time.monotonic()

    def mark(self) -> None:
        self.marked = {group: len(values) for group, values in self.samples.items()}

    def mark_end(self) -> None:
        self.ended = {group: len(values) for group, values in self.samples.items()}

    def _tick(self) -> None:
        if time.monotonic() - self._refreshed >= self.refresh_s:
            try:
                self._groups = self.groups_fn()
            except Exception:  # keep the last known processes; the next refresh tries again
                pass
            self._refreshed = time.monotonic()
        self._sample_once()

    def _sample_once(self) -> None:
        total = 0
        for group, pids in self._groups.items():
            value = sum(rss_bytes(pid) for pid in pids)
            self.samples.setdefault(group, []).append(value)
            total += value
        self.samples.setdefault(TOTAL, []).append(total)

    def summary(self) -> dict[str, dict]:
        """Per group, MiB: ``start`` (first sample), ``before`` / ``after`` (first / last of the window), ``peak``, and
        ``growth_pct`` (``growth_window`` over the window, relative to its early median)."""
        out = {}
        for group, values in self.samples.items():
            window = values[self.marked.get(group, 0) : self.ended.get(group, len(values))] or values
            early_late = growth_window(window)
            growth_pct = None
            if early_late and early_late[0] > 0:
                growth_pct = round(100 * (early_late[1] - early_late[0]) / early_late[0], 2)
            out[group] = {
                "start_mib": _mib(values[0]),
                "before_mib": _mib(window[0]),
                "after_mib": _mib(window[-1]),
                "peak_mib": _mib(max(values)),
                "growth_pct": growth_pct,
                "samples": len(window),
            }
        return out


def rss_bytes(pid: int) -> int:
    """RSS of a process and its descendants; 0 once it is gone."""
    psutil = import_psutil()

    try:
        process = psutil.Process(pid)
        total = process.memory_info().rss
        for child in process.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        return total
    except psutil.Error:
        return 0


def import_psutil():
    """psutil ships inside Ray (ray/thirdparty_files, put on sys.path by ``import ray``)."""
    import psutil
    import ray  # noqa: F401

    return psutil


def _mib(value: int) -> float:
    return round(value / 2**20, 1)
