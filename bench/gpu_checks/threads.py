"""Section ``threads`` (checklist step 5): a Serve replica runs batches on several executor
threads against one wrapper. Four threads call ``predict_batch`` on one compiled wrapper (eager
on a CPU, tiny) with dynamo's ``error_on_recompile`` on; every answer must equal, bitwise, the
single-thread answer for the same batch. Then img/s with 1 vs 2 threads."""

from __future__ import annotations

import threading
import time

from bench.gpu_checks.common import load_all

THREADS = 4


def run(ctx, report) -> None:
    import torch
    import torch._dynamo.config as dynamo_config

    from shared import ModelConfig, ModelWrapper
    from shared.device_decode import DECODING_ON_DEVICE

    compiled = ctx.cuda
    batch = ctx.pick(32, 3)
    started = time.perf_counter()
    wrapper = ModelWrapper(ModelConfig(device=ctx.device, compile=compiled), batch_sizes=(batch,))
    report.details.update(
        compiled=compiled,
        batch=batch,
        build_s=round(time.perf_counter() - started, 1),
        device_lock_in_play=DECODING_ON_DEVICE.is_set(),
    )
    items = load_all(wrapper, ctx.images(batch))
    reference = wrapper.predict_batch(items)
    seconds = ctx.pick(30.0, 0.5)
    previous = dynamo_config.error_on_recompile
    dynamo_config.error_on_recompile = True
    try:
        calls, mismatches, errors = hammer(wrapper, items, reference, THREADS, seconds)
        report.add(
            f"{THREADS} threads x {seconds:g} s on one {'compiled' if compiled else 'eager'} wrapper",
            f"{calls} batches, {mismatches} differ from one thread, {len(errors)} raised"
            + (f" ({errors[0]})" if errors else ""),
            passed=calls > 0 and mismatches == 0 and not errors,
            threshold="0 differ, 0 raised",
        )
        rates = {}
        for n in (1, 2):
            window = ctx.pick(8.0, 0.3)
            done, _, _ = hammer(wrapper, items, None, n, window)
            rates[n] = done * batch / window
        report.add(
            "img/s with 1 vs 2 threads", f"{rates[1]:.0f} vs {rates[2]:.0f} (x{rates[2] / max(rates[1], 1e-9):.2f})"
        )
    finally:
        dynamo_config.error_on_recompile = previous
    del wrapper
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def hammer(wrapper, items, reference, threads: int, seconds: float) -> tuple[int, int, list[str]]:
    """``threads`` threads call ``predict_batch(items)`` until ``seconds`` have passed; returns
    the batches run, how many differed from ``reference`` (when given) and the errors raised."""
    deadline = time.perf_counter() + seconds
    counts = [[0, 0] for _ in range(threads)]
    errors: list[str] = []

    def worker(slot: list[int]) -> None:
        while time.perf_counter() < deadline:
            try:
                out = wrapper.predict_batch(items)
            except Exception as exc:  # noqa: BLE001 - the figure reports it
                errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
                return
            slot[0] += 1
            slot[1] += reference is not None and out != reference

    pool = [threading.Thread(target=worker, args=(slot,), name=f"hammer-{i}") for i, slot in enumerate(counts)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return sum(c[0] for c in counts), sum(c[1] for c in counts), errors
