"""Closed-loop HTTP load on loopback: ``clients`` workers each POST, await, repeat, for a bounded time.

Run as its own process (``python -m bench.load ...``) so the client does not share the server's
interpreter; prints one JSON line: requests, errors, req/s, p50/p99 latency in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import aiohttp
import numpy as np


async def closed_loop(url: str, bodies: list[bytes], clients: int, duration: float, warmup: float) -> dict:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + duration
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker(offset: int) -> None:
            i = offset
            while (now := time.perf_counter()) < stop_at:
                try:
                    async with session.post(url, data=bodies[i % len(bodies)], headers={"content-type": "image/jpeg"}) as r:
                        await r.read()
                        status = r.status
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    status = -1
                done = time.perf_counter()
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
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--files", required=True, help="a directory of images to cycle through")
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    args = parser.parse_args()
    bodies = [p.read_bytes() for p in sorted(Path(args.files).rglob("*.jpg"))[:512]]
    print(json.dumps(asyncio.run(closed_loop(args.url, bodies, args.clients, args.duration, args.warmup))))


if __name__ == "__main__":
    main()
