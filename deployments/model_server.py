"""The model deployment: a thin ``@serve.batch`` adapter over ``shared.ModelWrapper``.

Images arrive checked and prepared by the ingress (``deployments/service.py``), a window of a
request's at a time; a bad image never gets here, so one batch can only fail for reasons that would
fail every member anyway. A JPEG left for the device decoder that no decoder can read is its own
result (``ModelWrapper.predict_batch``; ``shared.device_decode`` says when that happens).
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any

import torch
from ray import serve

from deployments.config import BatchingConfig, check_batches_can_fill
from deployments.metrics import ModelMetrics
from shared import ModelConfig, ModelWrapper, auto
from shared.errors import TwinferError
from shared.loader import Item
from shared.runner import bucket_sizes
from shared.wrapper import DTYPES


class ModelServer:
    def __init__(self, model_config: ModelConfig, max_ongoing_requests: int | None = None, name: str | None = None):
        """``name``: what clients call the model (the deployment entry's ``served_name``)."""
        self.config = ModelConfig.model_validate(model_config)
        self.name = name or self.config.name
        self.max_ongoing_requests = max_ongoing_requests
        self.wrapper = ModelWrapper(self.config, batch_sizes=())  # reconfigure warms the batcher's sizes
        self.metrics = ModelMetrics(self.name)
        self.batch_sizes: collections.Counter[int] = collections.Counter()  # debug view of batching
        self.batching: BatchingConfig | None = None
        self.settled: auto.Settled | None = None  # what /v1/models reports
        self._apply(
            BatchingConfig().resolved(self.config, self.wrapper.device.type)
        )  # Serve then calls reconfigure(user_config)

    def reconfigure(self, user_config: dict) -> None:
        """``user_config`` = BatchingConfig; applied after ``__init__`` and on every update. A
        partial update keeps the other settings; the start-up invariant is checked again."""
        batching = BatchingConfig.model_validate({**self.batching.model_dump(), **user_config})
        batching = batching.resolved(self.config, self.wrapper.device.type)
        if self.max_ongoing_requests is not None:
            check_batches_can_fill(batching, self.max_ongoing_requests)
        # every batch size the batcher may send, warmed before it may send it (with compile, no
        # user request ever meets a new shape); Serve calls this before the first request
        self.wrapper.warmup(bucket_sizes(batching.max_batch_size))
        self._apply(batching)

    def _apply(self, batching: BatchingConfig) -> None:
        if self.batching is None or batching.max_concurrent_batches != self.batching.max_concurrent_batches:
            # Ray 2.60 has no setter for max_concurrent_batches: build a new batch queue instead
            # (requests already queued on the old one still finish there).
            self._batched = serve.batch(
                max_batch_size=batching.max_batch_size,
                batch_wait_timeout_s=batching.batch_wait_timeout_s,
                max_concurrent_batches=batching.max_concurrent_batches,
            )(self._predict_batched)
        else:
            self._batched.set_max_batch_size(batching.max_batch_size)
            self._batched.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)
        self.batching = batching
        self.settled = auto.settle(
            self.config, self.wrapper.device.type, auto.Workload(online=True, batch_size=batching.max_batch_size)
        )

    async def infer(self, items: list[Item], params: dict) -> list[list[dict] | TwinferError]:
        """One window of a request's images (``deployments/service.py``); each joins the batch queue
        on its own, so it batches with every other request's images."""
        return list(await asyncio.gather(*(self._batched((item, params)) for item in items)))

    async def _predict_batched(self, requests: list[tuple[Item, dict]]) -> list[list[dict] | TwinferError]:
        items = [item for item, _ in requests]
        params = [p for _, p in requests]
        # Off the event loop, so the replica keeps taking requests to fill the next batch.
        return await asyncio.to_thread(self.run_batch, items, params)

    def run_batch(self, items: list[Item], params: list[dict]) -> list[list[dict] | TwinferError]:
        started = time.perf_counter()
        results = self.wrapper.predict_batch(items, params)
        self.metrics.model_seconds.observe(time.perf_counter() - started)
        self.metrics.batch_size.observe(len(items))
        self.batch_sizes[len(items)] += 1
        return results

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.config.name,
            "task": self.wrapper.task.name,
            "dim": self.wrapper.output_dim,
            "labels": len(self.wrapper.labels),
            "device": str(self.wrapper.device),
            "precision": str(DTYPES[self.settled.precision]).removeprefix("torch."),
            "compile": self.settled.compile,
            "cpu_threads": torch.get_num_threads() if self.wrapper.device.type == "cpu" else None,
            "weights": self.config.weights,
            "batching": self.batching.model_dump(),
            "replica": serve.get_replica_context().replica_id.unique_id,
        }

    def batch_stats(self) -> dict[int, int]:
        return dict(self.batch_sizes)

    def check_health(self) -> None:
        """Serve replaces a replica whose check fails 3 times: a poisoned CUDA context fails every
        batch, so the device itself is probed, not just the Python object."""
        self.wrapper.check_device()
