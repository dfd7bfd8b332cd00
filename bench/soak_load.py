"""Clients for the soak harness: single requests, closed loops (``bench.load.drive``, the one loop
every load runs) and open loops, stalled half-sent requests.

Every answer becomes a ``Record`` whose ``Verdict`` (``bench.soak_classify``) says whether it is
documented; timestamps are ``time.monotonic()``.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp
import numpy as np
from yarl import URL

from bench.load import drive
from bench.soak_classify import CATEGORIES, CONN, OK, VIOLATIONS, Verdict, classify


@dataclass
class Record:
    sent: float
    done: float
    verdict: Verdict
    name: str = ""

    @property
    def latency_s(self) -> float:
        return self.done - self.sent


@dataclass
class Client:
    """An aiohttp session plus what classifying needs; ``timeout_s`` is above Serve's
    ``request_timeout_s`` so that the proxy's 408 is seen rather than a client timeout."""

    session: aiohttp.ClientSession
    codes: Mapping[str, int]
    timeout_s: float = 120.0

    async def send(self, url: str, body: bytes, *, method: str = "POST", content_type: str | None = "image/jpeg",
                   headers: tuple[tuple[str, str], ...] = (), chunked: bool = False,
                   name: str = "") -> Record:  # fmt: skip
        all_headers = dict(headers)
        skip = ()
        if content_type is None:
            skip = ("Content-Type",)
        else:
            all_headers["Content-Type"] = content_type
        data = _chunks(body) if chunked else (body if body or method not in ("GET", "DELETE", "OPTIONS") else None)
        sent = time.monotonic()
        try:
            async with self.session.request(
                method,
                URL(url, encoded=True),
                data=data,
                headers=all_headers,
                skip_auto_headers=skip,
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            ) as response:
                payload = await response.read()
                verdict = classify(response.status, response.headers, payload, self.codes)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            verdict = classify(None, {}, b"", self.codes, error=type(exc).__name__)
        return Record(sent, time.monotonic(), verdict, name)


async def _chunks(body: bytes, size: int = 1 << 20):
    for start in range(0, len(body), size):
        yield body[start : start + size]


def session(connections: int = 0) -> aiohttp.ClientSession:
    """``connections`` 0: no limit (open loops); a closed loop passes its client count."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections, force_close=False))


async def closed_loop(
    client: Client, url: str, bodies: list[bytes], clients: int, stop: asyncio.Event, records: list[Record]
) -> None:
    """``bench.load.drive`` with ``clients`` workers until ``stop`` is set, each answer a ``Record``."""

    async def step(i: int) -> None:
        records.append(await client.send(url, bodies[i % len(bodies)]))

    await drive(clients, step, lambda: not stop.is_set())


async def open_loop(client: Client, url: str, bodies: list[bytes], rate: float, stop_at: float, records: list[Record],
                    max_in_flight: int = 2000) -> int:  # fmt: skip
    """Requests started at a fixed ``rate`` (per second) until ``stop_at``, whatever the answers; at
    most ``max_in_flight`` outstanding (the client's own bound). Returns how many were skipped for it."""
    interval, tasks, skipped = 1.0 / rate, set(), 0
    next_at, i = time.monotonic(), 0
    while next_at < stop_at:
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        if len(tasks) >= max_in_flight:
            skipped += 1
        else:
            task = asyncio.ensure_future(client.send(url, bodies[i % len(bodies)]))
            task.add_done_callback(lambda t: (tasks.discard(t), records.append(t.result())))
            tasks.add(task)
        i += 1
        next_at += interval
    if tasks:
        await asyncio.wait(tasks)
    return skipped


def stop_after(seconds: float) -> asyncio.Event:
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(seconds, stop.set)
    return stop


def summarize(records: list[Record], seconds: float | None = None) -> dict:
    """Counts by category and by answer, latency percentiles (every answer, and 2xx alone), req/s of 2xx."""
    by_category = Counter(r.verdict.category for r in records)
    latencies = np.array([r.latency_s for r in records]) * 1000
    ok = np.array([r.latency_s for r in records if r.verdict.category == OK]) * 1000
    out = {
        "requests": len(records),
        "categories": {c: by_category.get(c, 0) for c in CATEGORIES},
        "answers": dict(Counter(r.verdict.label for r in records).most_common()),
        "violations": sum(by_category.get(c, 0) for c in VIOLATIONS),
        "lost": by_category.get(CONN, 0),
        "p50_ms": _pct(latencies, 50),
        "p99_ms": _pct(latencies, 99),
        "ok_p50_ms": _pct(ok, 50),
        "ok_p99_ms": _pct(ok, 99),
    }
    if seconds:
        out["ok_req_s"] = round(by_category.get(OK, 0) / seconds, 1)
        out["req_s"] = round(len(records) / seconds, 1)
    return out


def _pct(values: np.ndarray, q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if len(values) else None


@dataclass
class Stalled:
    """One request whose headers and half its body are sent, then nothing: what the server did with it."""

    opened: float = 0.0
    outcome: str = "open"  # "answered <status>", "closed", "reset", "open" (still open when released)
    at: float | None = None  # seconds after opening when the outcome happened
    first_line: str = ""
    extra: dict = field(default_factory=dict)


async def stalled_request(url: str, body: bytes, hold_until: float, record: Stalled) -> None:
    """Send the request line, headers with the full Content-Length and half of ``body``; then wait,
    sending nothing more, until the server answers or closes the socket, or ``hold_until``."""
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    head = (f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: image/jpeg\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()  # fmt: skip
    record.opened = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    except OSError as exc:
        record.outcome, record.at = f"refused {type(exc).__name__}", 0.0
        return
    try:
        writer.write(head + body[: len(body) // 2])
        await writer.drain()
        data = await asyncio.wait_for(reader.read(65536), timeout=max(0.0, hold_until - time.monotonic()))
        record.at = round(time.monotonic() - record.opened, 2)
        if data:
            record.first_line = data.split(b"\r\n", 1)[0].decode("latin-1")
            fields = record.first_line.split()
            record.outcome = f"answered {fields[1]}" if len(fields) > 1 and fields[1].isdigit() else "answered ?"
        else:
            record.outcome = "closed"
    except asyncio.TimeoutError:
        record.outcome = "open"
    except (ConnectionError, OSError) as exc:
        record.outcome, record.at = "reset", round(time.monotonic() - record.opened, 2)
        record.extra["error"] = type(exc).__name__
    finally:
        writer.close()


def summarize_stalled(records: list[Stalled]) -> dict:
    """Per outcome: how many, and when (seconds after opening: min / median / max)."""
    out = {}
    for outcome in sorted({r.outcome for r in records}):
        times = [r.at for r in records if r.outcome == outcome and r.at is not None]
        lines = Counter(r.first_line for r in records if r.outcome == outcome and r.first_line)
        out[outcome] = {
            "count": sum(r.outcome == outcome for r in records),
            "at_s": [min(times), float(np.median(times)), max(times)] if times else None,
            "first_lines": dict(lines),
        }
    return out
