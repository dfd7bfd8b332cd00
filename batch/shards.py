"""Per-shard execution: a Ray Data datasource whose read tasks each own one shard of the plan.

A shard's read task:
1. reads the shard's inputs (``_twinfer/plan/shards/<id>.parquet``);
2. reads the ``path`` column of the results already in ``shard-<id>/`` and drops those inputs
   before fetching anything (it also removes what a killed run left there: twinfer's temporary
   files, and, on a local disk, part files cut short);
3. turns inputs the manifest lists over ``model.decode.max_bytes`` into ``image_too_large`` rows
   without a request, and fetches the rest (``batch.fetch``: one GET each, on a thread pool);
4. yields blocks of ``block_rows`` rows that carry their shard id.

Decoding (``decode_fetched``) and the model actors (``ShardPredictor``) follow as before;
``write_results`` writes each shard's rows into its own folder and returns one small row per
file, which is what the driver sees. After a group of shards, ``finalize_shard`` checks that a
shard's folder holds exactly one row per planned input (it rewrites the shard as one file if a
retried task left a row twice) and only then writes its completion marker.
"""

from __future__ import annotations

import json
import logging
import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from batch import layout
from batch.decode_stage import DECODED_SCHEMA, load_one
from batch.fetch import Fetched, Fetcher, Transient
from batch.ownership import OutputRefused, part_identity
from batch.plan import Plan, shard_rows_table
from batch.predict_actor import Predictor
from batch.sink import PART_NAME, TEMP_NAME, IdempotentParquetSink
from shared.config import ModelConfig
from shared.errors import ImageTooLarge
from shared.wrapper import ImageLoader

logger = logging.getLogger(__name__)

FETCHED_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("label", pa.string()),
        ("shard", pa.int64()),
        ("bytes", pa.binary()),  # null on error rows
        ("error", pa.string()),
        ("error_message", pa.string()),
    ]
)
WRITTEN_SCHEMA = pa.schema([("shard", pa.int64()), ("file", pa.string()), ("rows", pa.int64()), ("errors", pa.int64())])


@dataclass(frozen=True)
class ShardJob:
    """What every read, write and finalize task needs (small; pickled into each task)."""

    fs: pafs.FileSystem  # the output's
    output: str
    plan: Plan
    fetcher: Fetcher
    block_rows: int
    schema: pa.Schema  # the output schema, with twinfer's metadata


class ShardDatasource(Datasource):
    """One read task per shard of ``shards``."""

    def __init__(self, job: ShardJob, shards: list[int]):
        self.job = job
        self.shards = list(shards)

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context=None):
        return [
            ReadTask(
                partial(read_shard, self.job, shard),
                BlockMetadata(num_rows=self.job.plan.shard_size(shard), size_bytes=None, exec_stats=None),
                schema=FETCHED_SCHEMA,
                per_task_row_limit=per_task_row_limit,
            )
            for shard in self.shards
        ]

    def get_name(self) -> str:
        return "TwinferShards"


def read_shard(job: ShardJob, shard: int) -> Iterator[pa.Table]:
    table = shard_rows_table(job.fs, job.output, job.plan, shard)
    done = written_paths(job.fs, layout.shard_dir(job.output, shard))
    if done is not None and len(done):
        table = table.filter(pc.invert(pc.is_in(table.column("path"), value_set=done)))
    cap = job.fetcher.max_bytes
    with ThreadPoolExecutor(job.fetcher.threads) as pool:
        for start in range(0, table.num_rows, job.block_rows):
            chunk = table.slice(start, job.block_rows)
            paths = chunk.column("path").to_pylist()
            sizes = chunk.column("size").to_pylist()
            results = list(pool.map(partial(_fetch_one, job.fetcher, cap), paths, sizes))
            keep = [i for i, r in enumerate(results) if r is not None]
            if len(keep) < len(results):
                logger.warning(
                    "shard %d: %d input(s) kept failing to read; a re-run retries them", shard, len(results) - len(keep)
                )
            yield pa.table(
                {
                    "path": [paths[i] for i in keep],
                    "label": chunk.column("label").take(keep),
                    "shard": [shard] * len(keep),
                    "bytes": [results[i].data for i in keep],
                    "error": [results[i].error for i in keep],
                    "error_message": [results[i].message for i in keep],
                },
                schema=FETCHED_SCHEMA,
            )


def _fetch_one(fetcher: Fetcher, cap: int, uri: str, size: int | None) -> Fetched | None:
    if size is not None and size > cap:
        message = str(
            ImageTooLarge(f"file is {size} bytes, over the {cap}-byte cap (model.decode.max_bytes); not read")
        )
        return Fetched(None, ImageTooLarge.code, message)
    try:
        return fetcher.fetch(uri)
    except Transient as exc:
        logger.warning("%s: %s", uri, exc)
        return None


def written_paths(fs: pafs.FileSystem, directory: str) -> pa.Array | None:
    """The input paths already written in a shard's folder; removes a killed run's leftovers."""
    parts = _parts(fs, directory)
    if parts is None:
        return None
    columns = []
    for path in parts:
        try:
            with fs.open_input_file(path) as handle:
                parquet = pq.ParquetFile(handle)
                if part_identity(parquet.schema_arrow.metadata) is None:
                    raise OutputRefused(
                        f"{posixpath.dirname(path)} holds Parquet files named like twinfer's but without its "
                        f"metadata ({posixpath.basename(path)}): not written by this twinfer version. "
                        "Nothing was changed: choose another output"
                    )
                columns.append(parquet.read(columns=["path"]).column("path"))
        except pa.ArrowInvalid as exc:
            if not isinstance(fs, pafs.LocalFileSystem):
                raise  # an S3 object is whole: any other failure must not delete results
            logger.warning("deleting unreadable output file %s (%s); its inputs will be redone", path, exc)
            fs.delete_file(path)
    return pa.chunked_array([c for col in columns for c in col.chunks], pa.string()).combine_chunks()


def _parts(fs: pafs.FileSystem, directory: str) -> list[str] | None:
    try:
        entries = fs.get_file_info(pafs.FileSelector(directory, recursive=False, allow_not_found=True))
    except FileNotFoundError:
        return None
    parts = []
    for entry in entries:
        name = posixpath.basename(entry.path)
        if entry.type != pafs.FileType.File:
            continue
        if TEMP_NAME.fullmatch(name):
            fs.delete_file(entry.path)
        elif PART_NAME.fullmatch(name):
            parts.append(entry.path)
    return sorted(parts)


def decode_fetched(batch: pa.Table, *, model: ModelConfig) -> pa.Table:
    """``FETCHED_SCHEMA`` rows -> ``DECODED_SCHEMA`` rows plus ``shard``; error rows pass through."""
    loader = ImageLoader(model)
    columns: dict[str, list] = {name: [] for name in DECODED_SCHEMA.names}
    rows = zip(
        batch.column("bytes").to_pylist(), batch.column("error").to_pylist(), batch.column("error_message").to_pylist()
    )
    for data, error, message in rows:
        item = None
        if error is None:
            error, message, item = load_one(loader, data)
        encoded = item is not None and not hasattr(item, "pixels")
        columns["error"].append(error)
        columns["error_message"].append(message)
        columns["encoding"].append(None if item is None else "jpeg" if encoded else "uint8_chw")
        columns["pixels"].append(b"" if item is None else item.data.tobytes() if encoded else item.pixels.tobytes())
        columns["shape"].append(None if item is None or encoded else list(item.pixels.shape))
        columns["original_size"].append(None if item is None else list(item.original_size))
        columns["orientation"].append(item.orientation if encoded else None)
    columns["path"] = batch.column("path")
    columns["label"] = batch.column("label")
    out = pa.table({name: columns[name] for name in DECODED_SCHEMA.names}, schema=DECODED_SCHEMA)
    return out.append_column("shard", batch.column("shard"))


class ShardPredictor(Predictor):
    """``Predictor`` that keeps each row's shard id (the writer routes rows by it)."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        return super().__call__(batch).append_column("shard", batch.column("shard"))


def write_results(batch: pa.Table, *, job: ShardJob) -> pa.Table:
    """Each shard's rows of ``batch`` as one file in its folder; one ``WRITTEN_SCHEMA`` row per file."""
    written = []
    shards = batch.column("shard")
    for shard in pc.unique(shards).to_pylist():
        rows = batch.filter(pc.equal(shards, shard))
        directory = layout.shard_dir(job.output, shard)
        job.fs.create_dir(directory, recursive=True)
        result = IdempotentParquetSink(job.fs, directory, job.schema, None).write_tables([rows])
        written.append({"shard": shard, "file": result["file"], "rows": result["rows"], "errors": result["errors"]})
    return pa.Table.from_pylist(written, schema=WRITTEN_SCHEMA)


@ray.remote(num_cpus=0, max_retries=3)
def finalize_shard(job: ShardJob, shard: int) -> dict:
    """Mark ``shard`` done if its folder holds exactly one row per planned input."""
    directory = layout.shard_dir(job.output, shard)
    parts = _parts(job.fs, directory) or []
    tables = [pq.read_table(p, columns=["path", "error"], filesystem=job.fs) for p in parts]
    table = (
        pa.concat_tables(tables)
        if tables
        else pa.table({"path": pa.array([], pa.string()), "error": pa.array([], pa.string())})
    )
    distinct = pc.count_distinct(table.column("path")).as_py() if table.num_rows else 0
    expected = job.plan.shard_size(shard)
    if distinct != expected:
        return {"shard": shard, "complete": False, "missing": expected - distinct}
    if table.num_rows > distinct:
        _compact(job, directory, parts)
        table = pq.read_table(directory, columns=["path", "error"], filesystem=job.fs)
    errors = table.num_rows - pc.sum(pc.is_null(table.column("error")).cast(pa.int64())).as_py()
    marker = {"shard": shard, "rows": table.num_rows, "errors": errors}
    layout.write_bytes_whole(job.fs, json.dumps(marker).encode(), layout.done_marker(job.output, shard))
    return {**marker, "complete": True, "missing": 0}


def _compact(job: ShardJob, directory: str, parts: list[str]) -> None:
    """Rewrite a shard holding a row twice as one file, first row per path kept."""
    table = pa.concat_tables(pq.read_table(p, filesystem=job.fs) for p in parts)
    index = table.append_column("_i", pa.array(range(table.num_rows), pa.int64()))
    first = index.group_by("path").aggregate([("_i", "min")]).column("_i_min")
    unique = table.take(pc.take(first, pc.array_sort_indices(first)))
    name = IdempotentParquetSink(job.fs, directory, job.schema, None).write_tables([unique])["file"]
    for path in parts:
        if posixpath.basename(path) != name:
            job.fs.delete_file(path)


def done_shards(fs: pafs.FileSystem, output: str) -> set[int]:
    """The shards with a completion marker (one LIST of ``_twinfer/done``, no reads)."""
    directory = layout.done_dir(output)
    try:
        entries = fs.get_file_info(pafs.FileSelector(directory, recursive=False, allow_not_found=True))
    except FileNotFoundError:
        return set()
    names = (posixpath.basename(e.path) for e in entries if e.type == pafs.FileType.File)
    return {int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit()}
