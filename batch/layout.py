"""Where a backfill keeps what it writes under its output folder.

    <output>/_twinfer.json                  the job marker (batch.ownership)
    <output>/shard-000042/part-<hash>.parquet  the results of shard 42 (batch.sink names the files)
    <output>/_twinfer/plan/plan.json         the plan: source, fingerprint, rows, shard size
    <output>/_twinfer/plan/shards/000042.parquet  shard 42's inputs (path, size, label)
    <output>/_twinfer/listing/...            a listed prefix, before it is planned
    <output>/_twinfer/done/000042.json       shard 42 is complete (rows, errors)
    <output>/_twinfer/lease.json             the live run's lease (batch.lease)
    <output>/_twinfer/progress.json          progress of the live or last run (batch.progress)

Readers of the results (evaluate, compare) read every Parquet file of the output except those
under ``_twinfer/``.
"""

from __future__ import annotations

import re
import uuid

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from batch.uris import join

STATE_DIR = "_twinfer"
SHARD_DIR = re.compile(r"shard-(\d{6,})")
TEMP_PREFIX = ".tmp-"


def shard_name(shard: int) -> str:
    return f"{shard:06d}"


def shard_dir(output: str, shard: int) -> str:
    return join(output, f"shard-{shard_name(shard)}")


def state(output: str, *names: str) -> str:
    return join(output, STATE_DIR, *names)


def plan_file(output: str) -> str:
    return state(output, "plan", "plan.json")


def plan_shard_file(output: str, shard: int) -> str:
    return state(output, "plan", "shards", f"{shard_name(shard)}.parquet")


def done_dir(output: str) -> str:
    return state(output, "done")


def done_marker(output: str, shard: int) -> str:
    return join(done_dir(output), f"{shard_name(shard)}.json")


def write_table_whole(fs: pafs.FileSystem, table: pa.Table, path: str) -> None:
    """``table`` at ``path``, complete or not at all (a local file is renamed into place)."""
    if isinstance(fs, pafs.LocalFileSystem):
        directory = path.rsplit("/", 1)[0]
        fs.create_dir(directory, recursive=True)
        temp = join(directory, f"{TEMP_PREFIX}{uuid.uuid4().hex}")
        pq.write_table(table, temp, filesystem=fs)
        fs.move(temp, path)
    else:
        pq.write_table(table, path, filesystem=fs)


def write_bytes_whole(fs: pafs.FileSystem, data: bytes, path: str) -> None:
    directory = path.rsplit("/", 1)[0]
    if isinstance(fs, pafs.LocalFileSystem):
        fs.create_dir(directory, recursive=True)
        temp = join(directory, f"{TEMP_PREFIX}{uuid.uuid4().hex}")
        with fs.open_output_stream(temp) as stream:
            stream.write(data)
        fs.move(temp, path)
    else:
        with fs.open_output_stream(path) as stream:
            stream.write(data)


def read_small(fs: pafs.FileSystem, path: str, limit: int = 1 << 20) -> bytes | None:
    """A small state file's bytes, or None if it does not exist."""
    try:
        with fs.open_input_stream(path) as stream:
            return stream.read(limit)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if "not found" in str(exc).lower() or "does not exist" in str(exc).lower():
            return None
        raise


def remove_state_temps(fs: pafs.FileSystem, output: str) -> None:
    """Delete the temporaries a killed run left under ``_twinfer/`` (twinfer's own names only)."""
    from batch.sink import TEMP_NAME

    for directory in (state(output), state(output, "done"), state(output, "plan"), state(output, "plan", "shards")):
        try:
            entries = fs.get_file_info(pafs.FileSelector(directory, recursive=False, allow_not_found=True))
        except FileNotFoundError:
            continue
        for entry in entries:
            if entry.type == pafs.FileType.File and TEMP_NAME.fullmatch(entry.path.rsplit("/", 1)[-1]):
                fs.delete_file(entry.path)
