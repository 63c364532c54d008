"""Crash-safe file replacement: write a temporary file beside the target, fsync, rename."""

from __future__ import annotations

import contextlib
import os
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
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
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


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable on POSIX; directories cannot be opened on Windows.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
