"""The binary journal of ``lumbarssl prepare``: finished studies, appended per process.

Each worker process appends every study it finishes, as one record, to its own log in
``OUT_DIR/.partial/`` (one write per study, no file created per study); the parent reads the
logs once to assemble the final files (:mod:`lumbarssl.data.prepare.writer`). A record cut short
by an interruption is ignored, so a resumed run only redoes the studies without a complete one.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import struct
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from lumbarssl.data.cache import LOCALIZER_NPY, PARTIAL_DIR
from lumbarssl.data.prepare.config import PrepareConfig
from lumbarssl.data.prepare.extract import StudyOutput, study_arrays
from lumbarssl.data.skips import Skip, SkipReason

__all__ = [
    "LOG_SUFFIX",
    "Partial",
    "Record",
    "append_study",
    "close_log",
    "finished_studies",
    "read_partial",
]

#: Extension of the per-process logs of finished studies in ``OUT_DIR/.partial/``.
LOG_SUFFIX = ".log"
#: Marks both ends of a record of a finished study in a log.
_MAGIC = b"LSS1"
#: Record header: magic, study id, payload length.
_RECORD = struct.Struct("<4sqQ")


def _skip_to_json(skip: Skip) -> dict[str, object]:
    data = asdict(skip)
    data["reason"] = skip.reason.value
    return data


def _skip_from_json(data: Mapping[str, Any]) -> Skip:
    return Skip(
        reason=SkipReason(data["reason"]),
        detail=str(data["detail"]),
        file=str(data["file"]),
        line=data["line"],
        study_id=data["study_id"],
        series_id=data["series_id"],
        instance_number=data["instance_number"],
        level=data["level"],
    )


# Finished studies are appended to a log, one per process: a file creation, rename and
# deletion per study cost more than the study's own PNGs on some file systems. A record is
# a header (magic, study id, payload length), the payload and the magic again; one write
# appends it, so an interrupted process leaves at most a last record without its closing
# magic, which readers ignore.
#
# Payload: a JSON line (rows, skips, array shapes and dtypes), then the arrays' bytes.

_open_logs: dict[Path, tuple[int, BinaryIO]] = {}  # out_dir -> (pid, this process's log)


def _log_for(out_dir: Path) -> BinaryIO:
    """This process's log in ``out_dir`` (a new file per process and run)."""
    entry = _open_logs.get(out_dir)
    if entry is not None and entry[0] == os.getpid():
        return entry[1]
    # A forked worker inherits its parent's table; it never writes to the parent's file.
    name = f"{os.getpid()}-{secrets.token_hex(4)}{LOG_SUFFIX}"
    handle = (out_dir / PARTIAL_DIR / name).open("xb", buffering=0)
    _open_logs[out_dir] = (os.getpid(), handle)
    return handle


def close_log(out_dir: Path) -> None:
    """Close this process's log in ``out_dir``, if it has one open."""
    entry = _open_logs.pop(out_dir, None)
    if entry is not None and entry[0] == os.getpid():
        entry[1].close()


def append_study(out_dir: Path, study_id: int, out: StudyOutput, config: PrepareConfig) -> None:
    """Append the finished study ``study_id`` to this process's log, as one record."""
    arrays = study_arrays(out, config)
    head = {
        "rows": out.rows,
        "skips": [_skip_to_json(s) for s in out.skips],
        "arrays": {name: [list(a.shape), a.dtype.str] for name, a in arrays.items()},
    }
    payload = b"".join(
        [json.dumps(head).encode(), b"\n"]  # json.dumps escapes newlines
        + [np.ascontiguousarray(a).tobytes() for a in arrays.values()]
    )
    record = memoryview(_RECORD.pack(_MAGIC, study_id, len(payload)) + payload + _MAGIC)
    handle = _log_for(out_dir)
    start = handle.tell()
    try:
        while record:  # one write() for a regular file; the loop only guards against short ones
            written = handle.write(record)
            if not written:
                raise OSError(f"{handle.name}: could not append the record of study {study_id}")
            record = record[written:]
    except OSError as exc:
        # Cut the record off again (a disk that filled up mid-record): a later record of
        # this process must not follow an incomplete one, which ends the readable log.
        with contextlib.suppress(OSError):
            handle.truncate(start)
            handle.seek(start)
        if exc.errno is not None and exc.filename is None:
            raise OSError(exc.errno, exc.strerror, str(handle.name)) from None
        raise


@dataclass(frozen=True)
class Record:
    """Where a finished study's payload lies in a log."""

    log: Path
    offset: int
    length: int


def _scan_log(path: Path) -> dict[int, Record]:
    """The complete records of one log, by study; reading stops at the first incomplete one."""
    records: dict[int, Record] = {}
    size = path.stat().st_size
    with path.open("rb") as handle:
        position = 0
        while position + _RECORD.size <= size:
            handle.seek(position)
            magic, study, length = _RECORD.unpack(handle.read(_RECORD.size))
            end = position + _RECORD.size + length
            if magic != _MAGIC or end + len(_MAGIC) > size:
                break
            handle.seek(end)
            if handle.read(len(_MAGIC)) != _MAGIC:
                break
            records.setdefault(study, Record(path, position + _RECORD.size, length))
            position = end + len(_MAGIC)
    return records


def finished_studies(out_dir: Path) -> dict[int, Record]:
    """Every study recorded in the logs of ``out_dir`` (the first record if several)."""
    records: dict[int, Record] = {}
    for log in sorted((out_dir / PARTIAL_DIR).glob(f"*{LOG_SUFFIX}")):
        for study, record in _scan_log(log).items():
            records.setdefault(study, record)
    return records


@dataclass(frozen=True)
class Partial:
    """A finished study's rows and skips; its arrays follow in ``record`` at ``offset``."""

    record: Record
    rows: list[dict[str, object]]
    skips: list[Skip]
    arrays: dict[str, tuple[tuple[int, ...], np.dtype[Any]]]
    offset: int

    @property
    def n_localizer(self) -> int:
        """Rows of the study's localizer array."""
        return self.arrays[LOCALIZER_NPY][0][0]


def read_partial(record: Record, handle: BinaryIO) -> Partial:
    """Read the head of ``record`` from its open log; its arrays are left unread."""
    handle.seek(record.offset)
    line = handle.readline()
    head = json.loads(line)
    arrays = {
        name: (tuple(int(n) for n in shape), np.dtype(dtype))
        for name, (shape, dtype) in head["arrays"].items()
    }
    skips = [_skip_from_json(s) for s in head["skips"]]
    return Partial(record, head["rows"], skips, arrays, record.offset + len(line))
