"""One run at a time per output directory: an advisory lock file held for the whole run.

``lumbarssl prepare`` and every pipeline stage (pretrain, finetune, train-localizer,
evaluate, ...) take the lock of their output directory before they read or change anything
there, so a second run into the same directory stops at once with
:class:`~lumbarssl.errors.LockHeldError` (exit status 3) and never touches the first run's
files. The lock is ``fcntl.flock`` on ``OUT_DIR/.lumbarssl.lock``: the kernel releases it when
the holder exits, however it exits (``kill -9`` included), so a stale lock file never blocks
a later run. Worker processes forked by the holder share the lock: it is free again once the
last of them has exited (prepare's workers exit with their parent). On systems without
``fcntl`` (Windows) no lock is taken.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from lumbarssl.errors import LockHeldError

__all__ = ["LOCK_FILE", "output_lock"]

#: The lock file in the output directory; removed by the holder when it finishes.
LOCK_FILE = ".lumbarssl.lock"


def _holder(path: Path) -> str:
    with contextlib.suppress(OSError, UnicodeDecodeError):
        text = path.read_text().strip()
        if text:
            return text
    return "unknown"


@contextlib.contextmanager
def output_lock(directory: Path, command: str) -> Iterator[None]:
    """Hold the lock of ``directory`` for the duration of the ``with`` block.

    Args:
        directory: The output directory; it must exist.
        command: What holds the lock, for the message of a refused second run
            (``"lumbarssl prepare"``).

    Yields:
        Nothing; the lock is held inside the block.

    Raises:
        LockHeldError: If another process holds the lock; the message names the directory,
            the holder's process id and what to do.
    """
    if sys.platform == "win32":  # pragma: no cover
        yield
        return
    import fcntl

    path = directory / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockHeldError(
                f"{directory}: another {command} (process {_holder(path)}) is writing to this "
                "directory; wait for it to finish, or choose another output directory"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        # The previous holder removes the file before it lets go: if this is a file it
        # removed, lock the new one instead.
        try:
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # while still held: a waiting run then locks a fresh file
        os.close(fd)
