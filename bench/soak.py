"""Reliability harness: malformed inputs, overload, a killed replica, stalled clients. A bench, not a timed test.

    python -m bench.soak                          # starts its own `serve run serve_config.yaml`; sections a,b,c,d
    python -m bench.soak --quick                  # short durations: a local check in a few minutes
    python -m bench.soak --sections a,d --ingress haproxy
    python -m bench.soak --url http://host:8000 [--address host:6379]   # a running server (c needs --address)

Sections:
  a  a generated malformed corpus (>= 100 inputs: truncations, bit flips, random bytes, odd content
     types, multipart edge cases, decode/pixel/body bombs, wrong methods/routes/parameters) -> answers by kind
  b  capacity (closed loop at a few client counts; capacity = best req/s of 200s), then 2x that load for
     --duration after --warmup: statuses, p50/p99, RSS of Serve's processes (growth over the window)
  c  a model replica SIGKILLed under closed-loop load, with 1 and with 2 replicas (config variants
     redeployed with `serve run --non-blocking`): failed requests, seconds to recover
  d  --stalled requests that send headers and half their body, then nothing, while normal clients run

2x load (b): by default an open loop at twice the capacity's rate (--overload open). A closed loop
cannot offer more than the server answers (each client waits for its answer), so doubling its
clients doubles the queue, not the load; only an open loop makes the server shed load (503s).
--overload closed runs twice the saturating client count instead.

Every answer is classified (bench.soak_classify): 2xx; documented 4xx (JSON, a code of
shared.errors with its status); documented 503 (overloaded/unavailable with Retry-After); and the
violations: proxy answers (408, non-JSON 4xx/5xx), undocumented JSON (unknown code, wrong status,
any other 5xx), connection errors. Prints one table, the goals, and writes JSON (--out).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bench.provenance import provenance
from bench.soak_classify import DOC_4XX, DOC_503, OK, Verdict

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("a", "b", "c", "d")
RUN_ORDER = ("a", "b", "d", "c")  # c last: it redeploys the app
# value with --quick, value without (the hardening issue's)
SCALE = {
    "capacity_clients": ([1, 4, 8], [1, 4, 8, 16, 32]),
    "capacity_duration": (4.0, 10.0),
    "duration": (15.0, 60.0),
    "warmup": (5.0, 10.0),
    "kill_replicas": ([1, 2], [1, 2]),
    "kill_warmup": (4.0, 10.0),
    "kill_tail": (3.0, 10.0),
    "stalled": (10, 50),
    "stall_baseline": (5.0, 10.0),
    "stall_duration": (15.0, 60.0),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--sections",
        type=_sections,
        default=list(RUN_ORDER),
        help="comma-separated subset of a,b,c,d (run in the order a,b,d,c)",
    )
    p.add_argument("--quick", action="store_true", help="short durations and fewer clients (explicit flags still win)")
    p.add_argument("--url", help="a running server's base URL; default: start `serve run --config` here")
    p.add_argument("--grpc", help="with --url: its gRPC ingress, host:port (a: the gRPC corpus; skipped without)")
    p.add_argument("--address", help="with --url: the Ray (GCS) address of its cluster, for process ids and kills")
    p.add_argument("--config", type=Path, default=ROOT / "serve_config.yaml")
    p.add_argument("--app", default="twinfer", help="the Serve application's name")
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument(
        "--ingress",
        choices=["default", "haproxy"],
        default="default",
        help="haproxy: RAY_SERVE_ENABLE_HA_PROXY=1 RAY_SERVE_THROUGHPUT_OPTIMIZED=1",
    )
    p.add_argument(
        "--ray-cpus",
        type=int,
        default=4,
        help="logical CPUs of the Ray head it starts (2 model replicas + ingress need 3)",
    )
    p.add_argument("--seed", type=int, default=0, help="the malformed corpus's seed")
    p.add_argument("--images", type=int, default=64, help="bench.dataset JPEGs the load clients cycle through")
    p.add_argument("--corpus-concurrency", type=int, default=4)
    p.add_argument(
        "--capacity-clients",
        type=_ints,
        help="a: closed-loop client counts measured (default 1,4,8,16,32; quick 1,4,8)",
    )
    p.add_argument(
        "--capacity-duration", type=float, help="seconds per client count, after 2 s unmeasured (default 10; quick 4)"
    )
    p.add_argument("--overload", choices=["open", "closed"], default="open")
    p.add_argument("--factor", type=float, default=2.0, help="b: load as a multiple of the capacity")
    p.add_argument("--duration", type=float, help="b: measured seconds at 2x (default 60; quick 15)")
    p.add_argument("--warmup", type=float, help="b: seconds at 2x before the measured window (default 10; quick 5)")
    p.add_argument(
        "--max-in-flight", type=int, default=2000, help="b, open loop: the client's own bound on outstanding requests"
    )
    p.add_argument("--kill-replicas", type=_ints, help="c: replica counts, one run each (default 1,2)")
    p.add_argument("--kill-clients", type=int, default=8)
    p.add_argument("--kill-warmup", type=float, help="c: seconds of load before the kill (default 10; quick 4)")
    p.add_argument("--kill-tail", type=float, help="c: seconds of load once recovered (default 10; quick 3)")
    p.add_argument(
        "--kill-timeout", type=float, default=300.0, help="c: give up waiting for recovery after this many seconds"
    )
    p.add_argument("--stalled", type=int, help="d: half-sent requests held open (default 50; quick 10)")
    p.add_argument(
        "--stall-clients", type=int, help="d: normal closed-loop clients (default: b's saturating count, else 4)"
    )
    p.add_argument(
        "--stall-baseline", type=float, help="d: seconds of normal clients before stalling (default 10; quick 5)"
    )
    p.add_argument(
        "--stall-duration", type=float, help="d: seconds the stalled requests are held (default 60; quick 15)"
    )
    p.add_argument(
        "--start-timeout",
        type=float,
        default=900.0,
        help="seconds for Serve to start or redeploy (2 loaded cores: minutes)",
    )
    p.add_argument(
        "--keep-logs", action="store_true", help="keep the started server's folder (Ray's and Serve's logs) afterwards"
    )
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "soak.json")
    args = p.parse_args(argv)
    for name, (quick, full) in SCALE.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if args.address and not args.url:
        p.error("--address goes with --url (without --url the harness starts and controls its own server)")
    if args.factor <= 0:
        p.error("--factor must be positive")
    return args


def _sections(text: str) -> list[str]:
    chosen = [s.strip() for s in text.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"sections are a subset of {','.join(SECTIONS)}; got {text!r}")
    return [s for s in RUN_ORDER if s in chosen]


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


@dataclass
class Context:
    args: argparse.Namespace
    base_url: str
    codes: dict[str, int]
    bodies: list[bytes]
    control: bool  # joined the server's cluster: process ids, memory, kills
    server: object | None = None  # OwnServe when the harness started it
    results: dict = field(default_factory=dict)
    saturating_clients: int | None = None
    corpus: list | None = None  # default: build_corpus(args.seed)
    grpc_address: str | None = None  # the gRPC ingress, when there is one to send the gRPC corpus to
    grpc_messages: object | None = None  # the protocol's message module: ours, unless a test passes tritonclient's

    @property
    def classify_url(self) -> str:
        return f"{self.base_url}/v1/models/{self.args.model}/classify"

    @property
    def model_deployment(self) -> str:
        return f"model-{self.args.model}"

    def groups(self) -> dict[str, list[int]]:
        from bench.soak_server import process_groups

        return process_groups(self.args.app)


# ---- a: malformed corpus ----


async def section_a(ctx: Context) -> dict:
    from bench.malformed import build_corpus
    from bench.soak_load import Client, session

    corpus = ctx.corpus if ctx.corpus is not None else build_corpus(ctx.args.seed)
    gate = asyncio.Semaphore(ctx.args.corpus_concurrency)
    async with session() as http:
        client = Client(http, ctx.codes)

        async def send(case):
            async with gate:
                url = ctx.base_url + case.path.format(model=ctx.args.model)
                return await client.send(url, case.body, method=case.method, content_type=case.content_type,
                                         headers=case.headers, chunked=case.chunked, name=case.name)  # fmt: skip

        with _rss(ctx) as rss:
            records = list(await asyncio.gather(*(send(case) for case in corpus if case.kind != "bomb")))
            for case in corpus:  # one at a time: each bomb's answer and time are its own
                if case.kind == "bomb":
                    records.append(await send(case))
            after = await client.send(ctx.classify_url, ctx.bodies[0], name="valid image after the corpus")
            grpc_records = await asyncio.to_thread(_grpc_corpus, ctx) if ctx.grpc_address else []
    corpus = sorted(corpus, key=lambda case: case.kind == "bomb")  # the order of the records
    records += [record for _, record in grpc_records]
    corpus += [case for case, _ in grpc_records]
    by_kind: dict[str, dict] = {}
    for case, record in zip(corpus, records):
        kind = by_kind.setdefault(case.kind, {"cases": 0, "answers": Counter(), "violations": [], "unexpected": []})
        kind["cases"] += 1
        kind["answers"][record.verdict.label] += 1
        if record.verdict.violation:
            kind["violations"].append(_describe(case.name, record))
        elif record.verdict.status not in case.expect:
            kind["unexpected"].append(_describe(case.name, record) | {"expected": list(case.expect)})
    bombs = [_describe(c.name, r) for c, r in zip(corpus, records) if c.kind == "bomb"]
    return {
        "cases": len(corpus),
        "seed": ctx.args.seed,
        "records": records,
        "by_kind": {k: v | {"answers": dict(v["answers"].most_common())} for k, v in by_kind.items()},
        "bombs": bombs,
        "valid_after": _describe(after.name, after),
        "memory": rss.summary() if rss else None,
    }


def _grpc_corpus(ctx: Context) -> list:
    """``bench.malformed.grpc_corpus`` sent as raw bytes to ModelInfer: (case, record) each."""
    import grpc

    from bench.malformed import Case, grpc_corpus
    from bench.soak_classify import classify_grpc
    from bench.soak_load import Record
    from deployments.transport import CLIENT_LIMIT_ENV
    from deployments.v2.grpc_service import messages

    config = yaml.safe_load(ctx.args.config.read_text())
    limit = int(
        ((config.get("controller_options") or {}).get("runtime_env") or {}).get("env_vars", {})[CLIENT_LIMIT_ENV]
    )
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    out = []
    with grpc.insecure_channel(ctx.grpc_address, options=options) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        for case in grpc_corpus(ctx.grpc_messages or messages(), ctx.args.model, limit):
            sent = time.monotonic()
            try:
                call(case.message, timeout=120, metadata=(("application", ctx.args.app),))
                status, details = "OK", ""
            except grpc.RpcError as exc:
                status, details = exc.code().name, exc.details() or ""
            verdict = classify_grpc(status, details, ctx.codes)
            name = f"grpc/{case.name}"
            # as section a tallies HTTP cases: the answer's status is expected, or it is not
            tally = Case(name, "grpc", b"", expect=(verdict.status,) if status in case.expect else ())
            out.append((tally, Record(sent, time.monotonic(), verdict, name)))
    return out


def _describe(name: str, record) -> dict:
    v: Verdict = record.verdict
    return {
        "name": name,
        "answer": v.label,
        "category": v.category,
        "detail": v.detail,
        "seconds": round(record.latency_s, 3),
    }


# ---- b: capacity, then 2x ----


async def section_b(ctx: Context) -> dict:
    from bench.soak_load import Client, closed_loop, open_loop, session, stop_after, summarize

    args, levels, seen = ctx.args, [], []
    for clients in args.capacity_clients:
        records: list = []
        async with session(clients) as http:
            await closed_loop(
                Client(http, ctx.codes),
                ctx.classify_url,
                ctx.bodies,
                clients,
                stop_after(2.0 + args.capacity_duration),
                records,
            )
        measured = [r for r in records if r.sent >= records[0].sent + 2.0] if records else []
        levels.append({"clients": clients, **summarize(measured, args.capacity_duration)})
        seen += records
    capacity = max(level["ok_req_s"] for level in levels)
    ctx.saturating_clients = next(lv["clients"] for lv in levels if lv["ok_req_s"] >= 0.9 * capacity)
    overload: dict = {"mode": args.overload, "factor": args.factor}
    records = []
    with _rss(ctx) as rss:
        async with session(0) as http:
            client = Client(http, ctx.codes)
            started = time.monotonic()
            mark_at, end_at = started + args.warmup, started + args.warmup + args.duration
            asyncio.get_running_loop().call_later(args.warmup, lambda: rss and rss.mark())
            asyncio.get_running_loop().call_later(args.warmup + args.duration, lambda: rss and rss.mark_end())
            if args.overload == "open":
                overload["rate"] = round(max(capacity, 0.5) * args.factor, 1)
                overload["skipped_at_client_cap"] = await open_loop(client, ctx.classify_url, ctx.bodies,
                                                                    overload["rate"], mark_at + args.duration, records,
                                                                    args.max_in_flight)  # fmt: skip
            else:
                overload["clients"] = max(1, round(ctx.saturating_clients * args.factor))
                await closed_loop(
                    client,
                    ctx.classify_url,
                    ctx.bodies,
                    overload["clients"],
                    stop_after(args.warmup + args.duration),
                    records,
                )
    measured = [r for r in records if r.sent >= mark_at]
    # what the server answered within the window (an open loop's answers to late requests come after it)
    overload["served_ok_req_s"] = round(
        sum(r.verdict.category == OK and mark_at <= r.done < end_at for r in records) / args.duration, 1
    )
    return {
        "capacity_levels": levels,
        "capacity_req_s": capacity,
        "saturating_clients": ctx.saturating_clients,
        "overload": overload | summarize(measured, args.duration),
        "records": seen + records,  # the goals count every answer
        "memory": rss.summary() if rss else None,
    }


def _rss(ctx: Context):
    from bench.memory import RssSampler

    return RssSampler(ctx.groups) if ctx.control else contextlib.nullcontext()


# ---- c: a replica killed under load ----


async def section_c(ctx: Context) -> dict:
    from bench.soak_server import replica_pids, wait_replicas, with_replicas

    if not ctx.control:
        return {"skipped": "needs control of the replicas: run without --url, or give --address"}
    runs = []
    counts = ctx.args.kill_replicas if ctx.server else [len(replica_pids(ctx.args.app, ctx.model_deployment))]
    for replicas in counts:
        if ctx.server:
            started = time.monotonic()
            ctx.server.deploy(
                with_replicas(ctx.server.config, ctx.args.model, replicas, ctx.args.app), f"replicas-{replicas}.yaml"
            )
            await asyncio.to_thread(wait_replicas, ctx.args.app, ctx.model_deployment, replicas, ctx.args.start_timeout)
            await asyncio.to_thread(_wait_healthz, ctx.base_url, ctx.args.start_timeout)
            print(f"[c] {replicas} replica(s) deployed in {time.monotonic() - started:.0f} s", flush=True)
        runs.append(await _kill_under_load(ctx, replicas))
    return {"runs": runs}


def _wait_healthz(base_url: str, timeout_s: float) -> None:
    from bench.soak_server import wait_healthy

    wait_healthy(base_url, time.monotonic() + timeout_s)


async def _kill_under_load(ctx: Context, replicas: int) -> dict:
    from bench.soak_load import Client, closed_loop, session, summarize
    from bench.soak_server import deployment_state, replica_pids

    args, records, stop = ctx.args, [], asyncio.Event()
    async with session(args.kill_clients) as http:
        load = asyncio.ensure_future(
            closed_loop(Client(http, ctx.codes), ctx.classify_url, ctx.bodies, args.kill_clients, stop, records)
        )
        await asyncio.sleep(args.kill_warmup)
        before = await asyncio.to_thread(replica_pids, args.app, ctx.model_deployment)
        victim = before[0]
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        replaced_at = None
        while time.monotonic() - killed_at < args.kill_timeout:
            await asyncio.sleep(0.5)
            if replaced_at is None:
                _, states = await asyncio.to_thread(deployment_state, args.app, ctx.model_deployment)
                pids = await asyncio.to_thread(replica_pids, args.app, ctx.model_deployment)
                if states == {"RUNNING": replicas} and victim not in pids and len(pids) == replicas:
                    replaced_at = time.monotonic()
            served_after = any(r.verdict.category == OK and r.sent > killed_at for r in records)
            if replaced_at is not None and served_after and time.monotonic() - replaced_at >= args.kill_tail:
                break
        stop.set()
        await load
    failures = [r for r in records if r.verdict.category != OK]
    ok_after = [r.done - killed_at for r in records if r.verdict.category == OK and r.sent > killed_at]
    return {
        "replicas": replicas,
        "killed_pid": victim,
        "clients": args.kill_clients,
        **summarize(records),
        "failed": len(failures),
        "failed_answers": dict(Counter(r.verdict.label for r in failures)),
        "first_ok_sent_after_kill_s": round(min(ok_after), 2) if ok_after else None,
        "last_failure_s": round(max(r.done - killed_at for r in failures), 2) if failures else None,
        "replaced_s": round(replaced_at - killed_at, 2) if replaced_at else None,
        "records": records,
    }


# ---- d: stalled half-sent requests ----


async def section_d(ctx: Context) -> dict:
    from bench.soak_load import (
        Client,
        Stalled,
        closed_loop,
        session,
        stalled_request,
        stop_after,
        summarize,
        summarize_stalled,
    )

    args = ctx.args
    clients = args.stall_clients or ctx.saturating_clients or 4
    baseline: list = []
    async with session(clients) as http:
        await closed_loop(
            Client(http, ctx.codes), ctx.classify_url, ctx.bodies, clients, stop_after(args.stall_baseline), baseline
        )
    body = max(ctx.bodies, key=len)
    stalled = [Stalled() for _ in range(args.stalled)]
    hold_until = time.monotonic() + args.stall_duration
    holders = [asyncio.ensure_future(stalled_request(ctx.classify_url, body, hold_until, s)) for s in stalled]
    await asyncio.sleep(1.0)  # every stalled request is sent before the normal clients start
    during: list = []
    async with session(clients) as http:
        await closed_loop(
            Client(http, ctx.codes),
            ctx.classify_url,
            ctx.bodies,
            clients,
            stop_after(max(0.0, hold_until - time.monotonic())),
            during,
        )
    await asyncio.gather(*holders)
    return {
        "clients": clients,
        "stalled_count": args.stalled,
        "stalled_body_bytes": len(body),
        "held_s": args.stall_duration,
        "baseline": summarize(baseline, args.stall_baseline),
        "with_stalled": summarize(during, args.stall_duration - 1.0),
        "stalled": summarize_stalled(stalled),
        "records": baseline + during,
    }


# ---- report ----

COLUMNS = [("section", 3), ("scenario", 36), ("n", 6), ("2xx", 6), ("4xx doc", 8), ("503 doc", 8), ("VIOLATE", 8),
           ("lost", 5), ("p50 ms", 9), ("p99 ms", 9), ("notes", 0)]  # fmt: skip


def table_rows(results: dict) -> list[list]:
    rows = []
    if "a" in results:
        rows += _rows_a(results["a"])
    if "b" in results:
        rows += _rows_b(results["b"])
    if "c" in results:
        rows += _rows_c(results["c"])
    if "d" in results:
        rows += _rows_d(results["d"])
    return rows


def _row(section: str, scenario: str, summary: dict | None, notes: str = "", n: int | None = None) -> list:
    if summary is None:
        return [section, scenario, n if n is not None else "", "", "", "", "", "", "", "", notes]
    cats = summary["categories"]
    return [section, scenario, summary["requests"], cats[OK], cats[DOC_4XX], cats[DOC_503], summary["violations"],
            summary["lost"], _ms(summary["p50_ms"]), _ms(summary["p99_ms"]), notes]  # fmt: skip


def _rows_a(a: dict) -> list[list]:
    from bench.soak_load import summarize

    rows = []
    for kind, info in a["by_kind"].items():
        records = [r for r in a["records"] if r.name.split("/", 1)[0] == kind]
        notes = ", ".join(f"{label} x{n}" for label, n in list(info["answers"].items())[:4])
        if info["unexpected"]:
            notes += f"; unexpected {len(info['unexpected'])}"
        rows.append(_row("a", f"{kind}", summarize(records), notes))
    for bomb in a["bombs"]:
        rows.append(["a", "  " + bomb["name"].removeprefix("bomb/"), "", "", "", "", "", "",
                     _ms(bomb["seconds"] * 1000), "",
                     bomb["answer"] + (f" ({bomb['detail']})" if bomb["detail"] else "")])  # fmt: skip
    rows.append(["a", "  valid image after the corpus", "", "", "", "", "", "", "", "", a["valid_after"]["answer"]])
    for group, m in (a["memory"] or {}).items():
        rows.append(
            [
                "a",
                f"  RSS {group}",
                "",
                "",
                "",
                "",
                "",
                "",
                "",
                "",
                f"{m['before_mib']} -> {m['after_mib']} MiB, peak {m['peak_mib']}",
            ]
        )
    return rows


def _rows_b(b: dict) -> list[list]:
    rows = [
        _row("b", f"capacity {lv['clients']} client(s)", lv, f"{lv['ok_req_s']} req/s") for lv in b["capacity_levels"]
    ]
    o = b["overload"]
    how = f"open loop {o['rate']} req/s" if o["mode"] == "open" else f"closed loop {o['clients']} clients"
    notes = (
        f"capacity {b['capacity_req_s']} req/s; 2xx answered in the window {o['served_ok_req_s']} req/s; "
        f"2xx p50/p99 {_ms(o['ok_p50_ms'])}/{_ms(o['ok_p99_ms'])} ms"
    )
    rows.append(_row("b", f"{o['factor']:g}x capacity: {how}", o, notes))
    for group, m in (b["memory"] or {}).items():
        rows.append(["b", f"  RSS {group}", "", "", "", "", "", "", "", "",
                     f"start {m['start_mib']}; window {m['before_mib']} -> {m['after_mib']} MiB "
                     f"(peak {m['peak_mib']}), growth {_pct(m['growth_pct'])}"])  # fmt: skip
    return rows


def _rows_c(c: dict) -> list[list]:
    if "skipped" in c:
        return [_row("c", "replica killed under load", None, "skipped: " + c["skipped"])]
    rows = []
    for run in c["runs"]:
        notes = (f"failed {run['failed']} {run['failed_answers'] or ''}; "
                 f"first 2xx sent after kill {_s(run['first_ok_sent_after_kill_s'])}, "
                 f"last failure {_s(run['last_failure_s'])}, replaced {_s(run['replaced_s'])}")  # fmt: skip
        rows.append(_row("c", f"kill 1 of {run['replicas']} replica(s), {run['clients']} clients", run, notes))
    return rows


def _rows_d(d: dict) -> list[list]:
    rows = [
        _row("d", f"{d['clients']} clients, baseline", d["baseline"], f"{d['baseline'].get('ok_req_s')} req/s"),
        _row(
            "d",
            f"{d['clients']} clients + {d['stalled_count']} stalled",
            d["with_stalled"],
            f"{d['with_stalled'].get('ok_req_s')} req/s",
        ),
    ]
    outcomes = "; ".join(
        f"{k} x{v['count']}" + (f" at {v['at_s'][0]:.1f}-{v['at_s'][2]:.1f} s" if v["at_s"] else "")
        for k, v in d["stalled"].items()
    )
    rows.append(
        _row("d", f"  stalled half-sent requests (held {d['held_s']:g} s)", None, outcomes, n=d["stalled_count"])
    )
    return rows


def _ms(value) -> str:
    return "-" if value is None else f"{value:.0f}"


def _s(value) -> str:
    return "-" if value is None else f"{value:.1f} s"


def _pct(value) -> str:
    return "-" if value is None else f"{value:+.1f} %"


def format_table(rows: list[list]) -> str:
    lines = ["".join(f"{name:<{width}} " if width else name for name, width in COLUMNS)]
    for row in rows:
        cells = []
        for (name, width), value in zip(COLUMNS, row):
            text = str(value)
            cells.append(
                f"{text:<{width}} "
                if width and name in ("section", "scenario", "notes")
                else (f"{text:>{width - 1}}  " if width else text)
            )
        lines.append("".join(cells).rstrip())
    return "\n".join(lines)


def goals(results: dict) -> list[dict]:
    """The hardening issue's goals, each with its figure and whether it passed (None: not measured)."""
    records = [r for key in ("a", "b", "d") if key in results for r in results[key].get("records", [])]
    records += [r for run in results.get("c", {}).get("runs", []) for r in run["records"]]
    five = [r for r in records if r.verdict.status and r.verdict.status >= 500 and r.verdict.category != DOC_503]
    four = [r for r in records if r.verdict.status and 400 <= r.verdict.status < 500 and r.verdict.category != DOC_4XX]
    conn = [r for r in records if r.verdict.status is None]
    out = [
        {"goal": "no 5xx except the documented 503s", "value": len(five), "passed": not five if records else None,
         "examples": _examples(five)},
        {"goal": "every 4xx is the documented JSON", "value": len(four), "passed": not four if records else None,
         "examples": _examples(four)},
        {"goal": "no connection errors (answers lost)", "value": len(conn), "passed": not conn if records else None,
         "examples": _examples(conn)},
    ]  # fmt: skip
    memory = (results.get("b") or {}).get("memory") or {}
    growths = {g: m["growth_pct"] for g, m in memory.items() if m["growth_pct"] is not None}
    worst = max(growths, key=growths.get) if growths else None
    out.append({"goal": "Serve processes' memory growth under 10 % (b, after warm-up)",
                "value": f"{worst} {growths[worst]:+.1f} %" if worst else None,
                "passed": all(v < 10 for v in growths.values()) if growths else None})  # fmt: skip
    two = [run for run in results.get("c", {}).get("runs", []) if run["replicas"] >= 2]
    out.append({"goal": "zero failed requests with 2 replicas (c)",
                "value": sum(r["failed"] for r in two) if two else None,
                "passed": all(r["failed"] == 0 for r in two) if two else None})  # fmt: skip
    return out


def _examples(records: list, limit: int = 5) -> list[str]:
    return [f"{r.name or 'load'}: {r.verdict.label} {r.verdict.detail}".strip() for r in records[:limit]]


def format_goals(items: list[dict]) -> str:
    lines = []
    for g in items:
        state = {True: "PASS", False: "FAIL", None: "n/a "}[g["passed"]]
        lines.append(f"  {state}  {g['goal']}: {g['value'] if g['value'] is not None else 'not measured'}")
        lines += [f"          e.g. {e}" for e in g.get("examples") or []]
    return "\n".join(lines)


def to_json(results: dict) -> dict:
    """The results without per-request records (which become per-section counts already)."""

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "records"}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return strip(results)


# ---- main ----


async def run_sections(ctx: Context) -> None:
    handlers = {"a": section_a, "b": section_b, "c": section_c, "d": section_d}
    for name in ctx.args.sections:
        started = time.monotonic()
        print(f"[{name}] running (load average {_loadavg()})", flush=True)
        ctx.results[name] = await handlers[name](ctx)
        print(f"[{name}] done in {time.monotonic() - started:.0f} s", flush=True)


def _loadavg() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from bench.dataset import make_dataset
    from bench.soak_classify import error_codes

    meta = {**provenance("bench.soak", argv), "ingress": args.ingress, "load_average_start": _loadavg()}
    folder = (
        contextlib.nullcontext(tempfile.mkdtemp(prefix="soak-", dir="/tmp"))
        if args.keep_logs
        else tempfile.TemporaryDirectory(prefix="soak-", dir="/tmp")
    )
    with folder as tmp:
        work = Path(tmp)
        bodies = [p.read_bytes() for p in make_dataset(work / "images", args.images)]
        server = None
        try:
            if args.url:
                base_url, control = args.url.rstrip("/"), bool(args.address)
                if control:
                    from bench.soak_server import connect

                    connect(args.address)
            else:
                from bench.soak_server import AUTH_MODE, OwnServe, connect

                server = OwnServe(yaml.safe_load(args.config.read_text()), work, args.ingress, args.ray_cpus)
                started = time.monotonic()
                print(f"starting serve run {args.config.name} (its own Ray, logs in {work}) ...", flush=True)
                server.start(args.start_timeout)
                meta["serve_start_s"] = round(time.monotonic() - started, 1)
                base_url, control = server.base_url, True
                connect(server.address, AUTH_MODE)
            grpc_address = args.grpc if args.url else server.grpc_address
            ctx = Context(args, base_url, error_codes(), bodies, control, server, grpc_address=grpc_address)
            meta["url"] = base_url
            asyncio.run(run_sections(ctx))
        finally:
            if server is not None:
                import ray

                ray.shutdown()
                server.stop()
    meta["load_average_end"] = _loadavg()
    rows, checked = table_rows(ctx.results), goals(ctx.results)
    print(
        f"\n== soak {meta['date']}, {meta['machine']}, ingress {args.ingress}, {base_url}; "
        f"load average {meta['load_average_start']} -> {meta['load_average_end']} =="
    )
    print(format_table(rows))
    print("\ngoals:")
    print(format_goals(checked))
    result = meta | {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "goals": checked,
        **to_json(ctx.results),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(f"\nJSON: {args.out}")
    return 0 if all(g["passed"] is not False for g in checked) else 1


if __name__ == "__main__":
    sys.exit(main())
