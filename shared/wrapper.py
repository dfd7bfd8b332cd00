"""The one model wrapper both paths use: decode -> prepare -> predict -> postprocess.

It holds one object per job: the ``ImageLoader`` (``shared.loader``: the CPU half, bytes ->
uint8 ``Item``), the ``DeviceDecoder`` (``shared.device_decode``: ``Encoded`` JPEGs -> pixels
on the device), the ``BatchRunner`` (``shared.runner``: uint8 batches -> the model's output on
the device) and the task (``shared.tasks``: reduce and answer). ``auto`` is settled by
``shared.auto.settle``; process-wide torch switches live in ``shared.torch_process``.

``load`` is the CPU half (run on CPU workers) and ``predict_batch`` the device half (run in the
GPU replica / actor). The Serve deployment and the Ray Data actor call exactly these, so the same
image gets the same answer online and offline.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from shared import auto, torch_process
from shared.config import ModelConfig
from shared.device_decode import DeviceDecoder, blank_jpeg
from shared.devices import ray_assigned_gpus, resolve_device
from shared.errors import TwinferError
from shared.loader import ImageLoader, Item
from shared.prepare import Prepared
from shared.runner import BatchRunner, device_probe
from shared.tasks import DEFAULT_TOP_K

__all__ = ["ImageLoader", "Item", "ModelWrapper", "planned_output_dim"]

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class ModelWrapper:
    """The whole model: the CPU half (``loader``) plus the device half."""

    def __init__(self, config: ModelConfig, batch_sizes: Sequence[int] = (1,)):
        """``batch_sizes``: warmed here (with ``compile``, and on CUDA, the only sizes batches are
        run at until ``warmup`` adds more). The Serve replica passes none and warms in ``reconfigure``."""
        self.config = config
        self.loader = ImageLoader(config)
        self.spec = self.loader.spec
        self.task = self.loader.task
        self.labels = self.task.labels
        device = resolve_device(config.device, ray_assigned_gpus())
        if device.type != "cuda" and config.precision == "fp16":
            raise RuntimeError("precision fp16 needs a CUDA device; this process has none (bf16 runs on CPU)")
        # a backfill's actors get their config settled already (``BackfillConfig.resolved``)
        self.settled = auto.settle(config, device.type, auto.Workload(online=True))
        model = self.task.adapt_model(self.spec.build(config.weights, config.options).eval(), self.spec.embed_head)
        self.output_dim = self.task.output_dim(model)
        if isinstance(self.settled.cpu_threads, int) and device.type == "cpu":
            torch_process.cpu_threads(self.settled.cpu_threads)
        if self.settled.cudnn_benchmark:
            torch_process.cudnn_benchmark()
        self.runner = BatchRunner(
            model,
            self.task,
            self.spec.preprocess,
            device,
            DTYPES[self.settled.precision],
            channels_last=self.settled.channels_last,
            compiled=self.settled.compile,
        )
        self.decoder = DeviceDecoder(
            device, self.spec.preprocess, self.loader.decode_and_prepare, enabled=self.settled.decode_on_device
        )
        self.warmup(batch_sizes)

    # ---- the CPU half ---------------------------------------------------------------------------
    def load(self, data: bytes) -> Item:
        return self.loader.load(data)

    def decode(self, data: bytes) -> np.ndarray:
        return self.loader.decode(data)

    def prepare(self, image: np.ndarray) -> Prepared:
        return self.loader.prepare(image)

    # ---- what the runner settled ------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.runner.device

    @property
    def dtype(self) -> torch.dtype:
        return self.runner.dtype

    @property
    def channels_last(self) -> bool:
        return self.runner.channels_last

    @property
    def compiled(self) -> bool:
        return self.runner.compiled

    @property
    def model(self) -> torch.nn.Module:
        return self.runner.model

    @property
    def warmed_batch_sizes(self) -> tuple[int, ...]:
        return self.runner.warmed_batch_sizes

    @property
    def pads_batches(self) -> bool:
        return self.runner.pads_batches

    # ---- the device half -----------------------------------------------------------------------------
    def warmup(self, batch_sizes: Sequence[int]) -> None:
        """Run dummy batches of these sizes before any request (``BatchRunner.warmup``); safe
        while batches run on other threads."""
        self.runner.warmup(batch_sizes, self._warm_at)

    def _warm_at(self, n: int) -> None:
        """One batch of exactly ``n``, not padded to a size warmed before; through the device
        decoder when it is on, so its first (slow) call is here too."""
        size = self.spec.preprocess.size
        if self.settled.decode_on_device:
            items: list = [blank_jpeg(size)] * n
        else:
            items = [Prepared(np.zeros((3, size, size), np.uint8), (size, size))] * n
        if self.task.fixed_size:
            images = self.decoder.decode(items)
            with self.decoder.exclusive(items):
                self.runner.forward(self.runner.batch_on_device([image.pixels for image in images]))
        else:
            with self.decoder.exclusive(items):
                self.predict(items)

    def decode_on_device(self, items: Sequence[Item]) -> list[Prepared | TwinferError]:
        return self.decoder.decode(items)

    @torch.inference_mode()
    def predict(self, items: Sequence[Prepared]) -> Any:
        """uint8 images -> the model's whole output on the host: class probabilities, embeddings,
        or detection dicts (benchmarks and agreement checks; requests use ``predict_batch``)."""
        if not items:
            return [] if not self.task.fixed_size else torch.zeros((0, self.output_dim or len(self.labels)))
        return self.task.full(self.runner.run(items))

    @torch.inference_mode()
    def predict_reduced(self, items: Sequence[Prepared], params: Sequence[dict]) -> Any:
        """The model's output reduced on the device to what the answers need (e.g. only the top k)."""
        if not items:
            return self.predict(items)
        return self.task.reduce(self.runner.run(items), params)

    def postprocess(self, raw: Any, items: Sequence[Prepared], params: Sequence[dict]) -> list:
        return self.task.answers(raw, items, params)

    def predict_batch(
        self, items: Sequence[Item], params: Sequence[dict] | None = None
    ) -> list[list[dict] | TwinferError]:
        """The device half for a batch; ``params[i]`` holds request i's top_k / score_threshold.
        Result i is image i's predictions, or the ``TwinferError`` of an ``Encoded`` image that
        turned out undecodable (the only way one image can fail here; its neighbours still run)."""
        params = list(params) if params is not None else [{}] * len(items)
        if len(params) != len(items):
            raise ValueError(f"{len(items)} items but {len(params)} parameter sets")
        with torch_process.SERVING.shared():
            ready = self.decoder.decode(items)
            good = [i for i, item in enumerate(ready) if isinstance(item, Prepared)]
            good_items = [ready[i] for i in good]
            good_params = [params[i] for i in good]
            with self.decoder.exclusive(items):
                raw = self.predict_reduced(good_items, good_params)  # ends on the host: nothing left queued
        results: list = [item if isinstance(item, TwinferError) else None for item in ready]
        predictions = self.postprocess(raw, good_items, good_params)
        if len(predictions) != len(good):
            raise RuntimeError(f"postprocess returned {len(predictions)} results for {len(good)} images")
        for i, prediction in zip(good, predictions):
            results[i] = prediction
        return results

    def classify_bytes(self, data: bytes, top_k: int = DEFAULT_TOP_K) -> list[dict]:
        """Convenience for one image, used by the demo and parity checks."""
        (result,) = self.predict_batch([self.load(data)], [{"top_k": top_k}])
        if isinstance(result, TwinferError):
            raise result
        return result

    def check_device(self) -> None:
        """Raise if the model's device no longer works. A sticky CUDA error (an illegal address, an
        Xid) poisons the context: every later call fails, so the replica must be replaced. Runs a
        tiny op and waits for it, taking the device lock like any batch would."""
        with self.decoder.exclusive(()):
            device_probe(self.device)


def planned_output_dim(config: ModelConfig) -> int | None:
    """The width of each answer vector (embeddings) without loading weights or touching a device:
    the architecture is built on torch's meta device, where tensors have shapes but no data."""
    task = config.make_task(labels=())
    if not task.vector_output:
        return None
    with torch.device("meta"):
        return task.output_dim(task.adapt_model(config.spec.build("random", config.options), config.spec.embed_head))
