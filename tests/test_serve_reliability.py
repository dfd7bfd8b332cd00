"""Overload answers 503 at once, and ``serve run serve_config.yaml`` starts, serves and stops.

Requests are held with a gate actor the test opens, never with sleeps.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures as cf
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import ray
import yaml
from ray import serve

from deployments.app import build
from deployments.config import AppArgs
from deployments.model_server import ModelServer
from tests.images import small_jpeg
from twinfer.ports import free_loopback_port
from twinfer.processes import with_default_sigint

pytestmark = pytest.mark.process

ROOT = Path(__file__).resolve().parent.parent
GATE = "twinfer-test-gate"


@ray.remote(num_cpus=0)
class Gate:
    def __init__(self):
        self.event = asyncio.Event()
        self.waiting = 0

    async def wait(self):
        self.waiting += 1
        await self.event.wait()

    def open(self):
        self.event.set()

    def waiters(self) -> int:
        return self.waiting


class HeldModelServer(ModelServer):
    """The real deployment, except each batch first waits for the test's gate."""

    def run_batch(self, items, params):
        ray.get(ray.get_actor(GATE, namespace="twinfer-tests").wait.remote())
        return super().run_batch(items, params)


def test_requests_beyond_ongoing_plus_queued_get_503_without_waiting(serve_url):
    gate = Gate.options(name=GATE, namespace="twinfer-tests").remote()
    ongoing, queued, extra = 1, 2, 3
    args = AppArgs.model_validate(
        {
            "ingress": {"num_cpus": 0.25, "decode_threads": 2},
            "models": [
                {
                    "model": {"name": "efficientnet_lite0", "weights": "random"},
                    "num_cpus": 0.25,
                    "max_ongoing_requests": ongoing,
                    "max_queued_requests": queued,
                    "batching": {"max_batch_size": 1, "batch_wait_timeout_s": 0.0, "max_concurrent_batches": 1},
                }
            ],
        }
    )
    serve.run(build(args, model_server_cls=HeldModelServer), name="held", route_prefix="/held")
    data = small_jpeg("coffee")
    pool = cf.ThreadPoolExecutor(ongoing + queued + extra)
    try:
        with httpx.Client(base_url=serve_url, timeout=120) as client:

            def post(_):
                return client.post(
                    "/held/v1/models/efficientnet_lite0/classify", content=data, headers={"content-type": "image/jpeg"}
                )

            futures = [pool.submit(post, i) for i in range(ongoing + queued + extra)]
            # While the model is held nothing can succeed, so the first `extra` answers are refusals.
            first = []
            for future in cf.as_completed(futures, timeout=60):
                first.append(future.result())
                if len(first) == extra:
                    break
            assert [r.status_code for r in first] == [503] * extra
            gate.open.remote()
            statuses = [f.result(timeout=60).status_code for f in futures]
            admitted = statuses.count(200)
            # Serve's router may refuse a little early under simultaneous arrival (router.py says
            # so), never late: at most ongoing + queued get in, everything else is a 503.
            assert ongoing <= admitted <= ongoing + queued, statuses
            assert statuses.count(503) == len(statuses) - admitted
            refused = [f.result() for f in futures if f.result().status_code == 503]
            assert all(r.json()["error"]["code"] == "overloaded" for r in refused)
            assert all(r.headers.get("retry-after") == "1" for r in refused)
            assert ray.get(gate.waiters.remote()) == admitted  # each admitted request went through the model
    finally:
        gate.open.remote()
        pool.shutdown(wait=True)
        serve.delete("held")
        ray.kill(gate)


def test_admission_counts_images_and_admits_one_request_alone_whatever_its_size():
    from deployments.admission import Admission
    from shared.errors import Overloaded

    admission = Admission(max_images=4)
    with admission.admit(9):  # a batch over the cap runs when nothing else does
        with pytest.raises(Overloaded):
            with admission.admit(1):
                pass
    with admission.admit(3):
        with admission.admit(1):
            assert admission.images == 4
            with pytest.raises(Overloaded, match="4 images in progress, at most 4"):
                with admission.admit(1):
                    pass
    assert admission.images == 0  # released on the way out, errors included


def test_an_ingress_at_its_image_cap_refuses_at_once_before_decoding(serve_url):
    """One image in progress (held at the model) fills a cap of 1: the next request is refused with
    the documented JSON 503 while the first still runs, and the first then succeeds."""
    gate = Gate.options(name=GATE, namespace="twinfer-tests").remote()
    args = AppArgs.model_validate(
        {
            "ingress": {"num_cpus": 0.25, "decode_threads": 1, "max_inflight_images": 1},
            "models": [
                {
                    "model": {"name": "efficientnet_lite0", "weights": "random"},
                    "num_cpus": 0.25,
                    "batching": {"max_batch_size": 1, "batch_wait_timeout_s": 0.0, "max_concurrent_batches": 1},
                }
            ],
        }
    )
    serve.run(build(args, model_server_cls=HeldModelServer), name="capped", route_prefix="/capped")
    data = small_jpeg("coffee")
    pool = cf.ThreadPoolExecutor(1)
    try:
        with httpx.Client(base_url=f"{serve_url}/capped", timeout=120) as client:

            def post():
                return client.post(
                    "/v1/models/efficientnet_lite0/classify", content=data, headers={"content-type": "image/jpeg"}
                )

            first = pool.submit(post)
            deadline = time.monotonic() + 60
            while ray.get(gate.waiters.remote()) == 0:  # the first image is decoded and at the model
                assert time.monotonic() < deadline and not first.done(), first.done() and first.result().text
                time.sleep(0.05)
            refused = post()
            assert refused.status_code == 503 and refused.headers.get("retry-after") == "1"
            error = refused.json()["error"]
            assert error["code"] == "overloaded" and "ingress replica is at capacity" in error["message"]
            gate.open.remote()
            assert first.result(timeout=60).status_code == 200
            assert post().status_code == 200  # the slot is free again
    finally:
        gate.open.remote()
        pool.shutdown(wait=True)
        serve.delete("capped")
        ray.kill(gate)


def v2_json(images: list[bytes]) -> bytes:
    data = [base64.b64encode(image).decode() for image in images]
    return json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(data)], "data": data}]}).encode()


def test_a_child_started_with_sigint_ignored_gets_it_back():
    """What a background job's children inherit (SIGINT ignored) would make `serve run` deaf to SIGINT."""
    reports = "import signal; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)"
    probe = [sys.executable, "-c", reports]

    def run(argv):
        ignoring = lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)  # noqa: E731 - a preexec_fn
        return subprocess.run(argv, preexec_fn=ignoring, capture_output=True, text=True, timeout=60).stdout.strip()

    assert run(probe) == "False"  # the inherited state, plain
    assert run(with_default_sigint(probe)) == "True"


@pytest.mark.timeout(300)
def test_serve_run_config_yaml_answers_and_shuts_down(tmp_path, embedded_wrapper):
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    limit = int(config["controller_options"]["runtime_env"]["env_vars"]["RAY_SERVE_GRPC_MAX_MESSAGE_SIZE"])
    port = free_loopback_port()
    config["http_options"].update(host="127.0.0.1", port=port)
    grpc_port = free_loopback_port()
    config["grpc_options"]["port"] = grpc_port
    (tmp_path / "serve_config.yaml").write_text(yaml.safe_dump(config))
    env = dict(os.environ, RAY_ADDRESS="local")  # its own Ray, not the test session's
    serve_bin = Path(sys.executable).parent / "serve"
    log = tmp_path / "serve-run.log"  # a file, not a pipe: nobody reads a pipe until the end, and a full one blocks
    process = subprocess.Popen(
        with_default_sigint([str(serve_bin), "run", str(tmp_path / "serve_config.yaml")]),
        cwd=ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=30) as client:
            deadline = time.monotonic() + 240
            while True:  # poll /healthz until every deployment is HEALTHY
                assert process.poll() is None, log.read_text(errors="replace")[-3000:]
                assert time.monotonic() < deadline, "serve run never became healthy"
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.5)
            data = small_jpeg("coffee", size=200)
            response = client.post(
                "/v1/models/efficientnet_lite0/classify", content=data, headers={"content-type": "image/jpeg"}
            )
            assert response.status_code == 200
            assert [p["label"] for p in response.json()["predictions"]] == [
                p["label"] for p in embedded_wrapper.classify_bytes(data)
            ]
            # README's limit holds on an idle server: 200 images in one /v2 request are answered
            many = client.post("/v2/models/efficientnet_lite0/infer", content=v2_json([data] * 200), timeout=240)
            assert many.status_code == 200, many.text[:500]
            assert {"name": "labels", "datatype": "BYTES", "shape": [200, 5]}.items() <= many.json()["outputs"][
                2
            ].items()
        # the config's gRPC ingress; one application, so calls need no `application` metadata
        import numpy as np
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        with grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}") as triton:
            assert triton.is_server_live() and triton.is_model_ready("efficientnet_lite0")
            # a message over the body cap is refused by the transport from its length, not buffered
            # and handed to the ingress (the config's controller_options set the proxy's limit)
            oversized = grpcclient.InferInput("image", [1], "BYTES")
            oversized.set_data_from_numpy(np.array([b"\xff" * (limit + 1)], dtype=np.object_))
            with pytest.raises(InferenceServerException) as refused:
                triton.infer("efficientnet_lite0", [oversized])
            assert refused.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
            assert "larger than max" in refused.value.message() and str(limit) in refused.value.message()
        process.send_signal(signal.SIGINT)
        try:
            assert process.wait(timeout=90) == 0
        except subprocess.TimeoutExpired:
            pytest.fail("serve run did not stop within 90 s of SIGINT:\n" + log.read_text(errors="replace")[-3000:])
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
