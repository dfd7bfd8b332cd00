"""Closed-loop load on loopback: ``clients`` workers each send, await, repeat, for a bounded time.

``--protocol v1`` (default) POSTs each image's bytes to ``--url``; ``v2`` POSTs it as the Open
Inference Protocol's binary request (one image, Triton's binary tensor data, the top 5 through
the classification extension, answered in binary: what a tritonclient user sends) to
``--url`` = ``.../v2/models/<m>/infer``; ``grpc`` sends the same request as ``ModelInfer`` to
``--url`` = ``host:port``.

Run as its own process (``python -m bench.load ...``) so the client does not share the server's
interpreter; prints one JSON line: requests, errors, req/s, p50/p99 latency in ms, and the p99 of
the first 50 requests (warm-up included: what the first callers of a fresh deployment see).

The HTTP client is aiohttp when it is installed, else httpx, else the standard library (one
thread and one keep-alive connection per client); ``--client`` picks one, and the JSON names it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import importlib.util
import json
import struct
import threading
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

V1_HEADERS = {"content-type": "image/jpeg"}
V2_OUTPUTS = [{"name": "probabilities", "parameters": {"classification": 5, "binary_data": True}}]
FIRST = 50  # requests whose latency is reported separately, warm-up or not
CLIENTS = ("aiohttp", "httpx", "stdlib")


def default_client() -> str:
    return next((name for name in CLIENTS[:2] if importlib.util.find_spec(name)), "stdlib")


def v2_request(image: bytes) -> tuple[bytes, dict[str, str]]:
    """One image as tritonclient.http sends it: JSON header, then the BYTES element (4-byte LE length + bytes)."""
    header = json.dumps(
        {
            "inputs": [
                {"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": len(image) + 4}}
            ],
            "outputs": V2_OUTPUTS,
        }
    ).encode()
    headers = {"content-type": "application/octet-stream", "inference-header-content-length": str(len(header))}
    return header + struct.pack("<I", len(image)) + image, headers


async def drive(clients: int, step: Callable[[int], Awaitable[None]], running: Callable[[], bool]) -> None:
    """The closed loop every load here runs (this module's and ``bench.soak_load``'s): ``clients``
    workers, worker ``c`` awaiting ``step(c)``, ``step(c + clients)``, ... while ``running()``."""

    async def worker(offset: int) -> None:
        i = offset
        while running():
            await step(i)
            i += clients

    await asyncio.gather(*(worker(c) for c in range(clients)))


async def closed_loop(
    url: str,
    bodies: list[bytes],
    clients: int,
    duration: float,
    warmup: float,
    client: str | None = None,
    protocol: str = "v1",
    model: str = "",
    application: str = "",
) -> dict:
    if protocol == "grpc":
        return await grpc_closed_loop(url, bodies, clients, duration, warmup, model, application)
    requests = [v2_request(b) if protocol == "v2" else (b, V1_HEADERS) for b in bodies]
    client = client or default_client()
    latencies: list[float] = []
    first: list[float] = []
    statuses: dict[int, int] = {}
    async with _POSTERS[client](clients) as post:
        start = time.perf_counter()  # after the client library's import and set-up
        measure_from, stop_at = start + warmup, start + warmup + duration

        async def step(i: int) -> None:
            now = time.perf_counter()
            status = await post(url, *requests[i % len(requests)])
            done = time.perf_counter()
            if len(first) < FIRST:
                first.append(done - now)
            if now >= measure_from:
                latencies.append((done - now, status))
                statuses[status] = statuses.get(status, 0) + 1

        await drive(clients, step, lambda: time.perf_counter() < stop_at)
    return {
        **_summary(latencies, statuses, 200, clients, duration),
        "first50_p99_ms": round(float(np.percentile(np.array(first) * 1000, 99)), 1) if first else None,
        "client": client,
    }


@contextlib.asynccontextmanager
async def _aiohttp_poster(clients: int):
    import aiohttp

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def post(url: str, body: bytes, headers: dict) -> int:
            try:
                async with session.post(url, data=body, headers=headers) as r:
                    await r.read()
                    return r.status
            except (aiohttp.ClientError, asyncio.TimeoutError):
                return -1

        yield post


@contextlib.asynccontextmanager
async def _httpx_poster(clients: int):
    import httpx

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=60) as session:

        async def post(url: str, body: bytes, headers: dict) -> int:
            try:
                return (await session.post(url, content=body, headers=headers)).status_code
            except (httpx.HTTPError, asyncio.TimeoutError):
                return -1

        yield post


@contextlib.asynccontextmanager
async def _stdlib_poster(clients: int):
    local = threading.local()
    pool = ThreadPoolExecutor(clients, thread_name_prefix="load")
    loop = asyncio.get_running_loop()

    def blocking_post(url: str, body: bytes, headers: dict) -> int:
        parts = urllib.parse.urlsplit(url)
        connection = getattr(local, "connection", None)
        if connection is None:
            connection = local.connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        try:
            connection.request(
                "POST", parts.path + (f"?{parts.query}" if parts.query else ""), body=body, headers=headers
            )
            response = connection.getresponse()
            response.read()
            return response.status
        except (OSError, http.client.HTTPException):
            connection.close()
            local.connection = None
            return -1

    async def post(url: str, body: bytes, headers: dict) -> int:
        return await loop.run_in_executor(pool, blocking_post, url, body, headers)

    try:
        yield post
    finally:
        pool.shutdown(wait=False)


async def grpc_closed_loop(
    address: str, bodies: list[bytes], clients: int, duration: float, warmup: float, model: str, application: str
) -> dict:
    """``ModelInfer`` with pre-serialised requests over one channel (as tritonclient.grpc does);
    ``application`` is Serve's routing key, needed when more than one application runs."""
    import grpc

    from deployments.v2.open_inference_grpc_pb2 import ModelInferRequest

    def serialized(image: bytes) -> bytes:
        request = ModelInferRequest(model_name=model)
        request.inputs.add(name="image", datatype="BYTES", shape=[1])
        request.outputs.add(name="probabilities").parameters["classification"].int64_param = 5
        request.raw_input_contents.append(struct.pack("<I", len(image)) + image)
        return request.SerializeToString()

    requests = [serialized(b) for b in bodies]
    metadata = (("application", application),) if application else None
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + duration
    async with grpc.aio.insecure_channel(address) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")  # bytes in, bytes out

        async def step(i: int) -> None:
            now = time.perf_counter()
            try:
                await infer(requests[i % len(requests)], timeout=60, metadata=metadata)
                status = "OK"
            except grpc.aio.AioRpcError as exc:
                status = exc.code().name
            done = time.perf_counter()
            if now >= measure_from:
                latencies.append((done - now, status))
                statuses[status] = statuses.get(status, 0) + 1

        await drive(clients, step, lambda: time.perf_counter() < stop_at)
    return _summary(latencies, statuses, "OK", clients, duration)


def _summary(latencies: list[tuple[float, object]], statuses: dict, ok_status, clients: int, duration: float) -> dict:
    """Counts and latency percentiles: over every answer, and over the successful ones alone (under
    overload the refusals are fast, and the two differ)."""
    ok = statuses.get(ok_status, 0)
    every = [seconds for seconds, _ in latencies]
    good = [seconds for seconds, status in latencies if status == ok_status]
    return {
        "clients": clients,
        "requests": len(latencies),
        "ok": ok,
        "errors": len(latencies) - ok,
        "statuses": {str(status): count for status, count in sorted(statuses.items(), key=str)},
        "req_s": round(ok / duration, 1),
        "p50_ms": _percentile(every, 50),
        "p99_ms": _percentile(every, 99),
        "ok_p50_ms": _percentile(good, 50),
        "ok_p99_ms": _percentile(good, 99),
    }


def _percentile(seconds: list[float], q: float) -> float | None:
    return round(float(np.percentile(np.array(seconds) * 1000, q)), 1) if seconds else None


_POSTERS = {"aiohttp": _aiohttp_poster, "httpx": _httpx_poster, "stdlib": _stdlib_poster}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--files", required=True, help="a directory of images to cycle through")
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument(
        "--client", choices=CLIENTS, default=None, help="HTTP client library (default: the first installed)"
    )
    parser.add_argument("--protocol", choices=("v1", "v2", "grpc"), default="v1")
    parser.add_argument("--model", default="efficientnet_lite0", help="grpc: the model to call")
    parser.add_argument("--application", default="", help="grpc: Serve's application name (when several run)")
    args = parser.parse_args(argv)
    bodies = [p.read_bytes() for p in sorted(Path(args.files).rglob("*.jpg"))[:512]]
    result = closed_loop(
        args.url,
        bodies,
        args.clients,
        args.duration,
        args.warmup,
        args.client,
        args.protocol,
        args.model,
        args.application,
    )
    print(json.dumps(asyncio.run(result)))


if __name__ == "__main__":
    main()
