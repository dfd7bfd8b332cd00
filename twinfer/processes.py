"""Starting processes that must stop on SIGINT as they do on Ctrl-C."""

from __future__ import annotations

import sys

# A command started from a background job of a non-interactive shell inherits SIGINT *ignored*, and
# a Python program that starts with SIGINT ignored never raises KeyboardInterrupt: `serve run` would
# then ignore the SIGINT meant to shut Serve down. The launcher puts the default back, then execs.
_DEFAULT_SIGINT_EXEC = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"
)


def with_default_sigint(argv: list[str]) -> list[str]:
    """``argv`` (its first element an absolute path) run with SIGINT at its default disposition."""
    return [sys.executable, "-c", _DEFAULT_SIGINT_EXEC, *argv]
