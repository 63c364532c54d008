"""Crash-safe file replacement: write a temporary file beside the target, fsync, rename."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Replace ``path`` with what ``write`` produces, all or nothing.

    The data goes to a hidden temporary file in the same directory (a rename is only atomic
    within one file system), is flushed to disk, and then renamed over ``path``. If ``write``
    raises or the process dies, ``path`` keeps its previous content and the temporary file is
    removed (or, after a hard crash, left behind under a name that never collides with outputs).

    Args:
        path: The file to create or replace.
        write: Called with the open binary temporary file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique name opened with "x" honours the umask, unlike tempfile.mkstemp's 0600.
    tmp = _temporary_beside(path)
    try:
        with tmp.open("xb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _temporary_beside(path: Path) -> Path:
    """A hidden name in ``path``'s directory that never collides with outputs or other writers."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable on POSIX; directories cannot be opened on Windows.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_duplicate(source: Path, path: Path) -> None:
    """Replace ``path`` with the content of ``source``, all or nothing, without rewriting it.

    A hard link to ``source`` is made under a temporary name and renamed over ``path``: both
    names then share one file, which stays valid when either name is later replaced by
    :func:`atomic_write` (a rename gives the name a new file and leaves the old one to the
    other name). Where hard links are refused (some network and FAT file systems), the bytes
    are copied through :func:`atomic_write` instead.

    Args:
        source: A complete file, written by :func:`atomic_write`; it is never modified in place.
        path: The file to create or replace, in the same directory as ``source``.
    """
    tmp = _temporary_beside(path)
    try:
        os.link(source, tmp)
    except OSError:
        with source.open("rb") as original:
            atomic_write(path, lambda handle: shutil.copyfileobj(original, handle))
        return
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)
