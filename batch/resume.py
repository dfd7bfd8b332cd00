"""What a previous run already wrote: the ``path`` column of twinfer's Parquet files in the output.

An input is done once any output file holds its row (an error row counts: it would fail the
same way again). The folder is checked first (``batch.ownership``): a folder twinfer cannot prove
is its own is refused and left as it is, and so is one holding a ``part-*.parquet`` without
twinfer's metadata. Only then, and only in a folder carrying the job marker, is anything deleted:
twinfer's leftover temporary files, and twinfer-named part files that cannot be read as Parquet
at all (cut short by a crash on a local filesystem without atomic renames), whose rows are
computed again. Assumes no other job writes the same output at the same time.
"""

from __future__ import annotations

import logging
import posixpath

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from batch.layout import SHARD_DIR
from batch.ownership import JobIdentity, OutputFolder, OutputRefused, inspect_output, mismatch, part_identity

logger = logging.getLogger(__name__)


def output_files(fs: pafs.FileSystem, directory: str) -> list[str]:
    """Completed Parquet files of an output: directly in ``directory`` and in its shard folders
    (``batch.layout``; nothing under ``_twinfer/``). None if it does not exist."""
    if fs.get_file_info(directory).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(directory, recursive=False))
    files = [i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet")]
    for shard in (i.path for i in infos if i.type == pafs.FileType.Directory and SHARD_DIR.fullmatch(_name(i.path))):
        inner = fs.get_file_info(pafs.FileSelector(shard, recursive=False))
        files += [i.path for i in inner if i.type == pafs.FileType.File and i.path.endswith(".parquet")]
    return sorted(f for f in files if not _hidden(f))


def done_paths(fs: pafs.FileSystem, directory: str, identity: JobIdentity, shown: str | None = None) -> set[str]:
    """Input URIs present in the output; cleans up what a killed run left half-written."""
    return read_output(fs, directory, identity, shown)[0]


def read_output(
    fs: pafs.FileSystem, directory: str, identity: JobIdentity, shown: str | None = None
) -> tuple[set[str], OutputFolder]:
    """(done input URIs, the checked folder). Raises ``OutputRefused`` before deleting anything."""
    shown = shown or directory
    folder = inspect_output(fs, directory, identity, shown)
    done: set[str] = set()
    cut_short: list[tuple[str, Exception]] = []
    foreign: list[str] = []
    for path in folder.parts:
        with fs.open_input_file(path) as handle:
            try:
                parquet = pq.ParquetFile(handle)
            except pa.ArrowInvalid as exc:
                # Only a local file can be cut short (S3 objects appear whole); any other failure -
                # a timeout, throttling, permissions - must not delete results, so it propagates.
                if not isinstance(fs, pafs.LocalFileSystem):
                    raise
                cut_short.append((path, exc))
                continue
            recorded = part_identity(parquet.schema_arrow.metadata)
            if recorded is None:
                foreign.append(posixpath.basename(path))
                continue
            problem = mismatch(recorded, identity)
            if problem:
                raise OutputRefused(f"output {shown}: {posixpath.basename(path)} holds {problem}. Nothing was changed")
            done.update(parquet.read(columns=["path"]).column("path").to_pylist())
    if foreign:
        raise OutputRefused(
            f"output {shown} holds Parquet files named like twinfer's but without its metadata "
            f"({', '.join(sorted(foreign)[:5])}): not written by this twinfer version. "
            "Nothing was changed: choose another output"
        )
    for path in folder.temps:
        fs.delete_file(path)
    for path, exc in cut_short:
        logger.warning("deleting unreadable output file %s (%s); its inputs will be redone", path, exc)
        fs.delete_file(path)
    return done, folder


def _hidden(path: str) -> bool:
    return _name(path).startswith((".", "_"))


def _name(path: str) -> str:
    return posixpath.basename(path)
