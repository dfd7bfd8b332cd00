"""What a backfill may touch in its output folder: only what it can prove it wrote.

A folder is twinfer's when it holds the job marker ``_twinfer.json`` (written before the first
result; format, version, model and task) and nothing else but twinfer's own names:
``part-<32 hex>.parquet`` results, each with twinfer's key in its Parquet schema metadata, and
``.tmp-<32 hex>`` temporaries a killed local write left behind, the shard folders
``shard-<6+ digits>/`` that hold them, and the ``_twinfer/`` folder of the plan, markers, lease
and progress (``batch.layout``). The underscore keeps the marker and ``_twinfer/`` out of
pyarrow's, Spark's and Hive's reads of the folder. A folder of format version 1 (part files at
its top level, no plan) is refused: it is not resumed by this layout.

A missing or empty folder is claimed (the marker is written when the job starts). Any other
folder - no marker, a name outside those patterns, another subfolder, a part file without the
metadata, or another model's or task's marker - is refused with ``OutputRefused`` before anything
runs, and nothing in it is deleted or replaced. Deleting is left to ``batch.shards`` (a shard's
leftovers) and ``batch.layout`` (the state's temporaries), and only for twinfer's own names in a
folder that passed these checks.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass

import pyarrow.fs as pafs

from batch.layout import SHARD_DIR, STATE_DIR
from batch.sink import PART_NAME, TEMP_NAME
from batch.uris import join

MARKER_NAME = "_twinfer.json"
FORMAT = "twinfer-backfill"
FORMAT_VERSION = 2  # 2: results in shard folders, the plan under _twinfer/
METADATA_KEY = b"twinfer"  # Parquet key-value metadata of every part file
MAX_MARKER_BYTES = 64 * 1024  # ours are ~100 bytes: anything larger is not ours
SHOWN_NAMES = 5  # foreign names quoted in a refusal


class OutputRefused(ValueError):
    """The output (or report) location holds something twinfer cannot prove it wrote."""


@dataclass(frozen=True)
class JobIdentity:
    """What a folder's results are predictions of; a resume must match it."""

    model: str
    task: str

    def marker(self) -> dict:
        return {"format": FORMAT, "version": FORMAT_VERSION, "model": self.model, "task": self.task}

    def parquet_metadata(self) -> dict[bytes, bytes]:
        return {METADATA_KEY: json.dumps(self.marker()).encode()}


@dataclass(frozen=True)
class OutputFolder:
    """A folder that passed ``inspect_output``: twinfer's part files and temporaries in it."""

    marked: bool
    parts: tuple[str, ...] = ()
    temps: tuple[str, ...] = ()
    shard_dirs: tuple[str, ...] = ()


def inspect_output(fs: pafs.FileSystem, directory: str, identity: JobIdentity, shown: str) -> OutputFolder:
    """Check the output folder before a job; raises ``OutputRefused``. ``shown`` names it in errors."""
    info = fs.get_file_info(directory)
    if info.type == pafs.FileType.NotFound:
        return OutputFolder(marked=False)
    if info.type != pafs.FileType.Directory:
        raise OutputRefused(f"output {shown} exists and is not a folder; choose a new output location")
    marker, parts, temps, foreign, ours = None, [], [], [], []
    for entry in fs.get_file_info(pafs.FileSelector(directory, recursive=False)):
        name = posixpath.basename(entry.path)
        if entry.type == pafs.FileType.Directory and (name == STATE_DIR or SHARD_DIR.fullmatch(name)):
            ours.append(entry.path)
        elif entry.type != pafs.FileType.File:
            foreign.append(name + "/")
        elif name == MARKER_NAME:
            marker = entry
        elif PART_NAME.fullmatch(name):
            parts.append(entry.path)
        elif TEMP_NAME.fullmatch(name):
            temps.append(entry.path)
        else:
            foreign.append(name)
    if foreign:
        raise OutputRefused(
            f"output {shown} holds files twinfer did not write ({_names(foreign)}); it writes only into a new or "
            "empty folder, or into one of its own. Nothing was changed: choose another output, or move those files"
        )
    if marker is None:
        if parts or temps or ours:
            raise OutputRefused(
                f"output {shown} holds {_names([posixpath.basename(p) for p in parts + temps + ours])} "
                f"but no {MARKER_NAME}: "
                "not a folder this twinfer version wrote (outputs of earlier versions are not resumed). "
                "Nothing was changed: choose another output"
            )
        return OutputFolder(marked=False)
    version = check_marker(fs, marker, identity, shown)
    if version < FORMAT_VERSION and parts:
        raise OutputRefused(
            f"output {shown} was written by an earlier twinfer (format version {version}, results at the top of the "
            "folder) and is not resumed by this one. Nothing was changed: choose a new output"
        )
    shard_dirs = tuple(sorted(p for p in ours if posixpath.basename(p) != STATE_DIR))
    return OutputFolder(marked=True, parts=tuple(sorted(parts)), temps=tuple(sorted(temps)), shard_dirs=shard_dirs)


def check_marker(fs: pafs.FileSystem, info: pafs.FileInfo, identity: JobIdentity, shown: str) -> int:
    """Raises ``OutputRefused`` unless the marker is this job's; returns its format version."""
    content = None
    if info.size is not None and info.size <= MAX_MARKER_BYTES:
        with fs.open_input_stream(info.path) as stream:
            content = _json_object(stream.read(MAX_MARKER_BYTES + 1))
    if content is None or content.get("format") != FORMAT:
        raise OutputRefused(
            f"output {shown} holds a {MARKER_NAME} that twinfer did not write. "
            "Nothing was changed: choose another output"
        )
    if not isinstance(content.get("version"), int) or content["version"] > FORMAT_VERSION:
        raise OutputRefused(
            f"output {shown} was written by a newer twinfer (format version {content.get('version')!r}); "
            "resume it with that version"
        )
    problem = mismatch(content, identity)
    if problem:
        raise OutputRefused(f"output {shown} holds {problem}. Nothing was changed: choose another output")
    return content["version"]


def mismatch(recorded: dict, identity: JobIdentity) -> str | None:
    """Why a marker's or part file's identity is not this job's (None when it is)."""
    if (recorded.get("model"), recorded.get("task")) != (identity.model, identity.task):
        return (
            f"predictions of model {recorded.get('model')!r} ({recorded.get('task')}), and this job runs "
            f"{identity.model!r} ({identity.task}): one folder holds one model's results"
        )
    return None


def part_identity(metadata: dict[bytes, bytes] | None) -> dict | None:
    """twinfer's record in a part file's schema metadata (None if it has none)."""
    content = _json_object((metadata or {}).get(METADATA_KEY))
    return content if content is not None and content.get("format") == FORMAT else None


def claim_output(fs: pafs.FileSystem, directory: str, identity: JobIdentity, folder: OutputFolder) -> None:
    """Make ``directory`` twinfer's: create it and write the marker (once; a resume keeps it)."""
    if folder.marked:
        return
    fs.create_dir(directory, recursive=True)
    with fs.open_output_stream(join(directory, MARKER_NAME)) as stream:
        stream.write(json.dumps(identity.marker(), indent=2).encode())


def _json_object(data: bytes | None) -> dict | None:
    try:
        content = json.loads(data) if data else None
    except ValueError:
        return None
    return content if isinstance(content, dict) else None


def _names(names: list[str]) -> str:
    names = sorted(names)
    shown = ", ".join(repr(n) for n in names[:SHOWN_NAMES])
    return shown + (f" and {len(names) - SHOWN_NAMES} more" if len(names) > SHOWN_NAMES else "")
