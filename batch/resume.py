"""What a previous run already wrote: the ``path`` column of the Parquet files in the output.

An input is done once any output file holds its row (an error row counts: it would fail the
same way again). Leftover temporary files of a killed run are removed, and a file that cannot
be read as Parquet (cut short by a crash on a filesystem without atomic renames) is deleted so
its rows are computed again. Assumes no other job writes the same output at the same time.
"""

from __future__ import annotations

import logging
import posixpath

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from batch.sink import TEMP_PREFIX

logger = logging.getLogger(__name__)


def output_files(fs: pafs.FileSystem, directory: str) -> list[str]:
    """Completed Parquet files directly in ``directory`` (none if it does not exist)."""
    if fs.get_file_info(directory).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(directory, recursive=False))
    return sorted(
        i.path
        for i in infos
        if i.type == pafs.FileType.File and i.path.endswith(".parquet") and not _hidden(i.path)
    )


def done_paths(fs: pafs.FileSystem, directory: str) -> set[str]:
    """Input URIs present in the output; cleans up what a killed run left half-written."""
    remove_temp_files(fs, directory)
    done: set[str] = set()
    for path in output_files(fs, directory):
        try:
            done.update(pq.read_table(path, columns=["path"], filesystem=fs).column("path").to_pylist())
        except pa.ArrowInvalid as exc:
            # Only a local file can be cut short (S3 objects appear whole); any other failure -
            # a timeout, throttling, permissions - must not delete results, so it propagates.
            if not isinstance(fs, pafs.LocalFileSystem):
                raise
            logger.warning("deleting unreadable output file %s (%s); its inputs will be redone", path, exc)
            fs.delete_file(path)
    return done


def remove_temp_files(fs: pafs.FileSystem, directory: str) -> None:
    if fs.get_file_info(directory).type == pafs.FileType.NotFound:
        return
    for info in fs.get_file_info(pafs.FileSelector(directory, recursive=False)):
        if info.type == pafs.FileType.File and posixpath.basename(info.path).startswith(TEMP_PREFIX):
            fs.delete_file(info.path)


def _hidden(path: str) -> bool:
    return posixpath.basename(path).startswith((".", "_"))
