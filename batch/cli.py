"""``twinfer backfill`` and ``twinfer evaluate``: flags -> validated configs -> pipeline / evaluate."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml
from pydantic import ValidationError

from batch import flags
from batch.config import BackfillConfig
from batch.uris import S3Options
from shared.registry import DEFAULT_MODEL

# flag names kept from before the flags were generated, or shorter than the field's
BACKFILL_RENAMES = {
    "model.name": "model",
    "actor_pool_size": "actors",
    "num_gpus_per_actor": "gpus-per-actor",
    "num_cpus_per_actor": "cpus-per-actor",
    "min_rows_per_file": "rows-per-file",
    "s3.endpoint_override": "s3-endpoint",
}
S3_RENAMES = {"endpoint_override": "s3-endpoint"}
REQUIRED = ("output",)  # and input or input_manifest (BackfillConfig checks)
_BACKFILL_FLAGS: dict[str, tuple[str, ...]] = {}
_EVALUATE_FLAGS: dict[str, tuple[str, ...]] = {}


def register(subparsers) -> None:
    backfill = subparsers.add_parser(
        "backfill",
        help="classify, detect or embed every image under a URI with Ray Data, writing Parquet",
        description="Every option below is a field of BackfillConfig / ModelConfig (the vocabulary of "
        "serve_config.yaml); an option not given keeps the config's default.",
    )
    backfill.add_argument(
        "--model-config",
        default=None,
        metavar="FILE",
        help="YAML/JSON: a model mapping (as under `model:` in serve_config.yaml), or a Serve config "
        "file itself, whose entry for --model (or its one enabled model) is used; model flags override it",
    )
    _BACKFILL_FLAGS.update(
        flags.add_flags(
            backfill,
            BackfillConfig,
            renames=BACKFILL_RENAMES,
            flatten=("model",),
            group_titles={
                "model": "model (ModelConfig)",
                "model.decode": "decoding (ModelConfig.decode)",
                "s3": S3_TITLE,
            },
        )
    )
    backfill.set_defaults(handler=_backfill)

    evaluate = subparsers.add_parser(
        "evaluate",
        help="top-1 / top-5 / per-class accuracy of a backfill's predictions",
    )
    evaluate.add_argument("--predictions", required=True, help="the backfill's output URI")
    evaluate.add_argument("--output", default=None, help="JSON report URI (default: <predictions>.evaluation.json)")
    _EVALUATE_FLAGS.update(
        flags.add_flags(evaluate.add_argument_group(S3_TITLE), S3Options, prefix="s3-", renames=S3_RENAMES)
    )
    evaluate.set_defaults(handler=_evaluate)

    from batch.compare_cli import register as register_compare  # twinfer compare: its own file

    register_compare(subparsers, S3_TITLE, S3_RENAMES)


S3_TITLE = (
    "S3 (unset values fall back to the AWS environment variables and ~/.aws/credentials; prefer those to "
    "key flags, which show in process listings and shell history)"
)


def config_from_args(args) -> BackfillConfig:
    """The validated ``BackfillConfig`` for parsed ``backfill`` flags (raises pydantic's ValidationError)."""
    given = flags.values(args, _BACKFILL_FLAGS)
    missing = [name for name in REQUIRED if name not in given]
    if missing:
        raise ValueError(f"required: {', '.join('--' + name for name in missing)}")
    model = given.get("model", {})
    if args.model_config:
        model = _merged(read_model_config(args.model_config, model.get("name")), model)
    return BackfillConfig.model_validate({**given, "model": model})


def _merged(base: dict, top: dict) -> dict:
    """``top`` over ``base``, nested mappings merged key by key (a --decode-* flag keeps the file's
    other decode keys)."""
    out = dict(base)
    for key, value in top.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


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
    from batch.lease import LeaseHeld
    from batch.manifest import ManifestError
    from batch.ownership import OutputRefused
    from batch.pipeline import DecodeWouldStarve, run_backfill
    from batch.plan import PlanChanged

    try:
        config = config_from_args(args)
    except (ValidationError, ValueError, OSError, yaml.YAMLError) as exc:
        print(f"twinfer backfill: invalid settings\n{describe(exc)}", file=sys.stderr)
        return 2
    try:
        run_backfill(config)
    except (
        DecodeWouldStarve,
        OutputRefused,
        FileNotFoundError,
        ValidationError,
        LeaseHeld,
        PlanChanged,
        ManifestError,
    ) as exc:
        print(f"twinfer backfill: {describe(exc)}", file=sys.stderr)
        return 2
    return 0


def _evaluate(args) -> int:
    from batch.evaluate import run_evaluate
    from batch.ownership import OutputRefused

    try:
        s3 = S3Options.model_validate(flags.values(args, _EVALUATE_FLAGS))
    except ValidationError as exc:
        print(f"twinfer evaluate: invalid S3 settings\n{describe(exc)}", file=sys.stderr)
        return 2
    try:
        run_evaluate(args.predictions, args.output, s3)
    except (OutputRefused, FileNotFoundError, ValueError) as exc:
        print(f"twinfer evaluate: {describe(exc)}", file=sys.stderr)
        return 2
    return 0
