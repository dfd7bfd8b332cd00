"""Which files a backfill reads, and the true label each one carries in its directory name.

Every regular, non-hidden file under the input root is an input (a text file among the images
becomes an error row, not a silent gap), unless ``extensions`` narrows the set. A file laid out
as ``<root>/<label>/.../<file>`` has label ``<label>`` (an ImageNet wnid or class name); a file
directly under the root has none.
"""

from __future__ import annotations

import posixpath
from typing import Iterable

import pyarrow.fs as pafs


def list_inputs(fs: pafs.FileSystem, root: str, extensions: Iterable[str] | None = None) -> list[str]:
    """Sorted filesystem paths of the input files under ``root`` (or ``root`` itself if a file)."""
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.File:
        return [root]
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"input {root!r} does not exist")
    wanted = _normalise_extensions(extensions)
    files = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    return sorted(
        f.path
        for f in files
        if f.type == pafs.FileType.File
        and not _hidden(f.path, root)
        and (wanted is None or _extension(f.path) in wanted)
    )


def label_for(path: str, root: str) -> str | None:
    """The first directory under ``root`` on the way to ``path``; None for files directly in it."""
    relative = posixpath.relpath(path, root) if path != root else ""
    parts = relative.split("/")
    return parts[0] if len(parts) > 1 else None


def _hidden(path: str, root: str) -> bool:
    """Dot files and files in dot directories below the root (.DS_Store, .cache/...)."""
    return any(part.startswith(".") for part in posixpath.relpath(path, root).split("/"))


def _extension(path: str) -> str:
    return posixpath.splitext(path)[1].lower().lstrip(".")


def _normalise_extensions(extensions: Iterable[str] | None) -> frozenset[str] | None:
    if extensions is None:
        return None
    return frozenset(e.lower().lstrip(".") for e in extensions)
