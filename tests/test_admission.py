"""What an ingress replica takes on: bodies by bytes, requests by images and by how long they would
wait, each decided before the work; a multi-image request as a whole; health checks from a cache.
No Ray (``tests/service_doubles.py``)."""

from __future__ import annotations

import asyncio
import base64
import json
import threading

import httpx
import pytest

from deployments.admission import RATE_TIME_CONSTANT_S, Admission, ServiceRate
from deployments.service import StatusCache
from shared.errors import Overloaded
from tests.images import small_jpeg
from tests.service_doubles import MODEL, service_with

CLASSIFY = f"/v1/models/{MODEL}/classify"
INFER = f"/v2/models/{MODEL}/infer"
JPEG = {"content-type": "image/jpeg"}


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def v2_body(count: int) -> bytes:
    data = [base64.b64encode(small_jpeg("coffee", 64)).decode()] * count
    return json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [count], "data": data}]}).encode()


def asgi_client(service) -> httpx.AsyncClient:
    from deployments.ingress import http_app

    return httpx.AsyncClient(transport=httpx.ASGITransport(app=http_app(service)), base_url="http://twinfer")


# ---- the rate and the budgets, on a clock the test moves -------------------------------------------------
def test_the_rate_is_images_per_busy_second_and_an_idle_spell_does_not_lower_it():
    clock = Clock()
    rate = ServiceRate(clock)
    assert rate.per_second() is None  # nothing to go by yet
    for _ in range(20):  # busy: 10 images a second
        rate.set_busy(True)
        clock.now += 1.0
        rate.add(10)
        rate.set_busy(False)
    measured = rate.per_second()
    assert measured == pytest.approx(10.0, rel=0.1)  # an exponentially weighted estimate
    clock.now += 5.0  # idle: the images and the busy time decay together
    assert rate.per_second() == pytest.approx(measured)
    clock.now += 20 * RATE_TIME_CONSTANT_S  # long forgotten: no rate to go by
    assert rate.per_second() is None


def test_a_request_that_would_wait_past_the_budget_is_refused_and_one_alone_never_is():
    clock = Clock()
    admission = Admission(max_images=1000, max_wait_s=1.0, clock=clock)
    for _ in range(50):  # 10 images a second, long enough for the estimate to settle
        with admission.admit(10) as ticket:
            clock.now += 1.0
            ticket.answered(10)
    rate = admission.rate.per_second()
    assert rate == pytest.approx(10, rel=0.1)
    ahead = int(rate)  # images whose turn takes just under a second
    with admission.admit(ahead):  # alone: admitted
        with admission.admit(1):  # waits for `ahead` images: under the budget
            with pytest.raises(Overloaded, match=r"waiting about 1\.\d s, over its 1 s budget"):
                with admission.admit(1):  # would wait for ahead + 1: over it
                    pass
    with admission.admit(500):  # alone again: admitted however long it will take
        assert admission.wait_s() == pytest.approx(500 / rate)
    assert admission.images == 0


def test_the_image_cap_refuses_a_request_as_a_whole():
    admission = Admission(max_images=8)
    with admission.admit(5):
        with pytest.raises(Overloaded, match="5 images in progress, at most 8"):
            with admission.admit(4):
                pass
        with admission.admit(3):
            assert admission.images == 8
    assert admission.images == 0


def test_body_bytes_are_reserved_and_released():
    admission = Admission(max_images=8, max_bytes=100)
    with admission.body_bytes() as first:
        first.grow(80)
        with pytest.raises(Overloaded, match="holds 80 bytes of request bodies, at most 100"):
            with admission.body_bytes() as second:
                second.grow(30)
        with admission.body_bytes() as third:
            third.grow(20)
            assert admission.bytes == 100
    assert admission.bytes == 0
    with admission.body_bytes() as alone:
        alone.grow(500)  # one body alone is always read (the cap on each body is the body limit)


# ---- through the ingress application ---------------------------------------------------------------------
def test_two_hundred_images_in_one_request_are_answered_by_an_idle_ingress_a_window_at_a_time():
    service, handle = service_with(images_per_call=8, max_inflight_images=64)
    peak = []

    infer = handle._infer

    def counting(items, params):
        peak.append(service.admission.images)
        return infer(items, params)

    handle.infer.function = counting

    async def run():
        async with asgi_client(service) as client:
            return await client.post(INFER, content=v2_body(200), timeout=300)

    response = asyncio.run(run())
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["shape"] == [200, 5]
    assert sum(handle.calls) == 200 and max(handle.calls) == 8  # windows of one replica's batches
    assert max(peak) == 64  # the request holds the image budget, no more


def test_a_multi_image_request_beyond_the_budget_is_refused_before_any_decoding():
    gate = threading.Event()
    service, handle = service_with(gate=gate, max_inflight_images=4)

    async def run():
        async with asgi_client(service) as client:
            first = asyncio.ensure_future(client.post(CLASSIFY, content=small_jpeg(), headers=JPEG, timeout=60))
            while not handle.calls:  # decoded and held at the model
                await asyncio.sleep(0.01)
            decoded = service.metrics.decoded
            refused = await client.post(INFER, content=v2_body(4), timeout=60)
            assert service.metrics.decoded == decoded  # none of its four images was decoded
            gate.set()
            return refused, await first

    refused, first = asyncio.run(run())
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.json()["error"].startswith("overloaded: this ingress replica is at capacity (1 images")
    assert first.status_code == 200


def test_bodies_beyond_the_byte_budget_are_refused_before_they_are_read():
    service, _ = service_with(max_body_bytes=100_000, max_inflight_bytes=150_000)
    started, release = asyncio.Event(), asyncio.Event()

    async def slow_body():
        yield b"\xff\xd8" + b"\x00" * 1000
        started.set()
        await release.wait()
        yield b"\x00" * 98_998

    async def run():
        async with asgi_client(service) as client:
            held = asyncio.ensure_future(
                client.post(CLASSIFY, content=slow_body(), headers={**JPEG, "content-length": "100000"}, timeout=60)
            )
            await started.wait()  # 100 000 bytes reserved, a thousand read
            refused = await client.post(CLASSIFY, content=b"\x00" * 60_000, headers=JPEG, timeout=60)
            small = await client.post(CLASSIFY, content=small_jpeg(), headers=JPEG, timeout=60)
            release.set()
            return refused, small, await held

    refused, small, held = asyncio.run(run())
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "overloaded"
    assert "bytes of request bodies" in refused.json()["error"]["message"]
    assert small.status_code == 200  # what fits the budget still gets in
    assert held.status_code == 400 and held.json()["error"]["code"] == "invalid_image"  # read in full, then decoded
    assert service.admission.bytes == 0


def test_a_body_cut_off_by_its_client_is_client_disconnected_never_internal(caplog):
    from deployments.ingress import http_app

    service, handle = service_with()
    sent = []
    messages = [
        {"type": "http.request", "body": b"\xff\xd8\xff", "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": CLASSIFY,
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"image/jpeg"), (b"content-length", b"30000")],
    }
    asyncio.run(http_app(service)(scope, receive, send))
    assert sent[0]["status"] == 499
    assert json.loads(sent[1]["body"])["error"]["code"] == "client_disconnected"
    assert service.metrics.counted == [{"model": MODEL, "code": "client_disconnected"}]
    assert handle.calls == [] and service.admission.bytes == 0
    assert "unexpected error" not in caplog.text


def test_a_flood_of_health_checks_asks_serve_once():
    fetched = []

    def states():
        fetched.append(1)
        return {"ingress": "HEALTHY", f"model-{MODEL}": "HEALTHY"}

    service, _ = service_with(states=states)
    service._states.ttl_s = 3600  # the flood below, however slow the machine, is within one TTL

    async def run():
        async with asgi_client(service) as client:
            answers = await asyncio.gather(
                *(client.get(path) for path in ["/healthz", "/v2/health/ready", f"/v2/models/{MODEL}/ready"] * 100)
            )
        return answers

    answers = asyncio.run(run())
    assert all(a.status_code == 200 for a in answers) and len(fetched) == 1


def test_the_status_cache_asks_again_once_its_answer_is_old():
    fetched = []
    cache = StatusCache(lambda: fetched.append(1) or {"x": "HEALTHY"}, ttl_s=0.05)

    async def run():
        await asyncio.gather(*(cache.get() for _ in range(20)))
        await asyncio.sleep(0.06)
        await cache.get()

    asyncio.run(run())
    assert len(fetched) == 2
