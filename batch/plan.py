"""The plan: a frozen manifest cut into fixed-size shards, written under the output.

Shard ``i`` holds rows ``[i * shard_rows, (i + 1) * shard_rows)`` of the manifest in its reading
order (after the extension filter), as ``_twinfer/plan/shards/<i>.parquet`` with columns
``path``, ``size`` and ``label``. ``plan.json`` is written last, so a plan exists only once every
shard file does; it records the source, the manifest's fingerprint (``batch.manifest``), the
row count, a SHA-256 over all planned rows, and the settings that shape the shards.

A re-run finds the plan and resumes it. If the manifest's fingerprint or those settings differ,
the run is refused (``PlanChanged``) unless ``replan`` is set: then the old plan, its completion
markers and its results (twinfer's own files only) are deleted and the manifest is planned anew.
Planning streams the manifest: the driver holds at most about one shard of rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import asdict, dataclass
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from batch import layout
from batch.manifest import ROWS_SCHEMA
from batch.sink import PART_NAME, TEMP_NAME

logger = logging.getLogger(__name__)

PLAN_FORMAT = "twinfer-plan/1"


class PlanChanged(ValueError):
    """The output was planned from another manifest (or with other shard settings)."""


@dataclass(frozen=True)
class Plan:
    source: str  # the input as shown (redacted)
    fingerprint: str  # batch.manifest.Manifest.fingerprint, or "listing:<source>" for a listed prefix
    rows: int
    shard_rows: int
    shards: int
    rows_sha256: str
    extensions: tuple[str, ...] | None
    format: str = PLAN_FORMAT

    def shard_size(self, shard: int) -> int:
        return min(self.shard_rows, self.rows - shard * self.shard_rows)

    def settings(self) -> dict:
        return {"shard_rows": self.shard_rows, "extensions": list(self.extensions) if self.extensions else None}

    def to_json(self) -> bytes:
        body = asdict(self)
        body["extensions"] = list(self.extensions) if self.extensions else None
        return json.dumps(body, indent=2).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "Plan":
        body = json.loads(data)
        if body.get("format") != PLAN_FORMAT:
            raise PlanChanged(f"plan format {body.get('format')!r} is not {PLAN_FORMAT!r}")
        body["extensions"] = tuple(body["extensions"]) if body.get("extensions") else None
        return cls(**body)


def read_plan(fs: pafs.FileSystem, output: str) -> Plan | None:
    data = layout.read_small(fs, layout.plan_file(output))
    return None if data is None else Plan.from_json(data)


def check_plan(plan: Plan, fingerprint: str, shard_rows: int, extensions: tuple[str, ...] | None, shown: str) -> None:
    """Raises ``PlanChanged`` when ``plan`` is not the plan of this manifest with these settings."""
    wanted = {"shard_rows": shard_rows, "extensions": list(_normalised(extensions)) if extensions else None}
    if plan.fingerprint != fingerprint:
        why = f"its manifest changed (planned from fingerprint {plan.fingerprint[:40]}, now {fingerprint[:40]})"
    elif plan.settings() != wanted:
        why = f"it was planned with {plan.settings()}, this run asks for {wanted}"
    else:
        return
    raise PlanChanged(
        f"output {shown} holds the plan of another input: {why}. Nothing was changed: resume it with the "
        "same manifest and settings, choose a new output, or pass --replan to plan anew (which deletes this "
        "output's results of the old plan)"
    )


def write_plan(
    fs: pafs.FileSystem,
    output: str,
    batches: Iterable[pa.RecordBatch],
    *,
    source: str,
    fingerprint: str,
    shard_rows: int,
    extensions: tuple[str, ...] | None,
) -> Plan:
    """Stream ``batches`` (``ROWS_SCHEMA``) into shard files, then write ``plan.json``."""
    digest = hashlib.sha256()
    rows = shards = 0
    buffered: list[pa.RecordBatch] = []
    held = 0
    pattern = _extension_pattern(extensions)
    for batch in batches:
        if pattern is not None:
            batch = batch.filter(pc.match_substring_regex(pc.utf8_lower(batch.column("path")), pattern))
        if not batch.num_rows:
            continue
        _update(digest, batch)
        rows += batch.num_rows
        buffered.append(batch)
        held += batch.num_rows
        while held >= shard_rows:
            table = pa.Table.from_batches(buffered, ROWS_SCHEMA).combine_chunks()
            layout.write_table_whole(fs, table.slice(0, shard_rows), layout.plan_shard_file(output, shards))
            shards += 1
            rest = table.slice(shard_rows)
            buffered, held = rest.to_batches(), rest.num_rows
    if held:
        table = pa.Table.from_batches(buffered, ROWS_SCHEMA)
        layout.write_table_whole(fs, table, layout.plan_shard_file(output, shards))
        shards += 1
    plan = Plan(source, fingerprint, rows, shard_rows, shards, digest.hexdigest(), _normalised(extensions))
    layout.write_bytes_whole(fs, plan.to_json(), layout.plan_file(output))
    logger.info("planned %d inputs in %d shards of %d", rows, shards, shard_rows)
    return plan


def shard_rows_table(fs: pafs.FileSystem, output: str, plan: Plan, shard: int) -> pa.Table:
    """Shard ``shard``'s inputs, checked against the plan's count."""
    import pyarrow.parquet as pq

    table = pq.read_table(layout.plan_shard_file(output, shard), filesystem=fs)
    if table.num_rows != plan.shard_size(shard):
        raise PlanChanged(
            f"shard {shard} of the plan holds {table.num_rows} rows, plan.json says {plan.shard_size(shard)}"
        )
    return table


def discard_plan(fs: pafs.FileSystem, output: str) -> None:
    """``--replan``: delete the plan, its markers, its listing and its shards' results (only the
    names twinfer writes; anything else stays)."""
    for sub in ("plan", "done", "listing"):
        directory = layout.state(output, sub)
        if fs.get_file_info(directory).type == pafs.FileType.Directory:
            fs.delete_dir(directory)
    if fs.get_file_info(output).type != pafs.FileType.Directory:
        return
    for entry in fs.get_file_info(pafs.FileSelector(output, recursive=False)):
        name = entry.path.rsplit("/", 1)[-1]
        if entry.type != pafs.FileType.Directory or not layout.SHARD_DIR.fullmatch(name):
            continue
        for inner in fs.get_file_info(pafs.FileSelector(entry.path, recursive=False)):
            base = inner.path.rsplit("/", 1)[-1]
            if inner.type == pafs.FileType.File and (PART_NAME.fullmatch(base) or TEMP_NAME.fullmatch(base)):
                fs.delete_file(inner.path)


def iter_shards(plan: Plan, done: set[int]) -> Iterator[int]:
    return (s for s in range(plan.shards) if s not in done)


def _update(digest, batch: pa.RecordBatch) -> None:
    digest.update("\n".join(batch.column("path").to_pylist()).encode())
    digest.update(pc.fill_null(batch.column("size"), -1).to_numpy(zero_copy_only=False).tobytes())
    digest.update("\n".join(label or "" for label in batch.column("label").to_pylist()).encode())


def _normalised(extensions: Iterable[str] | None) -> tuple[str, ...] | None:
    if not extensions:
        return None
    return tuple(sorted({e.lower().lstrip(".") for e in extensions}))


def _extension_pattern(extensions: Iterable[str] | None) -> str | None:
    wanted = _normalised(extensions)
    if not wanted:
        return None
    return r"\.(" + "|".join(re.escape(e) for e in wanted) + r")$"
