"""``twinfer`` command line: demo, backfill, evaluate."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="twinfer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="classify scikit-image's sample photos directly, online and offline")
    demo.add_argument("--model", default="efficientnet_lite0")
    demo.add_argument("--weights", default="default")
    demo.add_argument("--skip-online", action="store_true")
    demo.add_argument("--skip-offline", action="store_true")

    args = parser.parse_args(argv)
    if args.command == "demo":
        from twinfer.demo import run_demo

        return run_demo(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
