"""Serve metrics (on top of Serve's built-in request metrics), exported through Ray's metrics agent."""

from __future__ import annotations

from ray.serve.metrics import Counter, Histogram

UNKNOWN_MODEL = "unknown"  # the model tag for names not served: a bounded set of time series
NO_MODEL = "-"  # ... and for routes that name no model

_LATENCY_BOUNDARIES = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0]


class IngressMetrics:
    def __init__(self) -> None:
        self.decode_seconds = Histogram(
            "twinfer_decode_seconds",
            description="decode + prepare time per image",
            boundaries=_LATENCY_BOUNDARIES,
            tag_keys=("model",),
        )
        # `model` is a served model's name, "unknown" for any other name in a URL, "-" for routes
        # without a model: never free text from the request, so the number of series stays bounded
        self.errors = Counter(
            "twinfer_errors_total", description="requests answered with an error, by code", tag_keys=("model", "code")
        )
        self.retries = Counter(
            "twinfer_model_retries_total",
            description="model calls re-sent because the replica died or was unreachable, by exception class",
            tag_keys=("model", "reason"),
        )


class ModelMetrics:
    def __init__(self, model: str) -> None:
        self.batch_size = Histogram(
            "twinfer_batch_size",
            description="images per model batch",
            boundaries=[1, 2, 4, 8, 16, 32, 64, 128, 256],
            tag_keys=("model",),
        )
        self.model_seconds = Histogram(
            "twinfer_model_seconds",
            description="device time per batch (predict + postprocess)",
            boundaries=_LATENCY_BOUNDARIES,
            tag_keys=("model",),
        )
        self.batch_size.set_default_tags({"model": model})
        self.model_seconds.set_default_tags({"model": model})
