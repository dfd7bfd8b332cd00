"""Sections ``serve`` and ``serve_more`` (checklist step 10): the twinfer app on Serve with the
embedded model on the GPU (``device: cuda``, precision auto = fp16, ``num_gpus: 1``,
``max_batch_size: 64``), behind HAProxy in throughput mode (``bench.gpu`` sets
``RAY_SERVE_ENABLE_HA_PROXY=1 RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` before Ray starts). Ingress
replicas take 2 CPUs and 2 decode threads each, as ``serve_config.gpu.yaml`` ships them.

Per deployment: what ``/v1/models`` reports (cuda, float16), then closed-loop clients
(``bench.run.closed_loop_load``) at each client count: req/s, p50/p99, errors, GPU memory, and
the p99 of the first 50 requests after the deployment came up (from the first client count's run).
"""

from __future__ import annotations

import json
import time
import urllib.request

TARGET_128 = 3000  # bench/RESULTS.md's online target at 128 clients
MAX_BATCH_SIZE = 64

# (label, ingress replicas, decode.on_device)
QUICK_DEPLOYMENTS = (("6 ingress", 6, False),)
MORE_DEPLOYMENTS = (("1 ingress", 1, False), ("6 ingress, nvJPEG", 6, True))


def quick(ctx, report) -> None:
    for deployment in QUICK_DEPLOYMENTS:
        deploy_and_load(ctx, report, *deployment)


def more(ctx, report) -> None:
    for deployment in MORE_DEPLOYMENTS:
        deploy_and_load(ctx, report, *deployment)


def deploy_and_load(ctx, report, label: str, ingress_replicas: int, on_device: bool) -> None:
    from ray import serve

    from bench.run import closed_loop_load, twinfer_app
    from shared import ModelConfig

    ctx.images()  # generated before the clock starts
    port = ctx.serve_port()
    name = "gpu-" + label.replace(" ", "").replace(",", "-")
    config = ModelConfig(device="cuda", decode={"on_device": on_device})
    app = twinfer_app(
        config,
        num_gpus=1,
        max_batch_size=MAX_BATCH_SIZE,
        ingress_replicas=ingress_replicas,
        ingress_cpus=2,
        decode_threads=2,
    )
    started = time.perf_counter()
    serve.run(app, name=name, route_prefix=f"/{name}")
    details = {"deploy_s": round(time.perf_counter() - started, 1)}
    report.details[label] = details
    try:
        base = f"http://127.0.0.1:{port}/{name}"
        described = json.loads(urllib.request.urlopen(f"{base}/v1/models", timeout=30).read())["models"][0]
        details["described"] = described
        report.add(
            f"{label}: /v1/models device, precision",
            f"{described['device']}, {described['precision']}",
            passed=described["device"].startswith("cuda") and described["precision"] == "float16",
            threshold="cuda, float16",
        )
        url = f"{base}/v1/models/{config.name}/classify"
        rows = []
        for clients in ctx.options.get("clients", (1, 16, 128)):
            row = closed_loop_load(
                url, ctx.data_dir, clients, ctx.options.get("duration", 10.0), ctx.options.get("warmup", 2.0)
            )
            rows.append(row)
            details["runs"] = rows
            report.add(
                f"{label}: {clients} clients",
                f"{row['req_s']:g} req/s, p50 {row['p50_ms']:g} / p99 {row['p99_ms']:g} ms, {row['errors']} errors; "
                f"GPU {row['gpu_util_pct']} % busy, peak {row['gpu_mem_peak_gib']} GiB; "
                f"CPUs {row['cpu_busy_pct']} % busy",
                passed=(row["req_s"] >= TARGET_128 and row["errors"] == 0) if clients == 128 else (row["errors"] == 0),
                threshold=f">= {TARGET_128} req/s, 0 errors" if clients == 128 else "0 errors",
            )
        if rows:
            report.add(
                f"{label}: p99 of the first 50 requests ({rows[0]['clients']} client(s))",
                f"{rows[0]['first50_p99_ms']} ms",
            )
    finally:
        serve.delete(name)
