"""``twinfer backfill`` and ``twinfer evaluate``: flags -> validated configs -> pipeline / evaluate."""

from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError

from shared.config import ModelConfig
from shared.wrapper import DEFAULT_TOP_K

from batch.config import BackfillConfig
from batch.uris import S3Options


def register(subparsers) -> None:
    backfill = subparsers.add_parser(
        "backfill", help="classify (or detect) every image under a URI with Ray Data, writing Parquet",
    )
    backfill.add_argument("--model", default=ModelConfig().name)
    backfill.add_argument("--weights", default="default", help="default | pretrained | random | path to a state dict")
    backfill.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    backfill.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    backfill.add_argument("--score-threshold", type=float, default=ModelConfig().score_threshold, help="detection: minimum score")
    backfill.add_argument("--input", required=True, help="s3://bucket/prefix, s3://anonymous@bucket/prefix or a local directory")
    backfill.add_argument("--output", required=True, help="directory URI for the Parquet files (s3:// or local)")
    backfill.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, help=f"classification: predictions kept per image ({DEFAULT_TOP_K})")
    backfill.add_argument("--batch-size", type=int, default=64, help="images per model call (64)")
    backfill.add_argument("--actors", dest="actor_pool_size", type=int, default=1, help="model actor pool size (1)")
    backfill.add_argument("--gpus-per-actor", dest="num_gpus_per_actor", type=float, default=0.0, help="0 on CPU (default)")
    backfill.add_argument("--cpus-per-actor", dest="num_cpus_per_actor", type=float, default=1.0, help="CPUs reserved per model actor (1)")
    backfill.add_argument("--decode-cpus", type=float, default=1.0, help="CPUs reserved per decode task (1)")
    backfill.add_argument("--decode-parallelism", type=int, default=None, help="most decode tasks at once (default: as resources allow)")
    backfill.add_argument("--read-blocks", type=int, default=None, help="override the number of read blocks")
    backfill.add_argument("--rows-per-file", dest="min_rows_per_file", type=int, default=1024, help="rows gathered per Parquet file (1024)")
    backfill.add_argument("--extensions", default=None, help="comma-separated, e.g. jpg,jpeg,png (default: every file)")
    backfill.add_argument("--address", default=None, help="join this Ray cluster (e.g. auto or ray://host:10001)")
    backfill.add_argument("--no-progress", dest="progress", action="store_false", help="hide Ray Data progress bars")
    backfill.add_argument("--evaluate", action="store_true", help="then report accuracy against the label column")
    backfill.add_argument("--evaluation-output", default=None, help="JSON report URI (default: <output>.evaluation.json)")
    _add_s3_arguments(backfill)
    backfill.set_defaults(handler=_backfill)

    evaluate = subparsers.add_parser(
        "evaluate", help="top-1 / top-5 / per-class accuracy of a backfill's predictions",
    )
    evaluate.add_argument("--predictions", required=True, help="the backfill's output URI")
    evaluate.add_argument("--output", default=None, help="JSON report URI (default: <predictions>.evaluation.json)")
    _add_s3_arguments(evaluate)
    evaluate.set_defaults(handler=_evaluate)


def _add_s3_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("S3 (unset values fall back to AWS_* environment variables)")
    group.add_argument("--s3-endpoint", default=None, help="custom endpoint, host:port or http(s)://host:port")
    group.add_argument("--s3-region", default=None)
    group.add_argument("--s3-scheme", default=None, choices=["http", "https"])
    group.add_argument("--s3-anonymous", action="store_true", help="unsigned requests (public buckets)")
    group.add_argument("--s3-access-key", default=None)
    group.add_argument("--s3-secret-key", default=None)


def _s3_options(args) -> dict:
    return {
        "endpoint_override": args.s3_endpoint,
        "region": args.s3_region,
        "scheme": args.s3_scheme,
        "anonymous": args.s3_anonymous,
        "access_key": args.s3_access_key,
        "secret_key": args.s3_secret_key,
    }


def config_from_args(args) -> BackfillConfig:
    """The validated ``BackfillConfig`` for parsed ``backfill`` flags (raises pydantic's ValidationError)."""
    return BackfillConfig(
        model={
            "name": args.model,
            "weights": args.weights,
            "device": args.device,
            "precision": args.precision,
            "score_threshold": args.score_threshold,
        },
        input=args.input,
        output=args.output,
        top_k=args.top_k,
        batch_size=args.batch_size,
        actor_pool_size=args.actor_pool_size,
        num_gpus_per_actor=args.num_gpus_per_actor,
        num_cpus_per_actor=args.num_cpus_per_actor,
        decode_cpus=args.decode_cpus,
        decode_parallelism=args.decode_parallelism,
        read_blocks=args.read_blocks,
        min_rows_per_file=args.min_rows_per_file,
        extensions=tuple(e for e in args.extensions.split(",") if e) if args.extensions else None,
        s3=_s3_options(args),
        address=args.address,
        progress=args.progress,
        evaluate=args.evaluate,
        evaluation_output=args.evaluation_output,
    )


def _backfill(args) -> int:
    from batch.pipeline import run_backfill

    try:
        config = config_from_args(args)
    except ValidationError as exc:
        print(f"twinfer backfill: invalid settings\n{exc}", file=sys.stderr)
        return 2
    run_backfill(config)
    return 0


def _evaluate(args) -> int:
    from batch.evaluate import run_evaluate

    try:
        s3 = S3Options(**_s3_options(args))
    except ValidationError as exc:
        print(f"twinfer evaluate: invalid S3 settings\n{exc}", file=sys.stderr)
        return 2
    run_evaluate(args.predictions, args.output, s3)
    return 0
