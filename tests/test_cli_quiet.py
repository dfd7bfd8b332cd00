"""The CLI prints twinfer's progress and summary, not Ray's INFO lines and internal warnings;
``--verbose`` brings those back (twinfer/console.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from subprocess import PIPE

import pytest

from tests.images import corrupt_jpeg, small_jpeg

pytestmark = pytest.mark.process

ROOT = Path(__file__).resolve().parent.parent
# what Ray prints when it is let: its log records, the native core worker's lines, forwarded worker output
RAY_LINE = re.compile(r"\b(DEBUG|INFO|WARNING)\b|core_worker|\(pid=|\(\w+ pid=|Started a local Ray")


def twinfer(*args: str) -> subprocess.CompletedProcess:
    """The CLI's run; ``.pid`` is its process id."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, "-m", "twinfer.cli", *args]
    with subprocess.Popen(command, stdout=PIPE, stderr=PIPE, text=True, env=env, cwd=ROOT) as process:
        try:
            stdout, stderr = process.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    done = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    done.pid = process.pid
    return done


def native_logs(pid: int) -> list[Path]:
    """What twinfer/console.py names its native-stderr file for process ``pid``."""
    return list(Path(tempfile.gettempdir()).glob(f"twinfer-{pid}-*.stderr.log"))


def test_backfill_prints_its_summary_and_no_ray_line_unless_verbose(tmp_path):
    images = tmp_path / "images" / "cat"
    images.mkdir(parents=True)
    for size in (64, 80, 96):
        (images / f"cat{size}.jpg").write_bytes(small_jpeg(size=size))
    (images / "broken.jpg").write_bytes(corrupt_jpeg())

    quiet = twinfer("backfill", "--input", str(tmp_path / "images"), "--output", str(tmp_path / "out"))
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    printed = (quiet.stdout + quiet.stderr).splitlines()
    assert [line for line in printed if RAY_LINE.search(line)] == []
    assert any(line.startswith("backfill: 4 rows written (1 errors") for line in printed), printed
    assert native_logs(quiet.pid) == [], "Ray's native log left behind"

    verbose = twinfer("backfill", "--input", str(tmp_path / "images"), "--output", str(tmp_path / "again"), "--verbose")
    assert verbose.returncode == 0, verbose.stderr[-3000:]
    assert any(RAY_LINE.search(line) for line in (verbose.stdout + verbose.stderr).splitlines())


def test_a_failing_command_prints_its_error_and_no_ray_line(tmp_path):
    (tmp_path / "user.txt").write_text("not twinfer's")
    done = twinfer("backfill", "--input", str(tmp_path), "--output", str(tmp_path))
    assert done.returncode == 2
    assert done.stderr.startswith("twinfer backfill: "), done.stderr
    assert [line for line in done.stderr.splitlines() if RAY_LINE.search(line)] == []
