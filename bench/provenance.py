"""What every bench result records about its run: when, where, which code, and the command."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def commit() -> str | None:
    """The checkout's short commit, or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def provenance(module: str, argv: list[str] | None = None) -> dict:
    """``date``, ``machine``, ``commit`` and ``command`` (``python -m <module> <args>``)."""
    args = argv if argv is not None else sys.argv[1:]
    return {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.node()} ({os.cpu_count()} cores)",
        "commit": commit(),
        "command": " ".join(["python -m", module, *args]),
    }
