"""A model entry's ``autoscaling_config`` is Serve's autoscaler: replicas are added while requests
are held in progress, and removed once the load is gone; no request is lost. Requests are held by
a gate actor the test opens, as Ray's own autoscaling tests do."""

from __future__ import annotations

import concurrent.futures as cf
import time

import httpx
import pytest
import ray
from ray import serve

from deployments.app import build
from deployments.config import AppArgs, model_deployment_name
from tests.images import small_jpeg
from tests.test_serve_reliability import GATE, Gate, HeldModelServer

APP = "autoscaled"
MODEL = "efficientnet_lite0"
# the ingress's handle reports its requests to Serve's controller this often (Serve's default: 10 s)
FAST_METRICS = {"env_vars": {"RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5"}}


def running_replicas() -> int:
    deployment = serve.status().applications[APP].deployments[model_deployment_name(MODEL)]
    return deployment.replica_states.get("RUNNING", 0)


def wait_for(condition, what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)


@pytest.mark.timeout(400)
def test_replicas_follow_the_requests_in_progress_up_and_back_down(serve_url):
    gate = Gate.options(name=GATE, namespace="twinfer-tests").remote()
    args = AppArgs.model_validate(
        {
            "ingress": {"num_cpus": 0.1, "decode_threads": 2, "max_queue_wait_s": None, "model_call_timeout_s": 240},
            "models": [
                {
                    "model": {"name": MODEL, "weights": "random"},
                    "num_cpus": 0.1,
                    "max_ongoing_requests": 2,
                    "batching": {"max_batch_size": 1, "batch_wait_timeout_s": 0.0, "max_concurrent_batches": 1},
                    "autoscaling_config": {
                        "min_replicas": 1,
                        "max_replicas": 3,
                        "target_ongoing_requests": 1,
                        "upscale_delay_s": 0,
                        "downscale_delay_s": 2,
                        "look_back_period_s": 1,
                    },
                }
            ],
        }
    )
    serve.run(build(args, model_server_cls=HeldModelServer, ingress_runtime_env=FAST_METRICS), name=APP,
              route_prefix=f"/{APP}")  # fmt: skip
    pool = cf.ThreadPoolExecutor(6)
    try:
        assert running_replicas() == 1
        with httpx.Client(base_url=f"{serve_url}/{APP}", timeout=300) as client:

            def post(_):
                return client.post(
                    f"/v1/models/{MODEL}/classify", content=small_jpeg(), headers={"content-type": "image/jpeg"}
                )

            held = [pool.submit(post, i) for i in range(6)]  # 6 in progress against a target of 1 each
            wait_for(lambda: running_replicas() == 3, "the autoscaler to reach max_replicas")
            assert [f.result().text for f in held if f.done()] == []  # still held: the replicas came while they waited
            ray.get(gate.open.remote())
            assert [f.result(timeout=120).status_code for f in held] == [200] * 6  # none lost
            wait_for(lambda: running_replicas() == 1, "the autoscaler to return to min_replicas")
            assert post(0).status_code == 200
    finally:
        gate.open.remote()
        pool.shutdown(wait=True)
        serve.delete(APP)
        ray.kill(gate)
