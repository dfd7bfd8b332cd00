"""Closed-loop HTTP load on loopback: ``clients`` workers each POST, await, repeat, for a bounded time.

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
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

HEADERS = {"content-type": "image/jpeg"}
FIRST = 50  # requests whose latency is reported separately, warm-up or not
CLIENTS = ("aiohttp", "httpx", "stdlib")


def default_client() -> str:
    return next((name for name in CLIENTS[:2] if importlib.util.find_spec(name)), "stdlib")


async def closed_loop(url: str, bodies: list[bytes], clients: int, duration: float, warmup: float, client: str | None = None) -> dict:
    client = client or default_client()
    latencies: list[float] = []
    first: list[float] = []
    statuses: dict[int, int] = {}
    async with _POSTERS[client](clients) as post:
        start = time.perf_counter()  # after the client library's import and set-up
        measure_from, stop_at = start + warmup, start + warmup + duration

        async def worker(offset: int) -> None:
            i = offset
            while (now := time.perf_counter()) < stop_at:
                status = await post(url, bodies[i % len(bodies)])
                done = time.perf_counter()
                if len(first) < FIRST:
                    first.append(done - now)
                if now >= measure_from:
                    latencies.append(done - now)
                    statuses[status] = statuses.get(status, 0) + 1
                i += clients

        await asyncio.gather(*(worker(c) for c in range(clients)))
    ok = statuses.get(200, 0)
    lat = np.array(latencies) * 1000 if latencies else np.array([float("nan")])
    return {
        "clients": clients, "requests": len(latencies), "ok": ok, "errors": len(latencies) - ok,
        "req_s": round(ok / duration, 1), "p50_ms": round(float(np.percentile(lat, 50)), 1),
        "p99_ms": round(float(np.percentile(lat, 99)), 1),
        "first50_p99_ms": round(float(np.percentile(np.array(first) * 1000, 99)), 1) if first else None,
        "client": client,
    }


@contextlib.asynccontextmanager
async def _aiohttp_poster(clients: int):
    import aiohttp

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def post(url: str, body: bytes) -> int:
            try:
                async with session.post(url, data=body, headers=HEADERS) as r:
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

        async def post(url: str, body: bytes) -> int:
            try:
                return (await session.post(url, content=body, headers=HEADERS)).status_code
            except (httpx.HTTPError, asyncio.TimeoutError):
                return -1

        yield post


@contextlib.asynccontextmanager
async def _stdlib_poster(clients: int):
    local = threading.local()
    pool = ThreadPoolExecutor(clients, thread_name_prefix="load")
    loop = asyncio.get_running_loop()

    def blocking_post(url: str, body: bytes) -> int:
        parts = urllib.parse.urlsplit(url)
        connection = getattr(local, "connection", None)
        if connection is None:
            connection = local.connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        try:
            connection.request("POST", parts.path + (f"?{parts.query}" if parts.query else ""), body=body, headers=HEADERS)
            response = connection.getresponse()
            response.read()
            return response.status
        except (OSError, http.client.HTTPException):
            connection.close()
            local.connection = None
            return -1

    async def post(url: str, body: bytes) -> int:
        return await loop.run_in_executor(pool, blocking_post, url, body)

    try:
        yield post
    finally:
        pool.shutdown(wait=False)


_POSTERS = {"aiohttp": _aiohttp_poster, "httpx": _httpx_poster, "stdlib": _stdlib_poster}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--files", required=True, help="a directory of images to cycle through")
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--client", choices=CLIENTS, default=None, help="HTTP client library (default: the first installed)")
    args = parser.parse_args(argv)
    bodies = [p.read_bytes() for p in sorted(Path(args.files).rglob("*.jpg"))[:512]]
    print(json.dumps(asyncio.run(closed_loop(args.url, bodies, args.clients, args.duration, args.warmup, args.client))))


if __name__ == "__main__":
    main()
