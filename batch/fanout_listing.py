"""A plain ``--input prefix`` as a manifest: listed by Ray tasks, one per sub-prefix.

The driver finds sub-prefixes with delimiter (one-level) LISTs, breadth first, until there are
``list_tasks`` of them or ``MAX_DEPTH`` levels are expanded; files met on the way are listed by
the driver itself. Each sub-prefix is then listed recursively by one Ray task, which writes its
files (path, size, label) as ``_twinfer/listing/<n>.parquet`` under the output. Those files,
read in name order, are the manifest the plan is cut from. The listing rules are
``batch.listing``'s: hidden files and folders are skipped, the label is the first folder under
the input, and local symbolic links follow its rules.
"""

from __future__ import annotations

import itertools
import logging
import os
import posixpath
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray

from batch import layout
from batch.listing import InputFile, _linked_file, label_for, walk_inputs
from batch.manifest import ROWS_SCHEMA
from batch.uris import Resolved

logger = logging.getLogger(__name__)

MAX_DEPTH = 3
WRITE_ROWS = 100_000  # rows a listing task holds before it writes them


def list_prefix(source: Resolved, out_fs: pafs.FileSystem, output: str, list_tasks: int) -> list[str]:
    """List ``source`` into listing files under ``output``; returns their paths in reading order."""
    fs, root = source.filesystem, source.path
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"input {source.location.uri_for(root)!r} does not exist")
    listing = layout.state(output, "listing")
    if out_fs.get_file_info(listing).type == pafs.FileType.Directory:
        out_fs.delete_dir(listing)  # a listing a killed run left unfinished (twinfer's own files)
    if info.type == pafs.FileType.File:
        return [
            _write(out_fs, layout.state(output, "listing", "0.parquet"), [InputFile(root, info.size)], source, root)
        ]
    direct, frontier = _expand(source, list_tasks)
    paths = [_write(out_fs, layout.state(output, "listing", "0.parquet"), direct, source, root)]
    refs = [
        _list_subtree.remote(source, sub, out_fs, layout.state(output, "listing", f"{i + 1}.parquet"))
        for i, sub in enumerate(frontier)
    ]
    paths += ray.get(refs)
    logger.info("listed %s with %d Ray task(s)", source.location.uri_for(root), len(refs))
    return sorted(paths, key=lambda p: int(posixpath.basename(p).split(".")[0]))


def listing_batches(fs: pafs.FileSystem, files: Iterable[str]) -> Iterator[pa.RecordBatch]:
    for path in files:
        with fs.open_input_file(path) as handle:
            yield from pq.ParquetFile(handle).iter_batches(batch_size=65_536)


def _expand(source: Resolved, target: int) -> tuple[list[InputFile], list[str]]:
    direct: list[InputFile] = []
    frontier = [source.path]
    for _ in range(MAX_DEPTH):
        if len(frontier) >= target:
            break
        deeper: list[str] = []
        for directory in frontier:
            files, dirs = _one_level(source, directory)
            direct += files
            deeper += dirs
        frontier = sorted(deeper)
        if not frontier:
            break
    return direct, frontier


def _one_level(source: Resolved, directory: str) -> tuple[list[InputFile], list[str]]:
    files: list[InputFile] = []
    dirs: list[str] = []
    if isinstance(source.filesystem, pafs.LocalFileSystem):
        real_root = os.path.realpath(source.path)
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                path = posixpath.join(directory, entry.name)
                if entry.is_symlink():
                    found = _linked_file(path, real_root)
                    if found is not None:
                        files.append(found)
                elif entry.is_dir(follow_symlinks=False):
                    dirs.append(path)
                elif entry.is_file(follow_symlinks=False):
                    files.append(InputFile(path, entry.stat(follow_symlinks=False).st_size))
        return files, dirs
    for entry in source.filesystem.get_file_info(pafs.FileSelector(directory, recursive=False)):
        if posixpath.basename(entry.path).startswith("."):
            continue
        if entry.type == pafs.FileType.Directory:
            dirs.append(entry.path)
        elif entry.type == pafs.FileType.File:
            files.append(InputFile(entry.path, entry.size))
    return files, dirs


@ray.remote(num_cpus=0.5, max_retries=3)
def _list_subtree(source: Resolved, directory: str, out_fs: pafs.FileSystem, target: str) -> str:
    return _write(out_fs, target, walk_inputs(source.filesystem, directory, source.path), source, source.path)


def _write(out_fs: pafs.FileSystem, target: str, files: Iterable[InputFile], source: Resolved, root: str) -> str:
    """``files``, in the order they are listed, as one Parquet file at ``target``, written
    ``WRITE_ROWS`` at a time."""
    out_fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
    files = iter(files)
    with out_fs.open_output_stream(target) as stream, pq.ParquetWriter(stream, ROWS_SCHEMA) as writer:
        while True:
            chunk = list(itertools.islice(files, WRITE_ROWS))
            writer.write_table(
                pa.table(
                    {
                        "path": [source.location.uri_for(f.path) for f in chunk],
                        "size": [f.size for f in chunk],
                        "label": [label_for(f.path, root) if f.path != root else None for f in chunk],
                    },
                    schema=ROWS_SCHEMA,
                )
            )
            if len(chunk) < WRITE_ROWS:
                return target
