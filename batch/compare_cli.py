"""``twinfer compare A B``: its flags and its handler (the work is ``batch.compare.run_compare``)."""

from __future__ import annotations

import sys

from pydantic import ValidationError

from batch import flags
from batch.uris import S3Options

_S3_FLAGS: dict[str, tuple[str, ...]] = {}


def register(subparsers, s3_title: str, s3_renames: dict[str, str]) -> None:
    compare = subparsers.add_parser(
        "compare",
        help="compare two backfills of the same inputs: agreement, flips, score shifts, boxes, embeddings",
        description="Joins two backfill outputs on the input path and writes a JSON report, an HTML page "
        "and a PNG plot beside it. Inputs only one output has are counted, not dropped.",
    )
    compare.add_argument("a", metavar="A", help="the reference backfill's output URI (e.g. the current model)")
    compare.add_argument("b", metavar="B", help="the candidate backfill's output URI")
    compare.add_argument(
        "--output", default=None, help="JSON report URI (default: <B>.vs-<A's name>.comparison.json beside B)"
    )
    compare.add_argument(
        "--work-dir",
        default=None,
        help="local folder for the join's temporary files (the compared columns of both outputs, compressed; "
        "default: the system's temporary folder)",
    )
    _S3_FLAGS.update(flags.add_flags(compare.add_argument_group(s3_title), S3Options, prefix="s3-", renames=s3_renames))
    compare.set_defaults(handler=_compare)


def _compare(args) -> int:
    from batch.cli import describe
    from batch.compare import run_compare
    from batch.ownership import OutputRefused

    try:
        s3 = S3Options.model_validate(flags.values(args, _S3_FLAGS))
    except ValidationError as exc:
        print(f"twinfer compare: invalid S3 settings\n{describe(exc)}", file=sys.stderr)
        return 2
    try:
        run_compare(args.a, args.b, args.output, s3, args.work_dir)
    except (OutputRefused, FileNotFoundError, ValueError) as exc:
        print(f"twinfer compare: {describe(exc)}", file=sys.stderr)
        return 2
    return 0
