"""The completed Parquet files of a backfill's output, for its readers (``twinfer evaluate``,
``twinfer compare``): directly in the folder and in its shard folders, never under ``_twinfer/``.
What a run skips is decided per shard (``batch.shards``)."""

from __future__ import annotations

import posixpath

import pyarrow.fs as pafs

from batch.layout import SHARD_DIR


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


def _hidden(path: str) -> bool:
    return _name(path).startswith((".", "_"))


def _name(path: str) -> str:
    return posixpath.basename(path)
