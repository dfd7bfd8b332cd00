"""/v1 raw bytes vs the Open Inference Protocol's binary path, on one twinfer app, in one run.

    python -m bench.v2_load --n 200 --clients 16 --rounds 3 [--compile] [--ingress haproxy]

One Serve instance (HTTP + the v2 gRPC service), one twinfer app (the embedded model, as
``bench.run`` deploys it online), then rounds of closed-loop load (``bench.load``), the protocols
in turn within each round, each round starting with the next one, so that a machine whose speed
drifts drifts for all of them:
``v1`` (POST the JPEG), ``v2`` (tritonclient's binary request, top 5 by the classification
extension, binary answer) and, unless ``--skip-grpc``, ``grpc`` (the same as ``ModelInfer``).
Prints and writes (``--out``) each run, the medians, v2/v1, and the 1-minute load average before
and after each run: on a shared machine the figures move with it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.provenance import provenance

ROOT = Path(__file__).resolve().parent.parent
APP = "twinfer"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.v2_load", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=200, help="images in the generated dataset")
    parser.add_argument("--data", type=Path, help="reuse/generate the dataset here (default: a temp dir)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--online-batch", type=int, default=4)
    parser.add_argument("--decode-threads", type=int, default=2)
    parser.add_argument("--ingress", choices=["default", "haproxy"], default="default")
    parser.add_argument("--skip-grpc", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "v2_load.json")
    args = parser.parse_args(argv)

    if args.ingress == "haproxy":  # read when Serve starts
        os.environ.update(RAY_SERVE_ENABLE_HA_PROXY="1", RAY_SERVE_THROUGHPUT_OPTIMIZED="1")
    import ray
    from ray import serve

    from bench.dataset import make_dataset
    from bench.serving import start_serve
    from deployments.app import build
    from deployments.config import AppArgs

    protocols = ["v1", "v2"] + ([] if args.skip_grpc else ["grpc"])
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data or Path(tmp) / "images"
        if not data_dir.exists() or not any(data_dir.rglob("*.jpg")):
            make_dataset(data_dir, args.n)
        ray.init(include_dashboard=False, log_to_driver=False)
        ports = start_serve()
        model = {
            "name": "efficientnet_lite0",
            "weights": "default",
            "precision": "fp32",
            "compile": args.compile,
            "cpu_threads": 1,
        }
        app = AppArgs.model_validate(
            {
                "ingress": {"num_replicas": 1, "num_cpus": 0.5, "decode_threads": args.decode_threads},
                "models": [
                    {
                        "model": model,
                        "num_cpus": 0.5,
                        "max_ongoing_requests": 128,
                        "max_queued_requests": 1024,
                        "batching": {
                            "max_batch_size": args.online_batch,
                            "batch_wait_timeout_s": 0.005,
                            "max_concurrent_batches": 2,
                        },
                    }
                ],
            }
        )
        serve.run(build(app), name=APP, route_prefix="/")
        base = ports.url
        urls = {
            "v1": f"{base}/v1/models/efficientnet_lite0/classify",
            "v2": f"{base}/v2/models/efficientnet_lite0/infer",
            "grpc": ports.grpc_address,
        }
        runs = []
        for round_ in range(args.rounds):
            # each round starts with the next protocol: whichever goes first does not always get
            # the machine as it is at the start of a round
            for protocol in protocols[round_ % len(protocols) :] + protocols[: round_ % len(protocols)]:
                before = os.getloadavg()[0]
                out = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "bench.load",
                        "--url",
                        urls[protocol],
                        "--files",
                        str(data_dir),
                        "--clients",
                        str(args.clients),
                        "--duration",
                        str(args.duration),
                        "--warmup",
                        str(args.warmup),
                        "--protocol",
                        protocol,
                    ],
                    cwd=ROOT,
                    capture_output=True,
                    text=True,
                    timeout=args.duration + args.warmup + 120,
                    check=True,
                )
                row = json.loads(out.stdout.strip().splitlines()[-1])
                row |= {
                    "protocol": protocol,
                    "round": round_,
                    "load_1m_before": round(before, 1),
                    "load_1m_after": round(os.getloadavg()[0], 1),
                }
                runs.append(row)
                print(json.dumps(row), flush=True)
        serve.delete(APP)
        serve.shutdown()
        ray.shutdown()

    medians = {p: round(statistics.median(r["req_s"] for r in runs if r["protocol"] == p), 2) for p in protocols}
    per_round = [
        round(
            next(r["req_s"] for r in runs if r["round"] == i and r["protocol"] == "v2")
            / max(1e-9, next(r["req_s"] for r in runs if r["round"] == i and r["protocol"] == "v1")),
            3,
        )
        for i in range(args.rounds)
    ]
    result = {
        **provenance("bench.v2_load", argv),
        "clients": args.clients,
        "ingress": args.ingress,
        "compile": args.compile,
        "median_req_s": medians,
        "v2_over_v1_median": round(medians["v2"] / medians["v1"], 3),
        "v2_over_v1_per_round": per_round,
        "load_1m_range": [min(r["load_1m_before"] for r in runs), max(r["load_1m_after"] for r in runs)],
        "runs": runs,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
