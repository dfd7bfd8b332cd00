"""One command, one dataset, both paths against their naive counterparts.

    python -m bench.run --n 400                      # CPU, embedded model (what CI machines can do)
    python -m bench.run --n 40000 --model resnet152 --weights random --num-gpus 1 --actors 1 \\
        --batch-size 256 --clients 1,16,128 [--decode-on-device] [--compile]   # the GPU box

Prints a table and writes JSON (default bench/out/result.json). Set --ingress haproxy to start
Serve with RAY_SERVE_ENABLE_HA_PROXY=1 RAY_SERVE_THROUGHPUT_OPTIMIZED=1 (read when Serve starts).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.memory import MemorySampler
from bench.provenance import provenance
from bench.serving import start_serve

ROOT = Path(__file__).resolve().parent.parent


def run_batch(args, data_dir: Path, work: Path, config) -> dict:
    """twinfer's backfill as a user runs it (no tuning flags: every ``auto`` settles itself), the same
    with ``--tuned`` settings if given, and the baseline pipeline, one after the other on the same files."""
    import pyarrow.parquet as pq

    from bench.baselines import BASELINES

    placement = {"actor_pool_size": args.actors, "num_gpus_per_actor": args.num_gpus}
    results = {
        "twinfer": timed_backfill(config, data_dir, work / "twinfer", **placement, **_given(batch_size=args.batch_size))
    }
    for i, text in enumerate(args.tuned or []):
        model, backfill = tuned_settings(text)
        row = timed_backfill(
            config.model_copy(update=model), data_dir, work / f"tuned-{i}", **{**placement, **backfill}
        )
        results.setdefault("tuned", []).append({"name": f"tuned: {text}", **row})
    if results.get("tuned"):
        best = max(results["tuned"], key=lambda row: row["img_s"])
        results["defaults_vs_best_tuned"] = {
            "best": best["name"],
            "ratio": round(results["twinfer"]["img_s"] / best["img_s"], 3),
        }
    with MemorySampler() as mem:
        started = time.perf_counter()
        rows = BASELINES[args.baseline](
            str(data_dir), str(work / "baseline"), config, args.actors, args.seed_batch_size, args.num_gpus
        )
        seconds = time.perf_counter() - started
    results["baseline"] = {
        "name": args.baseline,
        "images": rows,
        "seconds": round(seconds, 2),
        "img_s": round(rows / seconds, 1),
        **mem.summary(),
    }
    results["speedup"] = round(results["twinfer"]["img_s"] / results["baseline"]["img_s"], 2)
    results["top1_agreement_vs_fp32_cpu"] = top1_agreement(
        pq.read_table(work / "twinfer").to_pylist(), config, args.agreement_sample
    )
    return results


def tuned_settings(text: str) -> tuple[dict, dict]:
    """``batch_size=4,cpu_threads=2,compile=true`` -> (ModelConfig updates, BackfillConfig fields)."""
    from batch.config import BackfillConfig
    from shared import ModelConfig

    model, backfill = {}, {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, _, value = item.partition("=")
        parsed = {"true": True, "false": False}.get(value.lower(), int(value) if value.isdigit() else value)
        if key in ModelConfig.model_fields:
            model[key] = parsed
        elif key in BackfillConfig.model_fields:
            backfill[key] = parsed
        else:
            raise SystemExit(f"--tuned: {key!r} is neither a ModelConfig nor a BackfillConfig field")
    return model, backfill


def _given(**settings) -> dict:
    return {key: value for key, value in settings.items() if value is not None}


def timed_backfill(config, data_dir: Path, output: Path, **backfill) -> dict:
    """One ``run_backfill`` of ``data_dir`` into ``output`` (``backfill``: more ``BackfillConfig``
    fields), timed end to end, with host and GPU memory sampled throughout."""
    from batch.config import BackfillConfig
    from batch.pipeline import run_backfill

    with MemorySampler() as mem:
        started = time.perf_counter()
        summary = run_backfill(
            BackfillConfig(model=config, input=str(data_dir), output=str(output), top_k=5, **backfill)
        )
        seconds = time.perf_counter() - started
    return {
        "images": summary["rows"],
        "errors": summary["errors"],
        "seconds": round(seconds, 2),
        "img_s": round(summary["rows"] / seconds, 1),
        "ray_data_rows_s": ray_data_throughput(summary["stats"]),
        "settings": summary["settings"],
        **mem.summary(),
    }


def ray_data_throughput(stats: str) -> float | None:
    """The model stage's rows/s as Ray Data's stats report it (its "Operator throughput": rows over
    the operator's wall time, listing and Ray start-up excluded); where the stats have no model
    operator, the "Dataset throughput"; None if neither is there.

    A backfill's dataset-wide figure is not reported: its last operator is the Parquet write,
    which outputs no rows."""
    for section in re.split(r"^(?=Operator \d+ )", stats or "", flags=re.MULTILINE):
        if "Predictor" in section.split("\n", 1)[0]:
            match = re.search(r"\* Ray Data throughput: ([0-9.]+) rows/s", section)
            if match:
                return round(float(match.group(1)), 1)
    match = re.search(r"Dataset throughput:\s*\n\s*\* Ray Data throughput: ([0-9.]+) rows/s", stats or "")
    return round(float(match.group(1)), 1) if match else None


def top1_agreement(rows: list[dict], config, sample: int) -> dict:
    """The fast path's top-1 against the plain fp32 CPU wrapper on the same files."""
    from shared import ModelConfig, ModelWrapper

    plain = {
        "device": "cpu",
        "precision": "fp32",
        "compile": False,
        "decode": {**config.decode.model_dump(), "on_device": False},
    }
    reference = ModelWrapper(ModelConfig.model_validate({**config.model_dump(), **plain}))
    rows = [r for r in rows if r.get("error") is None][:sample]
    same = sum(
        reference.classify_bytes(Path(r["path"].removeprefix("file://")).read_bytes(), 1)[0]["index"]
        == r["top_indices"][0]
        for r in rows
    )
    return {"images": len(rows), "agree": same, "fraction": round(same / max(1, len(rows)), 4)}


def run_online(args, data_dir: Path, config) -> dict:
    from ray import serve

    from bench.baselines import docs_style_app

    port = start_serve().http
    if args.online_app == "shipped":
        app = shipped_app()
    else:
        app = twinfer_app(
            config,
            num_gpus=args.num_gpus,
            max_batch_size=args.online_batch or 4,
            ingress_replicas=args.ingress_replicas,
            decode_threads=args.decode_threads,
        )
    systems = {
        "twinfer": (app, f"/v1/models/{config.name}/classify"),
        "docs_style": (docs_style_app(config, args.num_gpus, 0.5), ""),
    }
    results = {}
    for name, (app, path) in systems.items():
        serve.run(app, name=name, route_prefix=f"/{name}")
        url = f"http://127.0.0.1:{port}/{name}{path}"
        results[name] = [
            closed_loop_load(url, data_dir, clients, args.duration, args.warmup) for clients in args.clients
        ]
        serve.delete(name)
    by_clients = {r["clients"]: r["req_s"] for r in results["docs_style"]}
    results["speedup"] = {
        c: round(r["req_s"] / by_clients[c], 2) if by_clients.get(c) else None
        for r in results["twinfer"]
        for c in [r["clients"]]
    }
    return results


def shipped_app():
    """The application ``serve run serve_config.yaml`` deploys, from that file's own args."""
    import yaml

    from deployments.app import build_app

    (application,) = yaml.safe_load((ROOT / "serve_config.yaml").read_text())["applications"]
    return build_app(application["args"])


def twinfer_app(
    config,
    *,
    num_gpus: float,
    max_batch_size: int,
    ingress_replicas: int,
    ingress_cpus: float = 0.5,
    decode_threads: int = 2,
):
    """The twinfer application serving ``config`` alone, batched up to ``max_batch_size``."""
    from deployments.app import build
    from deployments.config import AppArgs

    return build(
        AppArgs.model_validate(
            {
                "ingress": {
                    "num_replicas": ingress_replicas,
                    "num_cpus": ingress_cpus,
                    "decode_threads": decode_threads,
                },
                "models": [
                    {
                        "model": config.model_dump(),
                        "num_gpus": num_gpus,
                        "num_cpus": 0.5,
                        "max_ongoing_requests": max(128, max_batch_size * 2),
                        "max_queued_requests": 1024,
                        "batching": {
                            "max_batch_size": max_batch_size,
                            "batch_wait_timeout_s": 0.005,
                            "max_concurrent_batches": 2,
                        },
                    }
                ],
            }
        )
    )


def closed_loop_load(url: str, data_dir: Path, clients: int, duration: float, warmup: float) -> dict:
    """``bench.load`` in its own process against ``url``, with memory sampled meanwhile: its JSON row."""
    with MemorySampler() as mem:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.load",
                "--url",
                url,
                "--files",
                str(data_dir),
                "--clients",
                str(clients),
                "--duration",
                str(duration),
                "--warmup",
                str(warmup),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=duration + warmup + 120,
            check=True,
        )
    return json.loads(out.stdout.strip().splitlines()[-1]) | mem.summary()


def print_tables(result: dict) -> None:
    print(f"\n== {result['model']} on {result['machine']}, {result['images']} images, ingress {result['ingress']} ==")
    if "batch" in result:
        b = result["batch"]
        print(f"{'batch':<40}{'img/s':>10}{'seconds':>10}{'host GiB':>10}{'growth':>8}{'GPU GiB':>9}{'growth':>8}")
        for r in [{"name": "twinfer (defaults)", **b["twinfer"]}, *b.get("tuned", []), b["baseline"]]:
            name = r["name"]
            print(
                f"{name:<40}{r['img_s']:>10}{r['seconds']:>10}{r['host_mem_gib']:>10}{_gib(r['host_growth_gib']):>8}"
                f"{_gib(r['gpu_mem_peak_gib']):>9}{_gib(r['gpu_growth_gib']):>8}"
            )
        for r in [{"name": "twinfer (defaults)", **b["twinfer"]}, *b.get("tuned", [])]:
            print(f"{r['name']} ran with {r['settings']}")
        if "defaults_vs_best_tuned" in b:
            best = b["defaults_vs_best_tuned"]
            print(f"defaults / best tuned ({best['best']}): {best['ratio']}")
        agreement = b["top1_agreement_vs_fp32_cpu"]
        print(
            f"speed-up x{b['speedup']} over {b['baseline']['name']}; top-1 agreement with fp32 CPU: "
            f"{agreement['agree']}/{agreement['images']} ({agreement['fraction']:.2%})"
        )
    if "online" in result:
        print(f"\n{'online':<12}{'clients':>8}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}{'GPU GiB':>9}")
        for name in ("twinfer", "docs_style"):
            for r in result["online"][name]:
                print(
                    f"{name:<12}{r['clients']:>8}{r['req_s']:>10}{r['p50_ms']:>10}{r['p99_ms']:>10}{r['errors']:>8}{_gib(r['gpu_mem_peak_gib']):>9}"
                )
        print(f"speed-up by clients: {result['online']['speedup']}")


def _gib(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=400, help="images in the generated dataset")
    parser.add_argument("--data", type=Path, help="reuse/generate the dataset here (default: a temp dir)")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--weights", default="default")
    parser.add_argument("--precision", default=None, help="default: the product's (auto)")
    parser.add_argument(
        "--compile", default=None, choices=["auto", "true", "false"], help="default: the product's (auto)"
    )
    parser.add_argument(
        "--decode-on-device",
        action="store_true",
        help="decode.on_device: JPEGs decoded by nvJPEG in the model process (CUDA)",
    )
    parser.add_argument("--num-gpus", type=float, default=0.0)
    parser.add_argument("--actors", type=int, default=1)
    parser.add_argument(
        "--batch-size", type=int, default=None, help="twinfer's backfill batch size (default: the product's, auto)"
    )
    parser.add_argument(
        "--tuned",
        action="append",
        metavar="K=V,...",
        help="also run twinfer with these settings (ModelConfig/BackfillConfig fields), "
        "e.g. batch_size=4,cpu_threads=2; "
        "repeat for more variants",
    )
    parser.add_argument(
        "--baseline",
        choices=["seed-faithful", "pil-first"],
        default="seed-faithful",
        help="the batch baseline: the seeds' pipeline as written, or with PIL resizing first (bench/baselines.py)",
    )
    parser.add_argument(
        "--seed-batch-size", type=int, default=32, help="the baseline pipeline's batch size (the seeds use 32)"
    )
    parser.add_argument(
        "--online-app",
        choices=["shipped", "custom"],
        default="shipped",
        help="shipped: the app serve_config.yaml deploys, as it is; custom: --online-batch, --ingress-replicas, ...",
    )
    parser.add_argument("--online-batch", type=int, default=None, help="custom app: max_batch_size")
    parser.add_argument(
        "--cpu-threads", default=None, help="twinfer: torch threads per model process (default: the product's, auto)"
    )
    parser.add_argument("--ingress-replicas", type=int, default=1)
    parser.add_argument("--decode-threads", type=int, default=2)
    parser.add_argument("--clients", type=lambda s: [int(c) for c in s.split(",")], default=[1, 16, 128])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--agreement-sample", type=int, default=200)
    parser.add_argument("--ingress", choices=["default", "haproxy"], default="default")
    parser.add_argument("--skip-batch", action="store_true")
    parser.add_argument("--skip-online", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "result.json")
    args = parser.parse_args(argv)

    if args.ingress == "haproxy":  # must be in the environment before Ray/Serve start
        os.environ.update(RAY_SERVE_ENABLE_HA_PROXY="1", RAY_SERVE_THROUGHPUT_OPTIMIZED="1")
    import ray

    from bench.dataset import make_dataset
    from shared import ModelConfig

    compile_setting = {"true": True, "false": False, "auto": "auto"}.get(args.compile) if args.compile else None
    threads = int(args.cpu_threads) if args.cpu_threads and args.cpu_threads.isdigit() else args.cpu_threads
    config = ModelConfig(
        name=args.model,
        weights=args.weights,
        device="cuda" if args.decode_on_device else "auto",
        decode={"on_device": args.decode_on_device},
        **_given(precision=args.precision, compile=compile_setting, cpu_threads=threads),
    )
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data or Path(tmp) / "images"
        if not any(data_dir.rglob("*.jpg")) if data_dir.exists() else True:
            make_dataset(data_dir, args.n)
        images = sum(1 for _ in data_dir.rglob("*.jpg"))
        ray.init(include_dashboard=False, log_to_driver=False)
        result = {
            **provenance("bench.run", argv),
            "model": args.model,
            "weights": args.weights,
            "images": images,
            "ingress": args.ingress,
        }
        if not args.skip_batch:
            result["batch"] = run_batch(args, data_dir, Path(tmp), config)
        if not args.skip_online:
            result["online"] = run_online(args, data_dir, config)
        ray.shutdown()
    print_tables(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\nJSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
