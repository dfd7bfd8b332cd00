"""What twinfer's commands print: their own progress and summary, not Ray's.

``quiet()`` (the CLI's default; ``--verbose`` skips it) keeps Ray's INFO lines and internal
warnings off the terminal while Ray's log files get what they always get:

- Ray's Python loggers (``ray``, ``ray.data``, ``ray.serve``) print errors only; Ray Data's own
  file handler (``ray-data.log`` in the session's logs) keeps every level;
- Ray Data's progress bars stay off (``is_quiet()``): the backfill prints its own progress line;
- ``ray_init_options()``: workers' output stays in their log files (``log_to_driver``), and the
  driver's Ray logging starts at ERROR;
- what Ray's native code writes to the process's stderr (the core worker's lines) goes to a file,
  ``native_log``, named on the terminal when the command fails (else removed); Python's
  ``sys.stderr`` (twinfer's own progress and errors) still goes to the terminal.

Library callers (``run_backfill`` from Python) get Ray's defaults: nothing here runs unless a
command calls ``quiet()``.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import warnings

RAY_LOGGERS = ("ray", "ray.data", "ray.serve", "ray.train", "ray.tune")

_quiet = False
native_log: str | None = None
_restore: tuple[int, object] | None = None  # the terminal's descriptor and the sys.stderr it replaced


def quiet() -> None:
    global _quiet, native_log
    if _quiet:
        return
    _quiet = True
    warnings.filterwarnings("ignore", module=r"ray(\.|$)")
    # Ray Data configures its loggers when imported: import it first, then turn its console down
    import ray.data  # noqa: F401

    for name in RAY_LOGGERS:
        ray_logger = logging.getLogger(name)
        for handler in ray_logger.handlers:
            if not isinstance(handler, logging.FileHandler):
                handler.setLevel(logging.ERROR)
        # handlers added later (Serve adds its own when it starts) see no record below ERROR
        # logged on this logger itself
        ray_logger.addFilter(_errors_only)
    logging.getLogger("ray").setLevel(logging.ERROR)
    native_log = _native_stderr_to_file()


def _errors_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR


def is_quiet() -> bool:
    return _quiet


def ray_init_options() -> dict:
    """Keyword arguments for ``ray.init`` that follow ``quiet()`` (none when it was not called)."""
    if not _quiet:
        return {}
    return {"log_to_driver": False, "logging_level": logging.ERROR}


def _native_stderr_to_file() -> str | None:
    """Point file descriptor 2 at a file and keep ``sys.stderr`` on the terminal."""
    global _restore
    try:
        terminal = os.dup(2)
        fd, path = tempfile.mkstemp(prefix=f"twinfer-{os.getpid()}-", suffix=".stderr.log")
    except OSError:
        return None
    sys.stderr.flush()
    os.dup2(fd, 2)
    os.close(fd)
    _restore = (terminal, sys.stderr)
    sys.stderr = os.fdopen(os.dup(terminal), "w", buffering=1, encoding=sys.stderr.encoding, errors="backslashreplace")
    return path


def done(failed: bool) -> None:
    """At the command's end: stderr back as it was; the native log is named when the command
    failed and it holds something, else removed (Ray's own log files have the same lines)."""
    global _quiet, _restore
    if _restore is not None:
        terminal, stderr = _restore
        sys.stderr.flush()
        sys.stderr.close()
        os.dup2(terminal, 2)
        os.close(terminal)
        sys.stderr, _restore = stderr, None
    _quiet = False
    if native_log is None:
        return
    try:
        kept = failed and os.path.getsize(native_log) > 0
        if not kept:
            os.unlink(native_log)
    except OSError:
        return
    if kept:
        print(f"Ray's own messages: {native_log} (and Ray's logs under /tmp/ray/session_latest/logs)", file=sys.stderr)
