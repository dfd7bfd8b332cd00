"""``twinfer`` command line: demo, backfill, evaluate.

Each path registers its own sub-commands (``batch.cli.register``); this file only wires them.
"""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="twinfer", description="One image model, two paths on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="classify scikit-image's sample photos directly, online and offline")
    demo.add_argument("--model", default="efficientnet_lite0")
    demo.add_argument("--weights", default="default")
    demo.add_argument("--skip-online", action="store_true")
    demo.add_argument("--skip-offline", action="store_true")
    demo.set_defaults(handler=_demo)

    from batch.cli import register as register_batch

    register_batch(sub)
    for command in sub.choices.values():
        command.add_argument(
            "--verbose", action="store_true", help="print Ray's own INFO lines and warnings too (twinfer/console.py)"
        )
    return parser


def _demo(args) -> int:
    from twinfer.demo import run_demo

    return run_demo(args)


def main(argv: list[str] | None = None, *, quiet: bool = False) -> int:
    """Run one command. ``quiet``: keep Ray's own output off the terminal unless ``--verbose``
    (``twinfer.console``); the ``twinfer`` command sets it, callers in Python get Ray's defaults."""
    from twinfer import console

    args = build_parser().parse_args(argv)
    if quiet and not args.verbose:
        console.quiet()
    code = 1
    try:
        code = int(args.handler(args) or 0)
    finally:
        console.done(failed=code != 0)
    return code


def cli() -> int:
    """The ``twinfer`` command."""
    return main(quiet=True)


if __name__ == "__main__":
    sys.exit(cli())
