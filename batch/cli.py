"""``twinfer backfill`` and ``twinfer evaluate``: flags -> validated configs -> pipeline / evaluate."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml
from pydantic import ValidationError

from shared.config import ModelConfig
from shared.registry import DEFAULT_MODEL
from shared.tasks import DEFAULT_TOP_K

from batch.config import BackfillConfig
from batch.uris import S3Options


def register(subparsers) -> None:
    backfill = subparsers.add_parser(
        "backfill", help="classify (or detect) every image under a URI with Ray Data, writing Parquet",
    )
    model = backfill.add_argument_group(
        "model (the ModelConfig vocabulary of serve_config.yaml; flags override --model-config)"
    )
    model.add_argument(
        "--model-config", default=None, metavar="FILE",
        help="YAML/JSON: a model mapping (as under `model:` in serve_config.yaml), or a Serve config "
        "file itself, whose entry for --model (or its one enabled model) is used",
    )
    model.add_argument("--model", default=None, help=f"model name (default {ModelConfig().name}); or torchvision:<builder>, hf:<id or dir>, timm:<name>")
    model.add_argument("--task", default=None, choices=["auto", "classify", "detect", "embed"], help="auto = what the model's head does")
    model.add_argument("--revision", default=None, help="hf: models: the hub revision to load")
    model.add_argument("--weights", default=None, help="default | pretrained | random | path to a state dict")
    model.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"])
    model.add_argument("--precision", default=None, choices=["auto", "fp32", "fp16", "bf16"])
    model.add_argument("--compile", action="store_true", default=None, help="torch.compile, warmed at actor start")
    model.add_argument("--cpu-threads", type=int, default=None, help="torch threads per actor on CPU")
    model.add_argument("--score-threshold", type=float, default=None, help="detection: minimum score")
    model.add_argument(
        "--decode-on-device", action="store_true", default=None,
        help="decode.on_device: JPEGs decoded in batches on the GPU (nvJPEG); needs --device cuda",
    )
    backfill.add_argument("--input", required=True, help="s3://bucket/prefix, s3://anonymous@bucket/prefix or a local directory")
    backfill.add_argument(
        "--output", required=True,
        help="directory URI for the Parquet files (s3:// or local): new, empty, or an earlier output of the same model to resume",
    )
    backfill.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, help=f"classification: predictions kept per image ({DEFAULT_TOP_K})")
    backfill.add_argument("--batch-size", type=int, default=64, help="images per model call (64)")
    backfill.add_argument("--rows-per-call", type=int, default=None, help="rows per model-actor call, run --batch-size at a time (max(batch size, 256))")
    backfill.add_argument("--actors", dest="actor_pool_size", type=int, default=1, help="model actor pool size (1)")
    backfill.add_argument("--gpus-per-actor", dest="num_gpus_per_actor", type=float, default=0.0, help="0 on CPU (default)")
    backfill.add_argument("--cpus-per-actor", dest="num_cpus_per_actor", type=float, default=1.0, help="CPUs reserved per model actor (1)")
    backfill.add_argument(
        "--resources-per-actor", type=json.loads, default=None, metavar="JSON",
        help='custom Ray resources per model actor, e.g. \'{"worker": 1}\': only nodes started with them run the actors',
    )
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
    group.add_argument("--s3-access-key", default=None, help="prefer AWS_ACCESS_KEY_ID or ~/.aws/credentials (AWS_PROFILE)")
    group.add_argument(
        "--s3-secret-key", default=None,
        help="prefer AWS_SECRET_ACCESS_KEY or ~/.aws/credentials: a flag shows in process listings and shell history",
    )


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
        model=model_mapping(args),
        input=args.input,
        output=args.output,
        top_k=args.top_k,
        batch_size=args.batch_size,
        rows_per_call=args.rows_per_call,
        actor_pool_size=args.actor_pool_size,
        num_gpus_per_actor=args.num_gpus_per_actor,
        num_cpus_per_actor=args.num_cpus_per_actor,
        resources_per_actor=args.resources_per_actor or {},
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


MODEL_FLAGS = {"model": "name", "task": "task", "revision": "revision", "weights": "weights", "device": "device", "precision": "precision",
               "compile": "compile", "cpu_threads": "cpu_threads", "score_threshold": "score_threshold"}


def model_mapping(args) -> dict:
    """--model-config's mapping with the model flags given on the command line on top."""
    flags = {key: getattr(args, flag) for flag, key in MODEL_FLAGS.items() if getattr(args, flag) is not None}
    base = read_model_config(args.model_config, flags.get("name")) if args.model_config else {}
    mapping = {**base, **flags}
    if args.decode_on_device:
        mapping["decode"] = {**(mapping.get("decode") or {}), "on_device": True}
    return mapping


def read_model_config(path: str, name: str | None = None) -> dict:
    """A model mapping from ``path``: the file's own mapping, or, for a Serve config file (it has
    ``applications``), the ``model`` of the entry named ``name`` (else of its one enabled entry)."""
    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping, got {type(data).__name__}")
    if "applications" not in data:
        return data
    entries = [entry for app in data["applications"] or [] for entry in ((app.get("args") or {}).get("models") or [])]
    if name is not None:
        found = [e.get("model") or {} for e in entries if (e.get("model") or {}).get("name", DEFAULT_MODEL) == name]
        wanted = f"model {name!r}"
    else:
        found = [e.get("model") or {} for e in entries if e.get("enabled", True)]
        wanted = "one enabled model (or name one with --model)"
    if len(found) != 1:
        raise ValueError(f"{path}: expected {wanted} under applications[].args.models, found {len(found)}")
    return found[0]


def describe(exc: Exception) -> str:
    """An error for the terminal. A ValidationError is listed without its input values (pydantic's
    own text quotes them, the S3 secret key included)."""
    if not isinstance(exc, ValidationError):
        return str(exc)
    lines = []
    for error in exc.errors(include_url=False, include_context=False, include_input=False):
        where = ".".join(str(part) for part in error["loc"]) or "settings"
        lines.append(f"  {where}: {error['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)


def _backfill(args) -> int:
    from batch.ownership import OutputRefused
    from batch.pipeline import DecodeWouldStarve, run_backfill

    try:
        config = config_from_args(args)
    except (ValidationError, ValueError, OSError, yaml.YAMLError) as exc:
        print(f"twinfer backfill: invalid settings\n{describe(exc)}", file=sys.stderr)
        return 2
    try:
        run_backfill(config)
    except (DecodeWouldStarve, OutputRefused, FileNotFoundError, ValidationError) as exc:
        print(f"twinfer backfill: {describe(exc)}", file=sys.stderr)
        return 2
    return 0


def _evaluate(args) -> int:
    from batch.evaluate import run_evaluate
    from batch.ownership import OutputRefused

    try:
        s3 = S3Options(**_s3_options(args))
    except ValidationError as exc:
        print(f"twinfer evaluate: invalid S3 settings\n{describe(exc)}", file=sys.stderr)
        return 2
    try:
        run_evaluate(args.predictions, args.output, s3)
    except (OutputRefused, FileNotFoundError, ValueError) as exc:
        print(f"twinfer evaluate: {describe(exc)}", file=sys.stderr)
        return 2
    return 0
