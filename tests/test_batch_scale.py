"""Backfills through the plan on Ray: S3 requests counted on a real moto_server (one GET per
image, no HEAD, none for inputs the manifest lists over the byte cap), error rows for missing
objects, resume at shard and key level reading only what is missing, the listing fanned out
over Ray tasks, and a real ``kill -9`` of a backfill mid-run followed by a re-run."""

from __future__ import annotations

import gzip
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote_plus, unquote

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch.config import BackfillConfig
from batch.fanout_listing import _expand, list_prefix, listing_batches
from batch.listing import label_for, list_input_files
from batch.pipeline import run_backfill
from batch.uris import resolve
from tests import images
from twinfer.samples import SAMPLE_NAMES

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parent.parent
CAP = 32768  # every test JPEG is smaller


def settings(**overrides) -> BackfillConfig:
    base = dict(
        batch_size=4, rows_per_call=4, min_rows_per_file=3, progress=False, model={"decode": {"max_bytes": CAP}}
    )
    return BackfillConfig(**{**base, **overrides})


def settled(server, prefix: str) -> list[str]:
    """moto's GET lines for ``prefix`` once its log stops growing (it writes a line after answering)."""
    last, since = None, time.monotonic()
    while True:
        lines = server.requests("GET", prefix)
        if lines != last:
            last, since = lines, time.monotonic()
        elif time.monotonic() - since > 0.5:
            return lines
        time.sleep(0.05)


def requested(lines: list[str]) -> list[str]:
    """The s3:// URIs of GET request lines (``"GET /bucket/url-encoded-key?query HTTP/1.1"``)."""
    return ["s3://" + unquote(re.search(r'"GET /([^ ?]+)', line).group(1)) for line in lines]


def test_s3_inventory_costs_one_get_per_image_and_a_resume_reads_only_missing_keys(ray_session, s3_server, tmp_path):
    s3_server.create_bucket("counted")
    s3_server.create_bucket("inventory")
    keys = [f"in/n0{i % 2}/img {i:02d}+.jpg" for i in range(14)]  # spaces and pluses: URL-encoded in the CSV
    sizes = {}
    for i, key in enumerate(keys):
        data = images.small_jpeg(SAMPLE_NAMES[i % len(SAMPLE_NAMES)], 32 + i)
        s3_server.put(f"counted/{key}", data)
        sizes[key] = len(data)
    sizes["in/missing.jpg"] = 500  # listed, never uploaded: a 404
    sizes["in/huge.jpg"] = CAP + 1  # listed over the cap: never requested
    s3_server.put("counted/in/huge.jpg", images.small_jpeg("astronaut", 40))
    lines = [f'"counted","{quote_plus(key)}","{size}"' for key, size in sizes.items()]
    with s3_server.filesystem().open_output_stream("inventory/counted/cfg/data/part-0.csv.gz", compression=None) as f:
        f.write(gzip.compress(("\n".join(lines) + "\n").encode()))  # put() would gzip a .gz name again
    manifest = {
        "sourceBucket": "counted",
        "destinationBucket": "arn:aws:s3:::inventory",
        "fileFormat": "CSV",
        "fileSchema": "Bucket, Key, Size",
        "files": [{"key": "counted/cfg/data/part-0.csv.gz", "size": 1, "MD5checksum": "0" * 32}],
    }
    s3_server.put("inventory/counted/cfg/2026-12-01T00-00Z/manifest.json", json.dumps(manifest).encode())
    out = tmp_path / "out"
    config = settings(
        input_manifest="s3://inventory/counted/cfg/2026-12-01T00-00Z/manifest.json",
        output=str(out),
        s3=s3_server.options,
        shard_rows=5,
        shards_per_dataset=2,  # two Datasets
    )
    before = len(settled(s3_server, "counted/"))
    summary = run_backfill(config)
    gets = settled(s3_server, "counted/")[before:]
    assert sorted(requested(gets)) == sorted(f"s3://counted/{k}" for k in [*keys, "in/missing.jpg"])  # once each
    assert not s3_server.requests("HEAD", "counted/")
    assert not [line for line in gets if "huge.jpg" in line]
    table = pq.read_table(out)
    rows = {row["path"]: row for row in table.to_pylist()}
    assert len(rows) == table.num_rows == len(sizes) and summary["rows"] == len(sizes) and summary["shards"] == 4
    assert rows["s3://counted/in/missing.jpg"]["error"] == "not_found"
    assert rows["s3://counted/in/huge.jpg"]["error"] == "image_too_large"
    assert all(
        rows[f"s3://counted/{key}"]["error"] is None and rows[f"s3://counted/{key}"]["top_labels"] for key in keys
    )

    # shard 1 killed before it was marked done, one of its files lost: only that file's keys are read again
    (out / "_twinfer" / "done" / "000001.json").unlink()
    lost = sorted((out / "shard-000001").iterdir())[0]
    lost_paths = set(pq.read_table(lost).column("path").to_pylist())
    lost.unlink()
    before = len(settled(s3_server, "counted/"))
    again = run_backfill(config)
    gets = settled(s3_server, "counted/")[before:]
    assert again["rows"] == len(lost_paths) and again["shards_skipped"] == 3
    readable = {p for p in lost_paths if not p.endswith("huge.jpg")}
    assert sorted(requested(gets)) == sorted(readable)
    paths = pq.read_table(out).column("path").to_pylist()
    assert len(paths) == len(set(paths)) == len(sizes)

    before = len(settled(s3_server, "counted/"))
    finished = run_backfill(config)
    assert finished["rows"] == 0 and finished["shards_skipped"] == 4 and len(settled(s3_server, "counted/")) == before


def test_the_listing_fans_out_over_ray_tasks_and_matches_the_driver_listing(ray_session, tmp_path):
    root = tmp_path / "in"
    for i in range(24):
        path = root / f"n0{i % 3}" / f"sub{i % 2}" / f"deep{i % 4}" / f"{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * (i + 1))
    (root / "top.jpg").write_bytes(b"top")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "skip.jpg").write_bytes(b"no")
    source = resolve(str(root))
    direct, frontier = _expand(source, target=5)
    assert [Path(f.path).name for f in direct] == ["top.jpg"] and len(frontier) == 6  # n0*/sub*: one task each
    out = resolve(str(tmp_path / "out"))
    files = list_prefix(source, out.filesystem, out.path, list_tasks=5)
    assert len(files) == 7
    table = pa.Table.from_batches(list(listing_batches(out.filesystem, files)))
    expected = list_input_files(source.filesystem, source.path)
    assert sorted(zip(table.column("path").to_pylist(), table.column("size").to_pylist())) == sorted(
        (f.path, f.size) for f in expected
    )
    assert dict(zip(table.column("path").to_pylist(), table.column("label").to_pylist())) == {
        f.path: label_for(f.path, source.path) for f in expected
    }


@pytest.mark.process
@pytest.mark.timeout(300)
def test_a_killed_multi_shard_backfill_reruns_to_exactly_one_row_per_input(ray_session, tmp_path):
    """``kill -9`` of a CLI backfill (its session, its local Ray with it) with some shards written
    and some not, then a re-run: one row per input, only the missing ones predicted, the dead
    run's lease taken over, nothing temporary left."""
    source, output = tmp_path / "in", tmp_path / "out"
    files = set()
    for i in range(48):
        path = source / f"n0{i % 4}" / f"img{i:02d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(images.small_jpeg(SAMPLE_NAMES[i % len(SAMPLE_NAMES)], 40 + i))
        files.add(str(path))
    command = [sys.executable, "-m", "twinfer.cli", "backfill", "--input", str(source), "--output", str(output)]
    command += ["--batch-size", "2", "--rows-per-call", "2", "--rows-per-file", "2", "--block-rows", "2"]
    command += ["--shard-rows", "8", "--shards-per-dataset", "2", "--no-progress", "--progress-interval-s", "0"]
    run_until_then_kill(
        command,
        tmp_path / "driver.log",
        lambda log: len(list(output.glob("shard-*/*.parquet"))) >= 3 and "progress:" in log,
    )
    done_before = pq.read_table(output).num_rows
    assert 0 < done_before < len(files), "the kill should land mid-job"
    assert (output / "_twinfer" / "lease.json").exists()  # a dead run's lease: taken over below (its pid is gone)

    config = settings(input=str(source), output=str(output), shard_rows=8, shards_per_dataset=2, block_rows=2)
    summary = run_backfill(config)
    paths = pq.read_table(output).column("path").to_pylist()
    listing = sorted(p.relative_to(output).as_posix() for p in output.rglob("*"))
    assert len(paths) == len(set(paths)) == len(files) and set(paths) == files, (summary, listing)
    assert summary["rows"] == len(files) - done_before and summary["skipped"] == done_before
    assert len(list((output / "_twinfer" / "done").iterdir())) == 6
    assert not list(output.rglob(".*")) and not (output / "_twinfer" / "lease.json").exists()
    progress = json.loads((output / "_twinfer" / "progress.json").read_text())
    assert progress["inputs_done"] == len(files) and progress["shards_done"] == 6


def run_until_then_kill(command: list[str], log: Path, ready, timeout: float = 240.0) -> None:
    """Start ``command`` (a backfill) in its own session, wait until ``ready(log text)``, then
    ``kill_session`` it; fails if it exits first or ``timeout`` passes."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(log, "wb") as sink:
        driver = subprocess.Popen(
            command, cwd=ROOT, env=env, start_new_session=True, stdout=sink, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + timeout
        while not ready(log.read_text()):
            assert driver.poll() is None, f"the backfill exited ({driver.returncode}) early:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "the backfill never got there"
            time.sleep(0.02)
    finally:
        kill_session(driver)


def kill_session(process: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGKILL the driver's process group (its local Ray too) and wait until none of it is left."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + timeout
    while _session_members(process.pid) and time.monotonic() < deadline:
        time.sleep(0.1)


def _session_members(session: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == session:
                    members.append(int(entry))
            except OSError:
                pass
    return members
