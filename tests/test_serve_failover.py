"""A model replica killed (SIGKILL) under load, and model calls that cannot finish.

No mocks: the tests kill a real replica process while client threads send requests in a closed
loop. With 2 replicas no request may fail; with 1, every failure must be our JSON 503
``unavailable`` with ``Retry-After``, and answers resume once Serve has replaced the replica.
Runs are bounded by request counts, never by wall time.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from dataclasses import dataclass, field

import httpx
import pytest
import ray
from ray import serve

from deployments.app import build, model_deployment_name
from deployments.config import AppArgs
from deployments.model_server import ModelServer
from tests.images import small_jpeg
from tests.serving import ANSWERS_NOT_ADMISSION

MODEL = "efficientnet_lite0"
GATE = "twinfer-failover-gate"
HELD, BROKEN = "held", "broken"  # served names of FaultyModelServer


def model_entry(replicas: int = 1, name: str | None = None) -> dict:
    entry = {
        "model": {"name": MODEL, "weights": "random"},
        "num_replicas": replicas,
        "num_cpus": 0.25,
        "max_ongoing_requests": 8,
        "max_queued_requests": 64,
        "batching": {"max_batch_size": 4, "batch_wait_timeout_s": 0.005, "max_concurrent_batches": 1},
    }
    return {**entry, "name": name} if name else entry


def app_args(models: list[dict], **ingress) -> AppArgs:
    return AppArgs.model_validate(
        {"ingress": {"num_cpus": 0.25, "decode_threads": 2, **ANSWERS_NOT_ADMISSION, **ingress}, "models": models}
    )


def replica_pids(app: str, deployment: str) -> dict[str, int]:
    """Live replicas of one deployment: actor name -> process id (asked of the actor itself)."""
    prefix = f"SERVE_REPLICA::{app}#{deployment}#"
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix)]
    return {
        name: ray.get(
            ray.get_actor(name, namespace="serve").__ray_call__.remote(lambda _replica: os.getpid()), timeout=120
        )
        for name in names
    }


@dataclass
class Outcome:
    after_kill: bool  # sent after the replica was killed
    status: int
    done: float  # time.monotonic() when the answer came
    body: dict | str
    retry_after: str | None


@dataclass
class Load:
    """``clients`` threads, each sending one request after the other until it has had
    ``successes_after_kill`` answers 200 to requests sent after the kill (or ``max_requests``)."""

    url: str
    clients: int
    successes_after_kill: int
    max_requests: int
    killed: threading.Event = field(default_factory=threading.Event)
    killed_at: float = 0.0
    outcomes: list[Outcome] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run_client(self) -> None:
        data = small_jpeg("coffee", size=64)
        ok_after = 0
        with httpx.Client(timeout=300) as client:
            for _ in range(self.max_requests):
                after = self.killed.is_set()
                response = client.post(self.url, content=data, headers={"content-type": "image/jpeg"})
                try:
                    body = response.json()
                except ValueError:
                    body = response.text
                with self.lock:
                    self.outcomes.append(
                        Outcome(
                            after, response.status_code, time.monotonic(), body, response.headers.get("retry-after")
                        )
                    )
                ok_after += after and response.status_code == 200
                if ok_after >= self.successes_after_kill:
                    return

    def completed(self) -> int:
        with self.lock:
            return len(self.outcomes)


def run_kill(serve_url: str, app: str, clients: int, warmup: int, successes_after_kill: int, max_requests: int):
    """Load the app, SIGKILL one model replica once ``warmup`` requests have completed, and wait
    for every client to finish. Returns (outcomes, killed pid, replicas before, replicas after)."""
    before = replica_pids(app, model_deployment_name(MODEL))
    load = Load(f"{serve_url}/{app}/v1/models/{MODEL}/classify", clients, successes_after_kill, max_requests)
    threads = [threading.Thread(target=load.run_client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    while load.completed() < warmup and any(t.is_alive() for t in threads):
        time.sleep(0.05)
    assert load.completed() >= warmup, "the clients stopped before the warm-up was done"
    victim = sorted(before.values())[0]
    load.killed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    load.killed.set()
    for thread in threads:
        thread.join(timeout=900)
        assert not thread.is_alive(), "a client is still running"
    after = replica_pids(app, model_deployment_name(MODEL))
    print(f"\nkilled pid {victim} of {len(before)} replica(s): {summarize(load)}")
    return load.outcomes, victim, before, after


def summarize(load: Load) -> str:
    """For the record (printed with -s): what the clients saw, and when answers came back."""
    statuses: dict[int, int] = {}
    for o in load.outcomes:
        statuses[o.status] = statuses.get(o.status, 0) + 1
    ok_after = [o.done - load.killed_at for o in load.outcomes if o.after_kill and o.status == 200]
    failed = [o.done - load.killed_at for o in load.outcomes if o.status != 200]
    return (
        f"{len(load.outcomes)} requests, statuses {statuses}; first 200 sent after the kill: "
        f"{min(ok_after, default=float('nan')):.1f} s after it; last failure {max(failed, default=float('nan')):.1f} s"
    )


@pytest.mark.timeout(900)
def test_killing_one_of_two_replicas_under_load_loses_no_request(serve_url):
    app = "failover-two"
    serve.run(build(app_args([model_entry(replicas=2)])), name=app, route_prefix=f"/{app}")
    try:
        outcomes, victim, before, after = run_kill(
            serve_url, app, clients=12, warmup=36, successes_after_kill=6, max_requests=200
        )
        assert len(before) == 2
        failures = [(o.status, o.body) for o in outcomes if o.status != 200]
        assert failures == []
        assert all(o.body["model"] == MODEL and len(o.body["predictions"]) == 5 for o in outcomes)
        assert victim not in after.values()  # the killed process really was a serving replica, now replaced or gone
    finally:
        serve.delete(app)


@pytest.mark.timeout(900)
def test_killing_the_only_replica_gives_json_503s_until_it_is_back(serve_url, faults_app):
    outcomes, victim, before, after = run_kill(
        serve_url, faults_app, clients=8, warmup=24, successes_after_kill=2, max_requests=400
    )
    failures = [o for o in outcomes if o.status != 200]
    assert len(before) == 1 and victim not in after.values()
    for o in failures:
        assert o.status == 503, (o.status, o.body)
        assert isinstance(o.body, dict) and o.body["error"]["code"] == "unavailable", o.body
        assert o.retry_after == "5"
    # every client had answers 200 again after the kill (it stops only then, or at max_requests)
    assert sum(o.after_kill and o.status == 200 for o in outcomes) == 8 * 2


@ray.remote(num_cpus=0)
class Gate:
    def __init__(self):
        self.event = asyncio.Event()
        self.waiting = 0
        self.passed = 0

    async def wait(self):
        self.waiting += 1
        await self.event.wait()

    def pass_(self):
        self.passed += 1

    def open(self):
        self.event.set()

    def counts(self) -> tuple[int, int]:
        return self.waiting, self.passed


class FaultyModelServer(ModelServer):
    """The real deployment, except for two served names: each call of ``HELD`` first waits for the
    test's gate, then says it passed; every batch of ``BROKEN`` raises an exception that is no
    ``TwinferError``."""

    async def infer(self, item, params):
        if self.name == HELD:
            gate = ray.get_actor(GATE, namespace="twinfer-tests")
            await gate.wait.remote()
            await gate.pass_.remote()
        return await super().infer(item, params)

    def run_batch(self, items, params):
        if self.name == BROKEN:
            raise RuntimeError("injected model failure")
        return super().run_batch(items, params)


@pytest.fixture(scope="module")
def faults_app(serve_url):
    """One replica of ``MODEL`` (killed by a test), ``HELD`` and ``BROKEN``; a short model deadline,
    so that requests waiting for a replacement replica or at the gate do time out."""
    app = "failover-faults"
    models = [model_entry(), model_entry(name=HELD), model_entry(name=BROKEN)]
    serve.run(
        build(app_args(models, model_call_timeout_s=2.0), model_server_cls=FaultyModelServer),
        name=app,
        route_prefix=f"/{app}",
    )
    yield app
    serve.delete(app)


def test_a_model_call_past_its_deadline_is_a_json_503_and_is_cancelled(serve_url, faults_app):
    gate = Gate.options(name=GATE, namespace="twinfer-tests").remote()

    def post(client):
        return client.post(
            f"/{faults_app}/v1/models/{HELD}/classify", content=small_jpeg(), headers={"content-type": "image/jpeg"}
        )

    try:
        with httpx.Client(base_url=serve_url, timeout=120) as client:
            response = post(client)
            assert response.status_code == 503
            assert response.json()["error"]["code"] == "unavailable"
            assert response.headers["retry-after"] == "5"
            assert ray.get(gate.counts.remote()) == (1, 0)
            gate.open.remote()
            assert post(client).status_code == 200
            # only the second call went past the gate: the first was cancelled on the replica
            assert ray.get(gate.counts.remote()) == (2, 1)
    finally:
        gate.open.remote()
        ray.kill(gate)


def test_an_unexpected_exception_is_a_json_500_internal(serve_url, faults_app):
    with httpx.Client(base_url=serve_url, timeout=120) as client:
        response = client.post(
            f"/{faults_app}/v1/models/{BROKEN}/classify", content=small_jpeg(), headers={"content-type": "image/jpeg"}
        )
        assert response.status_code == 500
        error = response.json()["error"]
        assert error["code"] == "internal"
        assert "injected model failure" not in error["message"]  # details go to the log, not to clients
        assert "retry-after" not in response.headers
