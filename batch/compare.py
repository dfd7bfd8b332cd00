"""``twinfer compare A B``: two backfill outputs over the same inputs, joined on ``path``.

Every input is counted: in both outputs, only in A, only in B; of those in both, with an error on
either side (by code) or compared. What is compared depends on the task (``batch.compare_tasks``);
both outputs must hold the same task. Outputs are read through ``batch.evaluate.prediction_files``
only, so any layout a backfill writes is read alike, on local disk or S3.

Memory is bounded, whatever the outputs' size: a hash join in two passes (a grace hash join).
1. Each side is streamed once, a Parquet record batch at a time, reading only the columns
   compared; each row goes by the hash of its path to one of P partitions, spilled to local disk
   (zstd-compressed Arrow IPC under ``work_dir``, default the system's temporary folder). P is
   chosen from the Parquet footers so that one partition of both sides holds about
   ``partition_bytes`` (default 64 MiB) of those columns, uncompressed; at most
   ``MAX_PARTITIONS``, beyond which partitions grow instead.
2. One partition at a time, A's and B's rows are joined on path (Arrow's hash join over the keys
   and row numbers) and fed to the comparer.
Peak memory: about 6 x ``partition_bytes`` above the process's imports (one partition of both
sides, the join's copies, the comparer's arrays: ``bench.compare_memory``), whatever the outputs'
size, plus the comparer's bounded state. Temporary disk: the compared columns of both outputs,
compressed (embeddings: about 4 x dim bytes per row per side); deleted at the end. A path that
appears twice in one output is counted (``duplicates``) and compared once.

The JSON report carries ``"format": "twinfer-comparison/1"``; an existing file at its location
is replaced only if it carries that too. The HTML page and the PNG beside it follow the same
rule (``batch.report_files``).
"""

from __future__ import annotations

import json
import math
import os
import posixpath
import tempfile
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from batch.compare_tasks import COMPARERS, Comparer
from batch.evaluate import check_report_target, prediction_files
from batch.ownership import OutputRefused
from batch.report_stats import Examples
from batch.uris import S3Options, is_within, parse_uri, redact_uri, resolve
from shared.tasks import TASKS

REPORT_FORMAT = "twinfer-comparison/1"
PARTITION_BYTES = 64 * 1024 * 1024
MAX_PARTITIONS = 1024  # spill files open at once while a side is split
BATCH_ROWS = 65_536  # rows per record batch read
COMMON = ("path", "label", "error", "model")
SHOWN_PATHS = 5  # inputs only one side has, quoted in the report
IPC_OPTIONS = ipc.IpcWriteOptions(compression="zstd")


@dataclass
class Side:
    """One output being compared."""

    uri: str
    filesystem: pafs.FileSystem
    files: list[str]
    schema: pa.Schema
    task: str
    models: set = field(default_factory=set)
    rows: int = 0
    duplicates: int = 0
    errors: dict = field(default_factory=dict)  # code -> inputs in both outputs with this error here
    spill_schema: pa.Schema | None = None  # the compared columns and the path hash

    def summary(self) -> dict:
        return {
            "uri": redact_uri(self.uri),
            "model": ", ".join(sorted(self.models)) or None,
            "rows": self.rows,
            "duplicates": self.duplicates,
        }


def open_side(uri: str, s3: S3Options | None) -> Side:
    filesystem, files = prediction_files(uri, s3)
    schema = pq.read_schema(files[0], filesystem=filesystem)
    return Side(uri, filesystem, files, schema, task_of(schema, uri))


def task_of(schema: pa.Schema, uri: str) -> str:
    """The task whose prediction columns the output has."""
    names = set(schema.names)
    for name, task in TASKS.items():
        if {f.name for f in task(labels=()).arrow_fields(dim=1)} <= names and set(COMMON) <= names:
            return name
    raise ValueError(f"{redact_uri(uri)} holds no twinfer predictions (columns: {', '.join(schema.names)})")


def compare_outputs(
    a_uri: str,
    b_uri: str,
    s3: S3Options | None = None,
    work_dir: str | None = None,
    partition_bytes: int = PARTITION_BYTES,
) -> dict:
    """The comparison report (without ``format``) of outputs ``a_uri`` and ``b_uri``."""
    a, b = open_side(a_uri, s3), open_side(b_uri, s3)
    if a.task != b.task:
        raise ValueError(
            f"A ({redact_uri(a_uri)}) holds {a.task} predictions and B ({redact_uri(b_uri)}) {b.task} "
            "predictions: only outputs of one task compare"
        )
    comparer = COMPARERS[a.task](a.schema, b.schema)
    columns = [*COMMON, *comparer.columns]
    partitions = partition_count([a, b], columns, partition_bytes)
    counts = {"both": 0, "only_a": 0, "only_b": 0, "errors_a": 0, "errors_b": 0, "errors_both": 0}
    only = {"a": Examples(SHOWN_PATHS), "b": Examples(SHOWN_PATHS)}
    with tempfile.TemporaryDirectory(prefix="twinfer-compare-", dir=work_dir) as spill:
        for name, side in (("a", a), ("b", b)):
            split(side, columns, partitions, os.path.join(spill, name))
        for p in range(partitions):
            joined = join_partition(a, b, read_spill(spill, "a", p), read_spill(spill, "b", p))
            _count(joined, counts, only, a, b, comparer)
    return {
        "task": a.task,
        "a": a.summary(),
        "b": b.summary(),
        "inputs": {
            "both": counts["both"],
            "only_a": counts["only_a"],
            "only_b": counts["only_b"],
            "only_a_examples": [e["path"] for e in only["a"].result()],
            "only_b_examples": [e["path"] for e in only["b"].result()],
        },
        "errors": {
            "a_only": counts["errors_a"],
            "b_only": counts["errors_b"],
            "both": counts["errors_both"],
            "a_codes": dict(sorted(a.errors.items())),
            "b_codes": dict(sorted(b.errors.items())),
        },
        "compared": comparer.compared,
        a.task: comparer.result(),
        "examples": comparer.examples.result(),
        "partitions": partitions,
    }


def partition_count(sides: list[Side], columns: list[str], partition_bytes: int) -> int:
    """Partitions for about ``partition_bytes`` of the compared columns each (from the footers)."""
    total = 0
    for side in sides:
        for path in side.files:
            metadata = pq.read_metadata(path, filesystem=side.filesystem)
            for g in range(metadata.num_row_groups):
                group = metadata.row_group(g)
                for c in range(group.num_columns):
                    chunk = group.column(c)
                    if chunk.path_in_schema.split(".")[0] in columns:
                        total += chunk.total_uncompressed_size
    return max(1, min(MAX_PARTITIONS, math.ceil(total / partition_bytes)))


def path_hashes(paths: pa.Array) -> np.ndarray:
    """A 64-bit hash of each path (pandas' vectorised SipHash): the partition key and the order
    that breaks ties among examples, whatever the partitioning."""
    return pd.util.hash_array(np.asarray(paths.to_numpy(zero_copy_only=False), dtype=object), categorize=False)


def split(side: Side, columns: list[str], partitions: int, prefix: str) -> None:
    """Stream ``side`` into ``partitions`` spill files by path hash."""
    writers: dict[int, ipc.RecordBatchStreamWriter] = {}
    fields = [side.schema.field(name) for name in columns]
    side.spill_schema = pa.schema([*fields, pa.field("hash", pa.uint64())])
    try:
        for path in side.files:
            with side.filesystem.open_input_file(path) as handle:
                for batch in pq.ParquetFile(handle).iter_batches(batch_size=BATCH_ROWS, columns=columns):
                    side.rows += batch.num_rows
                    side.models.update(v for v in pc.unique(batch.column("model")).to_pylist() if v is not None)
                    hashes = path_hashes(batch.column("path"))
                    batch = pa.RecordBatch.from_arrays(
                        [batch.column(f.name) for f in fields] + [pa.array(hashes, pa.uint64())],
                        schema=side.spill_schema,
                    )
                    part = hashes % np.uint64(partitions)
                    order = np.argsort(part, kind="stable")
                    bounds = np.searchsorted(part[order], np.arange(partitions + 1))
                    for p in np.flatnonzero(np.diff(bounds)).tolist():
                        rows = batch.take(pa.array(order[bounds[p] : bounds[p + 1]]))
                        if p not in writers:
                            writers[p] = ipc.new_stream(
                                f"{prefix}-{p:05d}.arrows", side.spill_schema, options=IPC_OPTIONS
                            )
                        writers[p].write_batch(rows)
    finally:
        for writer in writers.values():
            writer.close()


def read_spill(spill: str, name: str, partition: int) -> pa.Table | None:
    path = os.path.join(spill, f"{name}-{partition:05d}.arrows")
    if not os.path.exists(path):
        return None
    with ipc.open_stream(path) as reader:
        return reader.read_all()


@dataclass
class Joined:
    """One partition joined: the rows in both (aligned), and the hashes of those in one only."""

    a: pa.Table
    b: pa.Table
    only_a: pa.Table
    only_b: pa.Table


def join_partition(a: Side, b: Side, rows_a: pa.Table | None, rows_b: pa.Table | None) -> Joined:
    rows_a = _unique(a, rows_a)
    rows_b = _unique(b, rows_b)
    keys_a = pa.table({"path": rows_a.column("path"), "ia": pa.array(np.arange(rows_a.num_rows))})
    keys_b = pa.table({"path": rows_b.column("path"), "ib": pa.array(np.arange(rows_b.num_rows))})
    joined = keys_a.join(keys_b, "path", join_type="full outer", use_threads=False)
    ia, ib = joined.column("ia"), joined.column("ib")
    both = pc.and_(pc.is_valid(ia), pc.is_valid(ib))
    return Joined(
        a=rows_a.take(ia.filter(both)),
        b=rows_b.take(ib.filter(both)),
        only_a=rows_a.take(ia.filter(pc.is_null(ib))),
        only_b=rows_b.take(ib.filter(pc.is_null(ia))),
    )


def _unique(side: Side, rows: pa.Table | None) -> pa.Table:
    """``rows`` with each path once (its first row); repeats are counted on the side."""
    if rows is None:
        return side.spill_schema.empty_table()
    numbered = rows.append_column("row", pa.array(np.arange(rows.num_rows)))
    first = numbered.group_by("path", use_threads=False).aggregate([("row", "min")]).column("row_min")
    side.duplicates += rows.num_rows - len(first)
    return rows.take(np.sort(first.to_numpy())) if len(first) < rows.num_rows else rows


def _count(joined: Joined, counts: dict, only: dict, a: Side, b: Side, comparer: Comparer) -> None:
    counts["both"] += joined.a.num_rows
    for name, rows in (("a", joined.only_a), ("b", joined.only_b)):
        counts[f"only_{name}"] += rows.num_rows
        hashes = rows.column("hash").to_numpy()
        only[name].offer(np.zeros(len(hashes)), hashes, lambda i, rows=rows: {"path": rows.column("path")[i].as_py()})
    for side, rows in ((a, joined.a), (b, joined.b)):
        for entry in pc.value_counts(rows.column("error")).to_pylist():
            if entry["values"] is not None:
                side.errors[entry["values"]] = side.errors.get(entry["values"], 0) + entry["counts"]
    errors_a, errors_b = pc.is_valid(joined.a.column("error")), pc.is_valid(joined.b.column("error"))
    counts["errors_a"] += pc.sum(pc.and_(errors_a, pc.invert(errors_b))).as_py() or 0
    counts["errors_b"] += pc.sum(pc.and_(errors_b, pc.invert(errors_a))).as_py() or 0
    counts["errors_both"] += pc.sum(pc.and_(errors_a, errors_b)).as_py() or 0
    clean = pc.invert(pc.or_(errors_a, errors_b))
    rows_a, rows_b = joined.a.filter(clean), joined.b.filter(clean)
    for start in range(0, rows_a.num_rows, BATCH_ROWS):
        chunk_a, chunk_b = rows_a.slice(start, BATCH_ROWS), rows_b.slice(start, BATCH_ROWS)
        comparer.add(
            chunk_a,
            chunk_b,
            chunk_a.column("path").combine_chunks(),
            chunk_a.column("label").combine_chunks(),
            chunk_a.column("hash").to_numpy(),
        )


def default_report_uri(a: str, b: str) -> str:
    """Beside B (the candidate): ``<B>.vs-<A's name>.comparison.json``."""
    parts = urlsplit(b)
    name = posixpath.basename(urlsplit(a).path.rstrip("/")) or "a"
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + f".vs-{name}.comparison.json"))


def format_comparison(report: dict) -> str:
    """The terminal's summary of a comparison."""
    inputs, errors = report["inputs"], report["errors"]
    lines = [
        f"A: {report['a']['uri']} ({report['a']['model']}, {report['a']['rows']} rows)",
        f"B: {report['b']['uri']} ({report['b']['model']}, {report['b']['rows']} rows)",
        f"inputs: {inputs['both']} in both, {inputs['only_a']} only in A, {inputs['only_b']} only in B; "
        f"errors in both outputs {errors['both']}, in A only {errors['a_only']}, in B only {errors['b_only']}; "
        f"{report['compared']} compared",
    ]
    task = report[report["task"]]
    if report["task"] == "classify":
        lines.append(
            f"top-1 agreement {_pct(task['top1_agreement'])}, top-{task['k']} overlap {_pct(task['topk_overlap'])}"
        )
        shift = task["score_shift"]
        lines.append(f"top-1 score shift (B - A): mean {_num(shift['mean'])}, mean |shift| {_num(shift['mean_abs'])}")
        if task["labelled"]:
            flips = task["flips"]
            lines.append(
                f"labelled {task['labelled']}: top-1 A {_pct(task['accuracy']['a'])}, B {_pct(task['accuracy']['b'])}; "
                f"A right -> B wrong {flips['a_right_b_wrong']}, A wrong -> B right {flips['a_wrong_b_right']}"
            )
    elif report["task"] == "detect":
        lines.append(
            f"boxes A {task['boxes_a']}, B {task['boxes_b']}: {task['matched']} matched (IoU >= {task['iou_match']}, "
            f"mean {_num(task['mean_iou'])}), {task['only_a']} only in A, {task['only_b']} only in B, "
            f"{task['label_changes']} label changes"
        )
    elif task["comparable"]:
        cosine = task["cosine"]
        lines.append(f"cosine: mean {_num(cosine['mean'], 6)}, min {_num(cosine['min'], 6)}")
    else:
        lines.append(task["note"])
    return "\n".join(lines)


def run_compare(
    a: str,
    b: str,
    output: str | None = None,
    s3: S3Options | None = None,
    work_dir: str | None = None,
    partition_bytes: int = PARTITION_BYTES,
) -> dict:
    """Compare ``a`` with ``b``; write the JSON report, its page and its plot; print the summary."""
    from batch import reports

    report_uri = output or default_report_uri(a, b)
    where = resolve(report_uri, s3)
    for name, predictions in (("A", a), ("B", b)):
        if is_within(where.location, parse_uri(predictions)):
            raise OutputRefused(
                f"the report {redact_uri(report_uri)} must not be inside output {name} {redact_uri(predictions)}"
            )
    check_report_target(where, report_uri, REPORT_FORMAT)
    reports.check_targets(report_uri, s3)
    report = {"format": REPORT_FORMAT, **compare_outputs(a, b, s3, work_dir, partition_bytes)}
    if where.location.scheme == "local":
        where.filesystem.create_dir(posixpath.dirname(where.path), recursive=True)
    with where.filesystem.open_output_stream(where.path) as stream:
        stream.write(json.dumps(report, indent=2).encode())
    written = reports.write_reports(report, report_uri, s3)
    print(format_comparison(report))
    print(f"comparison -> {redact_uri(report_uri)} ({', '.join(redact_uri(u) for u in written)})")
    return {**report, "report": redact_uri(report_uri)}


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f} %"


def _num(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"
