"""Manifests: the inputs of a backfill as a stream of ``(path, size, label)`` record batches.

Two kinds of manifest, told apart by name:

* an S3 Inventory ``manifest.json``: its ``files`` (CSV, ORC or Parquet, per ``fileFormat``) are
  read in the order listed. CSV files have no header (the columns are ``fileSchema``) and their
  keys are URL-encoded; ORC and Parquet keys are plain. In a versioned inventory only rows with
  ``is_latest`` true and ``is_delete_marker`` false are kept. The data files live in the
  destination bucket (``destinationBucket``) on the manifest's own filesystem; for a local copy of
  a manifest they are looked up under the manifest's parent folders.
* any other file or folder: Parquet (``.parquet``) or CSV (``.csv``, ``.csv.gz``, with a header)
  with a ``uri`` column (``s3://bucket/key``, ``file:///abs/path`` or an absolute local path),
  and optional ``size`` (bytes) and ``label`` columns. A folder's files are read in name order.

Every reader streams (a bounded number of rows at a time); nothing holds the whole manifest.
``fingerprint`` is the cheap identity a re-run compares with the plan's: the bytes of an
inventory's ``manifest.json`` (which carries each data file's MD5), or the names and sizes of the
data files of a plain manifest.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from dataclasses import dataclass
from typing import Iterator
from urllib.parse import unquote_plus

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.orc as paorc
import pyarrow.parquet as pq

from batch.uris import Resolved

ROWS_SCHEMA = pa.schema([("path", pa.string()), ("size", pa.int64()), ("label", pa.string())])
BATCH_ROWS = 8_192
MAX_MANIFEST_JSON_BYTES = 64 * 1024 * 1024
INVENTORY_FORMATS = ("CSV", "ORC", "Parquet")
PLAIN_SUFFIXES = (".parquet", ".csv", ".csv.gz")


class ManifestError(ValueError):
    """A manifest twinfer cannot read: wrong format, missing columns, bad URIs."""


@dataclass(frozen=True)
class Manifest:
    """A readable manifest: its data files, their format and how their rows map to inputs."""

    kind: str  # "inventory" or "plain"
    fs: pafs.FileSystem
    files: tuple[str, ...]  # filesystem paths of the data files, in reading order
    file_format: str  # "csv", "orc", "parquet" (a plain manifest: per file, by suffix)
    fingerprint: str
    csv_columns: tuple[str, ...] = ()  # inventory CSV: the columns, from fileSchema

    def batches(self) -> Iterator[pa.RecordBatch]:
        """``ROWS_SCHEMA`` batches of at most ``BATCH_ROWS`` rows, in a fixed order."""
        for path in self.files:
            for batch in self._raw_batches(path):
                if self.kind == "inventory":
                    rows = inventory_rows(batch, url_encoded=self.file_format == "csv")
                else:
                    rows = plain_rows(batch, path)
                if rows.num_rows:
                    yield rows

    def _raw_batches(self, path: str) -> Iterator[pa.RecordBatch]:
        fmt = self.file_format if self.kind == "inventory" else _format_of(path)
        if fmt == "parquet":
            with self.fs.open_input_file(path) as handle:
                yield from pq.ParquetFile(handle).iter_batches(batch_size=BATCH_ROWS)
        elif fmt == "orc":
            with self.fs.open_input_file(path) as handle:
                orc = paorc.ORCFile(handle)
                for stripe in range(orc.nstripes):
                    yield orc.read_stripe(stripe)
        else:
            if self.kind == "inventory":
                names = list(self.csv_columns)
                read = pacsv.ReadOptions(column_names=names, block_size=1 << 22)
                convert = pacsv.ConvertOptions(column_types={n: pa.string() for n in names}, strings_can_be_null=True)
            else:
                read = pacsv.ReadOptions(block_size=1 << 22)
                convert = pacsv.ConvertOptions(
                    column_types={"uri": pa.string(), "label": pa.string(), "size": pa.int64()},
                    strings_can_be_null=True,
                )
            compression = "gzip" if path.endswith(".gz") else None
            with self.fs.open_input_stream(path, compression=compression) as stream:
                yield from pacsv.open_csv(stream, read_options=read, convert_options=convert)


def open_manifest(where: Resolved) -> Manifest:
    """The manifest at ``where`` (raises ``FileNotFoundError`` / ``ManifestError``)."""
    fs, path = where.filesystem, where.path
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"manifest {path!r} does not exist")
    if info.type == pafs.FileType.File and posixpath.basename(path) == "manifest.json":
        return _inventory(where, info)
    if info.type == pafs.FileType.File:
        files = [info]
    else:
        found = fs.get_file_info(pafs.FileSelector(path, recursive=True))
        files = sorted(
            (f for f in found if f.type == pafs.FileType.File and not _hidden(f.path, path) and _format_of(f.path)),
            key=lambda f: f.path,
        )
        if not files:
            raise ManifestError(f"manifest folder {path!r} holds no {', '.join(PLAIN_SUFFIXES)} files")
    for f in files:
        if not _format_of(f.path):
            raise ManifestError(f"manifest {f.path!r}: expected a manifest.json, {', '.join(PLAIN_SUFFIXES)}")
    digest = hashlib.sha256()
    for f in files:
        digest.update(f"{posixpath.relpath(f.path, path) if f.path != path else ''}\0{f.size}\n".encode())
    return Manifest("plain", fs, tuple(f.path for f in files), "mixed", "plain:" + digest.hexdigest())


def _inventory(where: Resolved, info: pafs.FileInfo) -> Manifest:
    fs, path = where.filesystem, where.path
    if info.size is not None and info.size > MAX_MANIFEST_JSON_BYTES:
        raise ManifestError(f"{path!r} is {info.size} bytes: not an S3 Inventory manifest")
    with fs.open_input_stream(path) as stream:
        raw = stream.read(MAX_MANIFEST_JSON_BYTES + 1)
    try:
        content = json.loads(raw)
        fmt = content["fileFormat"]
        keys = [f["key"] for f in content["files"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise ManifestError(f"{path!r} is not an S3 Inventory manifest.json ({exc!r})") from None
    if fmt not in INVENTORY_FORMATS:
        raise ManifestError(f"{path!r}: fileFormat {fmt!r} is not one of {INVENTORY_FORMATS}")
    columns: tuple[str, ...] = ()
    if fmt == "CSV":
        columns = tuple(_snake(c.strip()) for c in str(content.get("fileSchema", "")).split(","))
        if "key" not in columns or "bucket" not in columns:
            raise ManifestError(f"{path!r}: fileSchema {content.get('fileSchema')!r} lacks Bucket and Key")
    files = tuple(_data_file(where, content, key) for key in keys)
    return Manifest("inventory", fs, files, fmt.lower(), "inventory:" + hashlib.sha256(raw).hexdigest(), columns)


def _data_file(where: Resolved, content: dict, key: str) -> str:
    if where.location.scheme == "s3":
        bucket = str(content.get("destinationBucket", "")).rsplit(":", 1)[-1] or where.location.bucket
        return f"{bucket}/{key}"
    folder = posixpath.dirname(where.path)
    while True:  # a local copy: the folder the keys are relative to is one of the manifest's parents
        candidate = posixpath.join(folder, key)
        if where.filesystem.get_file_info(candidate).type == pafs.FileType.File:
            return candidate
        if folder in ("/", ""):
            raise ManifestError(f"inventory data file {key!r} not found under the manifest's parent folders")
        folder = posixpath.dirname(folder)


def inventory_rows(batch: pa.RecordBatch, url_encoded: bool) -> pa.RecordBatch:
    """S3 Inventory rows -> ``ROWS_SCHEMA``: latest, non-deleted objects; CSV keys URL-decoded."""
    names = [_snake(n) for n in batch.schema.names]
    batch = pa.RecordBatch.from_arrays(batch.columns, names=names)
    keep = None
    if "is_latest" in names:
        keep = _truthy(batch.column("is_latest"))
    if "is_delete_marker" in names:
        alive = pc.invert(_truthy(batch.column("is_delete_marker")))
        keep = alive if keep is None else pc.and_(keep, alive)
    if keep is not None:
        batch = batch.filter(pc.fill_null(keep, False))
    keys = batch.column("key")
    if url_encoded:
        keys = pa.array([unquote_plus(k) if k is not None else None for k in keys.to_pylist()], pa.string())
    paths = pc.binary_join_element_wise("s3://", batch.column("bucket").cast(pa.string()), "/", keys, "")
    size = batch.column("size").cast(pa.int64()) if "size" in names else pa.nulls(batch.num_rows, pa.int64())
    return pa.RecordBatch.from_arrays([paths, size, pa.nulls(batch.num_rows, pa.string())], schema=ROWS_SCHEMA)


def plain_rows(batch: pa.RecordBatch, source: str) -> pa.RecordBatch:
    """A plain manifest's rows -> ``ROWS_SCHEMA`` (``file://`` dropped; other schemes refused)."""
    if "uri" not in batch.schema.names:
        raise ManifestError(f"manifest {source!r} has no 'uri' column (columns: {batch.schema.names})")
    uris = batch.column("uri").cast(pa.string())
    uris = pc.if_else(pc.starts_with(uris, "file://"), pc.utf8_slice_codeunits(uris, 7), uris)
    good = pc.or_(pc.starts_with(uris, "s3://"), pc.starts_with(uris, "/"))
    if not pc.all(pc.fill_null(good, False)).as_py():
        bad = uris.filter(pc.invert(pc.fill_null(good, False)))[0]
        raise ManifestError(
            f"manifest {source!r}: uri {bad.as_py()!r} is neither s3://bucket/key nor an absolute local path"
        )
    n = batch.num_rows
    size = batch.column("size").cast(pa.int64()) if "size" in batch.schema.names else pa.nulls(n, pa.int64())
    label = batch.column("label").cast(pa.string()) if "label" in batch.schema.names else pa.nulls(n, pa.string())
    return pa.RecordBatch.from_arrays([uris, size, label], schema=ROWS_SCHEMA)


def _truthy(column: pa.Array) -> pa.Array:
    if pa.types.is_boolean(column.type):
        return column
    return pc.equal(pc.utf8_lower(column.cast(pa.string())), "true")


def _snake(name: str) -> str:
    """``IsDeleteMarker`` / ``is_delete_marker`` -> ``is_delete_marker``; ``ETag`` -> ``e_tag``."""
    out = []
    for i, ch in enumerate(name):
        if ch.isupper() and i and (not name[i - 1].isupper() or (i + 1 < len(name) and name[i + 1].islower())):
            out.append("_")
        out.append(ch.lower())
    return "".join(out).replace("__", "_")


def _format_of(path: str) -> str | None:
    lower = path.lower()
    if lower.endswith(".parquet"):
        return "parquet"
    if lower.endswith((".csv", ".csv.gz")):
        return "csv"
    return None


def _hidden(path: str, root: str) -> bool:
    return any(part.startswith((".", "_")) for part in posixpath.relpath(path, root).split("/"))
