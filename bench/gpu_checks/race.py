"""Section ``race`` (checklist step 7): the pytorch/vision#9606 stress, with its positive control.

nvJPEG's hardware engine writes its output without waiting for work already queued on the
caller's stream, so a block the caching allocator hands it may still be written by queued
kernels. ``shared.device_decode.decode_jpegs`` drains the stream before each decode, and every
CUDA batch holds ``CUDA_DECODE_LOCK``. Here, each round:

- thread A, holding the lock as a batch would, allocates device buffers of exactly the shapes
  the next decode will ask for, queues ~100 ms of GPU work and then a write of zeros into them,
  frees them (the allocator may hand the blocks out at once: same stream) and lets B go;
- thread B runs ``predict_batch`` on the same ``Encoded`` JPEGs. If nvJPEG wrote into A's blocks
  before A's queued zeros landed, B classifies black images.

B's answers are compared with the single-thread answers. Then the same rounds run with the drain
stubbed out: that positive control must find corrupted answers, or the harness is not sensitive
enough for the drained result to mean anything, and the section says so.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Callable

ROUNDS = 20
BUSY_SECONDS = 0.1
SCORE_TOLERANCE = 1e-3


class _Overlay:
    """``base`` with some attributes replaced."""

    def __init__(self, base, **overrides):
        self._base = base
        self.__dict__.update(overrides)

    def __getattr__(self, name):
        return getattr(self._base, name)


class _NoWait:
    def synchronize(self) -> None:
        pass


@contextlib.contextmanager
def drain_stubbed():
    """``decode_jpegs`` without its drain: ``shared.device_decode`` sees a torch whose
    ``cuda.current_stream(...).synchronize()`` returns at once; everything else is torch's."""
    import torch

    from shared import device_decode

    real = device_decode.torch
    device_decode.torch = _Overlay(torch, cuda=_Overlay(torch.cuda, current_stream=lambda device=None: _NoWait()))
    try:
        yield
    finally:
        device_decode.torch = real


def busy_work(seconds: float) -> Callable[[], None]:
    """A function that queues about ``seconds`` of work on the current stream and returns at once."""
    import torch

    if hasattr(torch.cuda, "_sleep"):  # a spin kernel; calibrate cycles per second on this GPU
        cycles = 10_000_000
        torch.cuda._sleep(cycles)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        torch.cuda._sleep(cycles)
        end.record()
        end.synchronize()
        wanted = int(cycles * seconds * 1000 / max(start.elapsed_time(end), 1e-3))
        return lambda: torch.cuda._sleep(wanted)
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.float16)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        a @ a
    end.record()
    end.synchronize()
    repeats = max(1, int(10 * seconds * 1000 / max(start.elapsed_time(end), 1e-3)))

    def matmuls() -> None:
        for _ in range(repeats):
            a @ a

    return matmuls


def stress(
    wrapper, items: list, reference: list, shapes: list[tuple[int, int, int]], busy: Callable[[], None], rounds: int
) -> dict:
    """``rounds`` A/B rounds (module docstring); counts B's answers that differ from ``reference``."""
    import torch

    from shared.device_decode import CUDA_DECODE_LOCK

    a_done, b_done = threading.Event(), threading.Event()
    counts = {"images": 0, "differ": 0, "errors": []}
    wait_s = 30  # a round takes ~0.2 s; a thread that died must not leave the other waiting for ever

    def thread_a() -> None:
        try:
            for _ in range(rounds):
                with CUDA_DECODE_LOCK:
                    buffers = [torch.empty(shape, dtype=torch.uint8, device="cuda") for shape in shapes]
                    busy()
                    for buffer in buffers:
                        buffer.zero_()
                    del buffers  # back to the allocator while the zeros are still queued
                a_done.set()
                if not b_done.wait(wait_s):
                    return
                b_done.clear()
        except Exception as exc:  # noqa: BLE001 - recorded, and B is released
            counts["errors"].append(f"thread A: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            a_done.set()

    def thread_b() -> None:
        for _ in range(rounds):
            if not a_done.wait(wait_s):
                return
            a_done.clear()
            try:
                out = wrapper.predict_batch(items)
                counts["images"] += len(out)
                counts["differ"] += sum(differs(got, want) for got, want in zip(out, reference))
            except Exception as exc:  # noqa: BLE001 - recorded, and A is released
                counts["errors"].append(
                    f"thread B: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                )
            b_done.set()

    threads = [threading.Thread(target=thread_a, name="race-a"), threading.Thread(target=thread_b, name="race-b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    torch.cuda.synchronize()
    return counts


def differs(got, want) -> bool:
    """Top-1 changed, or any top-k score moved by more than ``SCORE_TOLERANCE``."""
    if not isinstance(got, list) or not isinstance(want, list):
        return got != want
    if [p["index"] for p in got] != [p["index"] for p in want]:
        return True
    return any(abs(a["score"] - b["score"]) > SCORE_TOLERANCE for a, b in zip(got, want))


def run(ctx, report) -> None:
    from shared import ModelConfig, ModelWrapper
    from shared.device_decode import Encoded

    batch = 64
    wrapper = ModelWrapper(ModelConfig(device="cuda", decode={"on_device": True}), batch_sizes=(batch,))
    items = [wrapper.load(path.read_bytes()) for path in ctx.images(batch)]
    encoded = [item for item in items if isinstance(item, Encoded)]
    if len(encoded) != len(items):
        raise RuntimeError(
            f"only {len(encoded)} of {len(items)} bench JPEGs were left Encoded; the stress needs all of them"
        )
    shapes = [(3, *decoded_size(item)) for item in encoded]
    reference = wrapper.predict_batch(items)
    busy = busy_work(BUSY_SECONDS)
    drained = stress(wrapper, items, reference, shapes, busy, ROUNDS)
    with drain_stubbed():
        control = stress(wrapper, items, reference, shapes, busy, ROUNDS)
    report.details.update(rounds=ROUNDS, busy_seconds=BUSY_SECONDS, drained=drained, control=control)
    report.add(
        f"with the drain: answers differing from one thread ({ROUNDS} rounds)",
        f"{drained['differ']}/{drained['images']}, {len(drained['errors'])} raised",
        passed=drained["differ"] == 0 and not drained["errors"] and drained["images"] > 0,
        threshold="0",
    )
    sensitive = control["differ"] > 0
    report.add(
        "drain stubbed out (positive control): answers differing",
        f"{control['differ']}/{control['images']}",
        passed=sensitive,
        threshold="> 0, else the harness cannot see the race and the line above proves nothing",
    )
    if not sensitive:
        report.details["verdict"] = (
            "not sensitive: the positive control found no corruption, so the drained result is not evidence"
        )


def decoded_size(item) -> tuple[int, int]:
    """(height, width) nvJPEG outputs for an ``Encoded`` JPEG: before the EXIF orientation's turn."""
    height, width = item.original_size
    return (width, height) if item.orientation >= 5 else (height, width)
