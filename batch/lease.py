"""One writer at a time: a lease file under the output, kept fresh by a heartbeat.

A run writes ``_twinfer/lease.json`` (an owner id, host, pid and the heartbeat's time) before
it plans or writes anything, rewrites it every ``timeout / 4`` seconds, and deletes it when it
ends. A second run into the same output finds the lease and is refused (``LeaseHeld``) while the
heartbeat is younger than ``timeout`` seconds (``lease_timeout_s``, default 120). An older
heartbeat means its run died (kill -9, a lost machine): the lease is taken over, with a warning.
So is a lease whose holder ran on this same host (same host name) under a process id that no
longer exists: a run killed on this machine is resumed at once, without waiting out the timeout.

After writing its lease a run reads it back and goes on only if it still holds its owner id:
two runs starting within the same instant both read each other's write and one of them loses.
(Neither S3 nor pyarrow offers an atomic create-if-absent here; the window is the time between
a write and its read-back.)
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid

import pyarrow.fs as pafs

from batch import layout

logger = logging.getLogger(__name__)

SETTLE_S = 0.2  # between writing the lease and reading it back


class LeaseHeld(RuntimeError):
    """Another live run holds the output."""


class Lease:
    def __init__(self, fs: pafs.FileSystem, output: str, timeout_s: float, shown: str):
        self.fs, self.output, self.timeout_s, self.shown = fs, output, timeout_s, shown
        self.path = layout.state(output, "lease.json")
        self.owner = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> "Lease":
        current = self.read()
        if current is not None:
            age = time.time() - float(current.get("heartbeat", 0))
            if age < self.timeout_s and not _dead_here(current):
                raise LeaseHeld(
                    f"output {self.shown} is being written by another backfill (pid {current.get('pid')} on "
                    f"{current.get('host')}, heartbeat {age:.0f} s ago): one run writes an output at a time. "
                    f"Wait for it to end, or, if it is dead, rerun after {self.timeout_s:.0f} s without a heartbeat"
                )
            logger.warning(
                "output %s: taking over the lease of pid %s on %s (no heartbeat for %.0f s, or that process is gone)",
                self.shown,
                current.get("pid"),
                current.get("host"),
                age,
            )
        self._write()
        time.sleep(SETTLE_S)
        if (self.read() or {}).get("owner") != self.owner:
            raise LeaseHeld(f"output {self.shown}: another backfill took the lease at the same time")
        self._thread = threading.Thread(target=self._beat, name="twinfer-lease", daemon=True)
        self._thread.start()
        return self

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if (self.read() or {}).get("owner") == self.owner:
            self.fs.delete_file(self.path)

    def __enter__(self) -> "Lease":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def read(self) -> dict | None:
        data = layout.read_small(self.fs, self.path, 64 * 1024)
        try:
            return json.loads(data) if data else None
        except ValueError:
            return {}  # unreadable: treated as a dead run's (heartbeat 0)

    def _write(self) -> None:
        body = {"owner": self.owner, "host": socket.gethostname(), "pid": os.getpid(), "heartbeat": time.time()}
        layout.write_bytes_whole(self.fs, json.dumps(body).encode(), self.path)

    def _beat(self) -> None:
        while not self._stop.wait(self.timeout_s / 4):
            try:
                if (self.read() or {}).get("owner") != self.owner:
                    logger.error("output %s: the lease was taken over by another run", self.shown)
                    return
                self._write()
            except OSError as exc:  # a passing storage error: the next beat tries again
                logger.warning("lease heartbeat failed: %s", exc)


def _dead_here(lease: dict) -> bool:
    """The holder ran on this host and its process is gone."""
    if lease.get("host") != socket.gethostname() or not isinstance(lease.get("pid"), int):
        return False
    try:
        os.kill(lease["pid"], 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # it exists (owned by someone else)
    return False
