"""The batch runner: uint8 images -> the model's output on its device.

It owns the model module on the device: dtype, channels_last, normalisation (fused, on the
device), compile, warm-up and padding to the warmed batch sizes. Compiled graphs are static and
cuDNN autotunes per shape, so such batches are zero-padded (or split) to the warmed sizes and
neither a compile nor an autotune lands on a request.
"""

from __future__ import annotations

import bisect
from typing import Any, Callable, Sequence

import numpy as np
import torch

from shared import torch_process
from shared.prepare import Prepared, PreprocessSpec, stack
from shared.tasks import Task


class BatchRunner:
    def __init__(
        self,
        model: torch.nn.Module,
        task: Task,
        preprocess: PreprocessSpec,
        device: torch.device,
        dtype: torch.dtype,
        channels_last: bool,
        compiled: bool,
    ):
        self.task = task
        self.device = device
        self.dtype = dtype
        self.channels_last = channels_last
        self.compiled = compiled
        model = model.to(device, dtype=dtype)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = torch_process.compile_model(model) if compiled else model
        self.warmed_batch_sizes: tuple[int, ...] = ()  # batch sizes run once before any request
        std = torch.tensor(preprocess.std, device=device).view(1, 3, 1, 1)
        mean = torch.tensor(preprocess.mean, device=device).view(1, 3, 1, 1)
        # (x / 255 - mean) / std  ==  x * scale + shift, done in one fused pass on the device
        self.scale = (1.0 / (255.0 * std)).to(dtype)
        self.shift = (-mean / std).to(dtype)

    @property
    def pads_batches(self) -> bool:
        return self.task.fixed_size and (self.compiled or self.device.type == "cuda")

    def warmup(self, batch_sizes: Sequence[int], run_at: Callable[[int], None]) -> None:
        """``run_at(n)`` once for each new size n, so compilation and cuDNN autotune never land on
        a user request. Waits for batches running on other threads, and new batches wait for it
        (``torch_process.SERVING``)."""
        with torch_process.SERVING.exclusive():
            new = sorted(set(batch_sizes) - set(self.warmed_batch_sizes))
            if self.compiled:
                torch_process.allow_compiled_graphs(len(new))
            # eager on CPU has nothing to warm (no compile, no CUDA context or cuDNN autotune)
            for n in new if (self.compiled or self.device.type == "cuda") else ():
                with torch_process.compiling():
                    run_at(n)
            self.warmed_batch_sizes = tuple(sorted({*self.warmed_batch_sizes, *new}))
            if self.compiled:
                torch_process.forbid_recompiles()

    def call(self, x: Any) -> Any:
        """The model on ``x`` (``torch_process.COMPILED_CALLS`` held when it is compiled)."""
        with torch_process.compiled_call(self.compiled):
            return self.model(x)

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW on the device -> the model's output on the device, at exactly this batch size."""
        x = torch.addcmul(self.shift, x.to(self.dtype), self.scale)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.call(x)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        """``forward`` at the warmed sizes: pad to the nearest one, split above the largest."""
        sizes = self.warmed_batch_sizes
        if not sizes:  # never compile (or autotune) on a user request
            raise RuntimeError("model has no warmed batch size: call warmup(batch_sizes) before predicting")
        outputs = []
        for chunk in x.split(sizes[-1]):
            n = len(chunk)
            padded = sizes[bisect.bisect_left(sizes, n)]
            if padded > n:
                chunk = torch.cat([chunk, chunk.new_zeros((padded - n, *chunk.shape[1:]))])
            outputs.append(self.forward(chunk)[:n])
        return torch.cat(outputs)

    @torch.inference_mode()
    def run(self, items: Sequence[Prepared]) -> Any:
        """uint8 images -> the model's output on the device (one batch tensor, or per-image dicts
        for a model that takes images of any size)."""
        if self.task.fixed_size:
            x = self.batch_on_device([item.pixels for item in items])
            return self.forward_padded(x) if self.pads_batches else self.forward(x)
        return self.call([self.image_to_device(item.pixels).to(self.dtype).div_(255.0) for item in items])

    def batch_on_device(self, pixels: list[np.ndarray | torch.Tensor]) -> torch.Tensor:
        """Same-size uint8 CHW images -> one uint8 NCHW tensor on the device. Host arrays cross
        in one non-blocking copy from a pinned buffer they were stacked into; images already on
        the device (decoded there) join it there."""
        on_device = [i for i, p in enumerate(pixels) if isinstance(p, torch.Tensor)]
        if not on_device:
            return self.stack_to_device(pixels)
        batch = torch.empty((len(pixels), *pixels[0].shape), dtype=torch.uint8, device=self.device)
        host = [i for i, p in enumerate(pixels) if not isinstance(p, torch.Tensor)]
        if host:
            batch[host] = self.stack_to_device([pixels[i] for i in host])
        batch[on_device] = torch.stack([pixels[i] for i in on_device])
        return batch

    def stack_to_device(self, pixels: Sequence[np.ndarray]) -> torch.Tensor:
        if self.device.type != "cuda":
            return torch.from_numpy(stack(list(pixels)))
        # stacked straight into page-locked memory: one host copy, then an asynchronous upload. The
        # caching host allocator reuses the buffer only once the copy's recorded event has passed.
        host = torch.empty((len(pixels), *pixels[0].shape), dtype=torch.uint8, pin_memory=True)
        np.stack(pixels, out=host.numpy())
        return host.to(self.device, non_blocking=True)

    def image_to_device(self, pixels: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(pixels)
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor


def bucket_sizes(max_batch_size: int) -> tuple[int, ...]:
    """Batch sizes to warm for a batcher that may send 1..max_batch_size: powers of two, and the max."""
    return tuple(
        sorted({1 << i for i in range(max_batch_size.bit_length()) if 1 << i < max_batch_size} | {max_batch_size})
    )


def device_probe(device: torch.device) -> None:
    """A tiny op on ``device``, waited for; raises if the device is broken."""
    value = torch.ones(4, device=device).add_(1).sum()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    if value.item() != 8.0:
        raise RuntimeError(f"device {device} computed 4 x (1 + 1) = {value.item()}")
