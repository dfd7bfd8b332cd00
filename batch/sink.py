"""Parquet output with deterministic file names, written whole or not at all.

Ray 2.60's ``write_parquet(filename_provider=...)`` names a file from ``(write_uuid, task_index)``
only (``get_filename_for_block`` is deprecated and never called, and APPEND mode insists the
random write UUID is in the name), so a name cannot follow the rows in the file. This datasink
names each file ``part-<hash of its sorted input paths>.parquet``: the same rows always land in
the same file, and a retried write task overwrites instead of duplicating.

A file appears complete or not at all: locally it is written under a hidden temporary name and
renamed; on S3 an object only exists once its upload completes.

``PART_NAME`` and ``TEMP_NAME`` are the only names this sink creates: ``batch.ownership`` treats
anything else in an output folder as someone else's file.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from typing import Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from ray.data import Datasink
from ray.data.block import Block, BlockAccessor
from ray.data.datasource.datasink import WriteResult

from batch.uris import join

TEMP_PREFIX = ".tmp-"
PART_NAME = re.compile(r"part-[0-9a-f]{32}\.parquet")  # file_name_for
TEMP_NAME = re.compile(re.escape(TEMP_PREFIX) + r"[0-9a-f]{32}")  # TEMP_PREFIX + uuid4().hex


def file_name_for(paths: Iterable[str]) -> str:
    digest = hashlib.sha256("\n".join(sorted(paths)).encode()).hexdigest()[:32]
    return f"part-{digest}.parquet"


class IdempotentParquetSink(Datasink[dict]):
    """``schema`` (with its key-value metadata, which marks the files as twinfer's) is what every
    file is written with."""

    def __init__(self, filesystem: pafs.FileSystem, directory: str, schema: pa.Schema, min_rows_per_file: int | None):
        self.filesystem = filesystem
        self.directory = directory
        self.schema = schema
        self._min_rows_per_file = min_rows_per_file
        self.written: list[dict] = []  # filled on the driver when the write completes

    @property
    def min_rows_per_write(self) -> int | None:
        return self._min_rows_per_file

    def on_write_start(self, schema=None) -> None:
        self.filesystem.create_dir(self.directory, recursive=True)

    def write(self, blocks: Iterable[Block], ctx) -> dict:
        return self.write_tables(BlockAccessor.for_block(b).to_arrow() for b in blocks)

    def write_tables(self, tables: Iterable[pa.Table]) -> dict:
        """One output file for these rows (also called on the driver, outside Ray Data)."""
        tables = [t.select(self.schema.names).cast(self.schema) for t in tables if t.num_rows]
        if not tables:
            return {"file": None, "rows": 0, "errors": 0}
        table = pa.concat_tables(tables)
        name = file_name_for(table.column("path").to_pylist())
        self._write_whole(table, join(self.directory, name))
        errors = table.num_rows - pc.sum(pc.is_null(table.column("error")).cast(pa.int64())).as_py()
        return {"file": name, "rows": table.num_rows, "errors": errors}

    def on_write_complete(self, write_result: WriteResult[dict]) -> None:
        self.written = [r for r in write_result.write_returns if r and r["rows"]]

    @property
    def supports_distributed_writes(self) -> bool:
        return not isinstance(self.filesystem, pafs.LocalFileSystem)

    def get_name(self) -> str:
        return "IdempotentParquet"

    def _write_whole(self, table: pa.Table, path: str) -> None:
        if isinstance(self.filesystem, pafs.LocalFileSystem):
            temp = join(self.directory, f"{TEMP_PREFIX}{uuid.uuid4().hex}")
            pq.write_table(table, temp, filesystem=self.filesystem)
            self.filesystem.move(temp, path)  # atomic rename
        else:
            pq.write_table(table, path, filesystem=self.filesystem)
