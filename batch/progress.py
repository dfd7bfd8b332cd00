"""Progress a person can read: shards and images done, img/s, ETA and errors so far.

``Progress.line()`` is one terminal line; ``update`` prints it at most every ``interval_s``
seconds (and ``finish`` once more at the end), and writes the same figures as
``_twinfer/progress.json`` under the output. Images done are those of shards marked done plus
the rows this run wrote in shards still open (inputs an unfinished shard had already written
count when it is marked). Rates count this run's images only; the ETA is the images left over
the rate so far.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field

import pyarrow.fs as pafs

from batch import layout


@dataclass
class Progress:
    fs: pafs.FileSystem
    output: str
    shards: int
    inputs: int
    shards_done: int  # when the run started
    inputs_done: int  # when the run started
    interval_s: float = 10.0
    stream: object = None  # None: sys.stderr when a line is printed (twinfer.console may replace it)
    rows: int = 0  # written by this run
    errors: int = 0  # error rows written by this run
    shards_finished: int = 0  # marked by this run
    finished_inputs: int = 0  # the planned inputs of the shards marked by this run
    open_rows: dict = field(default_factory=dict)  # shard -> rows this run wrote in it, until it is marked
    started: float = field(default_factory=time.monotonic)
    _last: float = 0.0

    def wrote(self, shard: int, rows: int, errors: int) -> None:
        self.rows += rows
        self.errors += errors
        self.open_rows[shard] = self.open_rows.get(shard, 0) + rows
        self._maybe_report()

    def shard_done(self, shard: int, size: int) -> None:
        """``shard`` (``size`` planned inputs) is marked done: all its inputs count, written earlier or now."""
        self.shards_finished += 1
        self.finished_inputs += size
        self.open_rows.pop(shard, None)
        self._maybe_report()

    def shard_left(self, shard: int) -> None:
        """``shard`` ended its group unfinished (a re-run completes it)."""
        self.open_rows.pop(shard, None)

    def figures(self) -> dict:
        seconds = time.monotonic() - self.started
        rate = self.rows / seconds if seconds > 0 else 0.0
        done = min(self.inputs_done + self.finished_inputs + sum(self.open_rows.values()), self.inputs)
        left = self.inputs - done
        return {
            "shards": self.shards,
            "shards_done": self.shards_done + self.shards_finished,
            "inputs": self.inputs,
            "inputs_done": done,
            "rows_this_run": self.rows,
            "errors_this_run": self.errors,
            "seconds": round(seconds, 1),
            "img_per_s": round(rate, 2),
            "eta_s": round(left / rate, 1) if rate > 0 else None,
            "updated": time.time(),
        }

    def line(self) -> str:
        f = self.figures()
        eta = "?" if f["eta_s"] is None else _duration(f["eta_s"])
        pct = 100.0 * f["inputs_done"] / f["inputs"] if f["inputs"] else 100.0
        return (
            f"progress: {f['shards_done']}/{f['shards']} shards, {f['inputs_done']}/{f['inputs']} images "
            f"({pct:.1f} %), {f['img_per_s']:.1f} img/s, ETA {eta}, {f['errors_this_run']} errors this run"
        )

    def report(self) -> None:
        self._last = time.monotonic()
        print(self.line(), file=self.stream or sys.stderr, flush=True)
        try:
            layout.write_bytes_whole(self.fs, json.dumps(self.figures(), indent=2).encode(), self._path())
        except OSError:
            pass  # progress must never fail the job

    def finish(self) -> None:
        self.report()

    def _maybe_report(self) -> None:
        if time.monotonic() - self._last >= self.interval_s:
            self.report()

    def _path(self) -> str:
        return layout.state(self.output, "progress.json")


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
