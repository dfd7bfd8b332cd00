"""The ingress's service without Serve: model handles that run the real wrapper in a thread, and
the metrics and gRPC context Serve would hand it. For tests of the HTTP and gRPC adapters, the
service and admission (fast tier: no Ray, no processes)."""

from __future__ import annotations

import asyncio
import functools
import threading

from deployments.config import IngressConfig
from deployments.service import InferenceService
from shared import ModelConfig, ModelWrapper

MODEL = "efficientnet_lite0"


@functools.cache
def wrapper() -> ModelWrapper:
    return ModelWrapper(ModelConfig())


class Call:
    """What ``handle.method.remote(...)`` returns: awaitable, cancellable."""

    def __init__(self, task: asyncio.Future):
        self.task = task

    def __await__(self):
        return self.task.__await__()

    def cancel(self):
        self.task.cancel()


class Method:
    def __init__(self, function):
        self.function = function

    def remote(self, *args):
        return Call(asyncio.ensure_future(asyncio.to_thread(self.function, *args)))


class ModelHandle:
    """A model deployment's handle: ``infer`` runs the wrapper's ``predict_batch`` on a window of
    items (as ``ModelServer.infer`` does, less the batch queue), after ``gate`` opens if one is set."""

    def __init__(self, gate: threading.Event | None = None):
        self.gate = gate
        self.calls: list[int] = []  # images per infer call
        self.infer = Method(self._infer)
        self.describe = Method(lambda: {"name": MODEL, "labels": len(wrapper().labels), "dim": None})

    def _infer(self, items, params):
        self.calls.append(len(items))
        if self.gate is not None:
            assert self.gate.wait(60), "the test never opened the gate"
        return wrapper().predict_batch(items, [params] * len(items))


class CountingMetrics:
    """IngressMetrics' interface, counting: ``errors`` as tag dicts, ``decoded`` images."""

    def __init__(self):
        self.counted: list[dict] = []
        self.decoded = 0
        self.errors = self.retries = self
        self.decode_seconds = DecodeTimes(self)

    def inc(self, tags):
        self.counted.append(tags)


class DecodeTimes:
    def __init__(self, metrics: CountingMetrics):
        self.metrics = metrics

    def observe(self, value, tags):
        self.metrics.decoded += 1


class FakeContext:
    """What Serve hands a gRPC method: the call's metadata, and a code and details to set."""

    def __init__(self, metadata=()):
        self.metadata, self.code, self.details = list(metadata), None, None

    def invocation_metadata(self):
        return self.metadata

    def set_code(self, code):
        self.code = code

    def set_details(self, details):
        self.details = details


def service_with(
    gate: threading.Event | None = None, images_per_call: int = 8, states=None, **settings
) -> tuple[InferenceService, ModelHandle]:
    """A service serving the embedded model through a ``ModelHandle``; ``settings``: IngressConfig fields."""
    handle = ModelHandle(gate)
    service = InferenceService(
        {MODEL: handle},
        {MODEL: {"model": ModelConfig().model_dump(), "images_per_call": images_per_call}},
        IngressConfig.model_validate(settings),
        metrics=CountingMetrics(),
        deployment_states=states or (lambda: {"ingress": "HEALTHY", f"model-{MODEL}": "HEALTHY"}),
    )
    return service, handle
