"""The benchmark's memory report: peak above start and growth over the run (the 40k no-leak check)."""

import os
import time

from bench.memory import GIB, MemorySampler, growth, host_used_bytes, rss_bytes


def test_growth_ignores_start_up_and_sees_a_steady_climb():
    warm_then_flat = [0] * 5 + [4 * GIB] * 95  # start-up allocates, then nothing changes
    assert growth(warm_then_flat) == 0.0
    leaking = [i * GIB // 100 for i in range(100)]  # +0.01 GiB per sample
    assert 0.6 < growth(leaking) < 0.75  # ~0.95 late minus ~0.25 early
    assert growth([1, 2, 3]) is None  # too few samples to say


def test_sampler_reports_host_memory_and_no_gpu_here():
    """Sampling this process's own memory: the host's is shared with whatever else runs here."""
    with MemorySampler(interval_s=0.01, host_read=lambda: rss_bytes(os.getpid())) as sampler:
        ballast = bytearray(512 * 2**20)  # 512 MiB, touched
        ballast[::4096] = b"x" * len(ballast[::4096])
        deadline = time.monotonic() + 30
        while len(sampler.host) < 12 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert len(sampler.host) >= 12, "the sampler thread stopped sampling"
    summary = sampler.summary()
    assert summary["host_mem_gib"] >= 0.25 and host_used_bytes() > 0
    assert summary["host_growth_gib"] is not None
    if not sampler._nvidia_smi:
        assert summary["gpu_mem_peak_gib"] is None and summary["gpu_growth_gib"] is None
    del ballast
