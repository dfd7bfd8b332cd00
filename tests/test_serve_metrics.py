"""``twinfer_errors_total`` as Prometheus sees it: read from Ray's metrics endpoint, not from a double.

A model name from a URL becomes the ``model`` tag only if that model is served (else ``unknown``),
so requests for random names add no time series; unexpected exceptions are counted as ``internal``.
"""

from __future__ import annotations

import re
import time
import uuid

import httpx
import ray
from ray import serve

from deployments.app import build
from deployments.config import AppArgs
from deployments.model_server import ModelServer
from tests.images import small_jpeg

APP = "metrics-tags"
MODEL = "efficientnet_lite0"
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


class BrokenModelServer(ModelServer):
    def run_batch(self, items, params):
        raise RuntimeError("injected model failure")


def error_series(metrics_url: str) -> tuple[str, dict[tuple[str, str], float]]:
    """The whole exposition text, and this app's twinfer_errors_total as {(model, code): value}."""
    text = httpx.get(metrics_url, timeout=30).text
    series: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if not line.startswith("ray_twinfer_errors_total{"):
            continue
        labels_text, value = line[len("ray_twinfer_errors_total{") :].rsplit("} ", 1)
        labels = dict(LABEL.findall(labels_text))
        if labels.get("application") == APP:
            series[(labels["model"], labels["code"])] = float(value)
    return text, series


def test_unserved_model_names_are_tagged_unknown_and_internal_errors_are_counted(serve_url):
    args = AppArgs.model_validate(
        {
            "ingress": {"num_cpus": 0.25, "decode_threads": 1},
            "models": [
                {
                    "model": {"name": MODEL, "weights": "random"},
                    "num_cpus": 0.25,
                    "max_ongoing_requests": 4,
                    "batching": {"max_batch_size": 2, "batch_wait_timeout_s": 0.0, "max_concurrent_batches": 1},
                }
            ],
        }
    )
    serve.run(build(args, model_server_cls=BrokenModelServer), name=APP, route_prefix=f"/{APP}")
    metrics_url = f"http://127.0.0.1:{ray.nodes()[0]['MetricsExportPort']}/metrics"
    random_names = [f"m{uuid.uuid4().hex[:12]}" for _ in range(5)]
    image = {"content": small_jpeg(), "headers": {"content-type": "image/jpeg"}}
    try:
        with httpx.Client(base_url=f"{serve_url}/{APP}", timeout=120) as client:
            for name in random_names:
                assert client.post(f"/v1/models/{name}/classify", **image).json()["error"]["code"] == "model_not_found"
                assert client.get(f"/v1/models/{name}/detect").json()["error"]["code"] == "method_not_allowed"
            assert client.post(f"/v1/models/{MODEL}/classify", **image).json()["error"]["code"] == "internal"
            assert client.get(f"/v1/models/{MODEL}/classify").json()["error"]["code"] == "method_not_allowed"
            assert client.get("/v1/nothing").json()["error"]["code"] == "not_found"
        expected = {
            ("unknown", "model_not_found"): len(random_names),
            ("unknown", "method_not_allowed"): len(random_names),
            (MODEL, "internal"): 1,
            (MODEL, "method_not_allowed"): 1,
            ("-", "not_found"): 1,
        }
        # Ray's agent exports what replicas report every few seconds: poll until all is there
        for _ in range(240):
            text, series = error_series(metrics_url)
            if series == expected:
                break
            time.sleep(0.5)
        assert series == expected
        assert not any(name in text for name in random_names)  # in no metric, under no tag
    finally:
        serve.delete(APP)
