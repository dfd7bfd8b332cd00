"""Which files a backfill reads, their listed sizes, and the true label each one carries in its
directory name.

Every regular, non-hidden file under the input root is an input (a text file among the images
becomes an error row, not a silent gap), unless ``extensions`` narrows the set. A file laid out
as ``<root>/<label>/.../<file>`` has label ``<label>`` (an ImageNet wnid or class name); a file
directly under the root has none.

Symbolic links in a local input: a link to a directory is never followed (no loops, no file
listed twice; it is skipped with a logged warning), and a link to a file is an input only if
its resolved target lies inside the resolved root (it keeps the link's path and label); a link
pointing outside the root, or nowhere, is skipped with a logged warning. The root itself may be
a link. The check is made when listing; a link changed while the job runs is not re-checked.
"""

from __future__ import annotations

import logging
import os
import posixpath
import stat
from dataclasses import dataclass
from typing import Iterable, Iterator

import pyarrow.fs as pafs

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class InputFile:
    path: str  # filesystem path
    size: int | None  # bytes as listed; None when the filesystem did not say


def list_inputs(fs: pafs.FileSystem, root: str, extensions: Iterable[str] | None = None) -> list[str]:
    """Sorted filesystem paths of the input files under ``root`` (or ``root`` itself if a file)."""
    return [f.path for f in list_input_files(fs, root, extensions)]


def list_input_files(fs: pafs.FileSystem, root: str, extensions: Iterable[str] | None = None) -> list[InputFile]:
    """``list_inputs`` with each file's listed size."""
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.File:
        return [InputFile(root, info.size)]
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"input {root!r} does not exist")
    wanted = _normalise_extensions(extensions)
    return sorted(
        (f for f in walk_inputs(fs, root, root) if wanted is None or _extension(f.path) in wanted),
        key=lambda f: f.path,
    )


def walk_inputs(fs: pafs.FileSystem, directory: str, root: str) -> Iterator[InputFile]:
    """The input files under ``directory`` (inside the input ``root``), as they are listed: hidden
    names skipped, links by the module docstring's rules (they must stay inside ``root``)."""
    if isinstance(fs, pafs.LocalFileSystem):
        yield from _walk_local(directory, os.path.realpath(root))
        return
    for f in fs.get_file_info(pafs.FileSelector(directory, recursive=True)):
        if f.type == pafs.FileType.File and not _hidden(f.path, root):
            yield InputFile(f.path, f.size)


def label_for(path: str, root: str) -> str | None:
    """The first directory under ``root`` on the way to ``path``; None for files directly in it."""
    relative = posixpath.relpath(path, root) if path != root else ""
    parts = relative.split("/")
    return parts[0] if len(parts) > 1 else None


def _walk_local(root: str, real_root: str | None = None) -> Iterator[InputFile]:
    """Regular files under ``root`` by the symlink rules of the module docstring (links must stay
    inside ``real_root``, by default ``root`` resolved). (pyarrow's recursive selector follows
    directory links, loops included.)"""
    real_root = real_root or os.path.realpath(root)
    pending = [root]
    while pending:
        directory = pending.pop()
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue  # hidden: not an input, and its subtree is not walked
                path = posixpath.join(directory, entry.name)
                if entry.is_symlink():
                    found = _linked_file(path, real_root)
                    if found is not None:
                        yield found
                elif entry.is_dir(follow_symlinks=False):
                    pending.append(path)
                elif entry.is_file(follow_symlinks=False):
                    yield InputFile(path, entry.stat(follow_symlinks=False).st_size)


def _linked_file(path: str, real_root: str) -> InputFile | None:
    target = os.path.realpath(path)
    try:
        status = os.stat(target)
    except OSError:
        logger.warning("skipping %s: a symbolic link to nothing", path)
        return None
    if stat.S_ISDIR(status.st_mode):
        logger.warning("skipping %s: links to directories are not followed", path)
        return None
    if not (target == real_root or target.startswith(real_root.rstrip("/") + "/")):
        logger.warning("skipping %s: a symbolic link to a file outside the input root", path)
        return None
    return InputFile(path, status.st_size) if stat.S_ISREG(status.st_mode) else None


def _hidden(path: str, root: str) -> bool:
    """Dot files and files in dot directories below the root (.DS_Store, .cache/...)."""
    return any(part.startswith(".") for part in posixpath.relpath(path, root).split("/"))


def _extension(path: str) -> str:
    return posixpath.splitext(path)[1].lower().lstrip(".")


def _normalise_extensions(extensions: Iterable[str] | None) -> frozenset[str] | None:
    if extensions is None:
        return None
    return frozenset(e.lower().lstrip(".") for e in extensions)
