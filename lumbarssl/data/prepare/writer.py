"""The writer of ``lumbarssl prepare``: the process pool, the PNGs and the final files.

Work is grouped by study (one task per study, ``workers`` processes). A worker extracts its
study (:mod:`~lumbarssl.data.prepare.extract`), writes the study's PNGs, appends the rest to its
process's log (:mod:`~lumbarssl.data.prepare.journal`) and sends back only a row count. The
parent then concatenates the logs into the final files, each replaced atomically
(:func:`lumbarssl._core.atomic.atomic_write`), and writes ``prepare_meta.json`` last.

Safety of the run:

* One run per ``OUT_DIR``: the run holds the directory's lock
  (:func:`~lumbarssl.data.prepare.lock.output_lock`) before it reads or changes anything
  there; a second run stops at once with :class:`~lumbarssl.errors.LockHeldError`.
* Workers die with their parent: each asks the kernel for ``SIGKILL`` when its parent dies
  (``prctl(PR_SET_PDEATHSIG)`` on Linux, which is tied to the *thread* that forked it) and
  also watches its parent process id, so that a ``kill -9`` of ``lumbarssl prepare`` never
  leaves workers blocked on a pipe.
* A full disk stops the run with :class:`~lumbarssl.errors.DiskFullError` naming the file
  and the space the run needs; nothing half-written is kept (a PNG cut short is removed, a
  record cut short is cut off the journal, final files are replaced atomically), so running
  the same command again after freeing space finishes the run.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import errno
import hashlib
import io
import json
import math
import multiprocessing
import os
import shutil
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image
from tqdm import tqdm

from lumbarssl import __version__
from lumbarssl._core.atomic import atomic_write
from lumbarssl._core.lock import output_lock
from lumbarssl.data.cache import (
    CONDITION_INDEX_COLUMNS,
    INDEX_COLUMNS,
    INDEX_CSV,
    META_JSON,
    MULTISLICE_MASK_NPY,
    MULTISLICE_NPY,
    PARTIAL_DIR,
    ROIS_DIR,
    ROIS_NPY,
    SKIPPED_COLUMNS,
    SKIPPED_CSV,
    stats_from_histogram,
)
from lumbarssl.data.constants import COORDINATES_CSV, SERIES_CSV, TRAIN_CSV
from lumbarssl.data.index import DiscIndex, DiscRecord
from lumbarssl.data.prepare.config import CACHE_FORMAT_VERSION, PrepareConfig, PrepareResult
from lumbarssl.data.prepare.extract import StudyOutput, group_by_study, study_arrays
from lumbarssl.data.prepare.journal import (
    Partial,
    Record,
    append_study,
    close_log,
    finished_studies,
    read_partial,
)
from lumbarssl.data.prepare.study import extract_study, read_prepare_index
from lumbarssl.data.skips import Skip, SkipReason
from lumbarssl.errors import (
    ConfigError,
    DataError,
    DiskFullError,
    EnvironmentProblem,
    LumbarsslError,
    OutputExistsError,
)

__all__ = ["prepare_cache"]

#: errno values of a full disk or an exhausted quota.
_NO_SPACE = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})
#: errno values of a directory the run may not write to.
_NOT_WRITABLE = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
#: Seconds between two checks, in a worker, that its parent is still alive.
_PARENT_CHECK_S = 0.5
#: linux/prctl.h
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class _StudyTask:
    data_dir: Path
    out_dir: Path
    study_id: int
    discs: tuple[DiscRecord, ...]
    config: PrepareConfig


def _run_study(task: _StudyTask) -> int:
    """Extract one study, write its PNGs and append it to this process's log; return its rows.

    Only this count goes back to the parent process: the arrays travel through the log,
    which the parent reads once when it assembles the final files.
    """
    out = extract_study(task.data_dir, task.study_id, task.discs, task.config)
    # PNGs need no temporary names: the study counts as done only once its record is
    # complete, and a resumed run rewrites the PNGs of every study that is not done.
    if out.rows:
        (task.out_dir / ROIS_DIR / str(task.study_id)).mkdir(parents=True, exist_ok=True)
    for row, roi in zip(out.rows, out.rois, strict=True):
        path = task.out_dir / str(row["roi_path"])
        try:
            Image.fromarray(roi).save(
                path, format="PNG", compress_level=task.config.png_compress_level
            )
        except OSError as exc:
            path.unlink(missing_ok=True)  # nothing half-written is left behind
            raise _with_path(exc, path) from None
    append_study(task.out_dir, task.study_id, out, task.config)
    return len(out.rows)


def _with_path(exc: OSError, path: Path) -> OSError:
    """``exc`` naming ``path`` (Pillow's write errors name no file); it crosses processes."""
    if exc.errno is None or exc.filename is not None:
        return exc
    return OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(path))


# --------------------------------------------------------------------------- workers


def _worker_init(parent: int, method: str) -> None:
    """Make this worker die with the process that started the pool.

    ``PR_SET_PDEATHSIG`` delivers ``SIGKILL`` when the *thread* that forked the worker exits
    (Linux only); a thread also checks every half second that the parent process id has not
    changed (the worker was re-parented), which covers every start method and platform.
    """
    if sys.platform.startswith("linux") and method == "fork":
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    # Forked by ``parent``: if it is already gone the pid differs now. Under spawn or
    # forkserver the parent is a helper process, watched the same way from here on.
    watched = parent if method == "fork" else os.getppid()
    if os.getppid() != watched:
        os._exit(1)
    threading.Thread(
        target=_watch_parent, args=(watched,), name="lumbarssl-parent-watch", daemon=True
    ).start()


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(_PARENT_CHECK_S)
        if os.getppid() != parent:
            os._exit(1)  # an orphan: the run is over, nothing here may be kept alive


def _fingerprint(data_dir: Path, config: PrepareConfig) -> dict[str, object]:
    """What must match for a resumed run to continue an earlier one (``on_error`` need not)."""
    hashes = {}
    for name in (TRAIN_CSV, COORDINATES_CSV, SERIES_CSV):
        hashes[name] = hashlib.sha256((data_dir / name).read_bytes()).hexdigest()
    settings = config.to_dict()
    del settings["on_error"]  # a study finished in either mode has the same output
    return {"format": CACHE_FORMAT_VERSION, "settings": settings, "csv_sha256": hashes}


def _write_csv(path: Path, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if value is None else value for value in row])
    _write_bytes(path, buffer.getvalue().encode())


def _write_bytes(path: Path, data: bytes) -> None:
    def write(handle: BinaryIO) -> None:
        handle.write(data)

    _atomic_write(path, write)


def _atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """:func:`~lumbarssl._core.atomic.atomic_write`, its write errors naming ``path``."""
    try:
        atomic_write(path, write)
    except OSError as exc:
        raise _with_path(exc, path) from None


def _skip_row(skip: Skip) -> tuple[object, ...]:
    return (
        skip.study_id,
        skip.series_id,
        skip.instance_number,
        skip.level,
        skip.reason.value,
        skip.file,
        skip.line,
        skip.detail,
    )


# --------------------------------------------------------------------------- whole run


def _run_pool(tasks: Sequence[_StudyTask], workers: int, bar: tqdm[Any]) -> None:
    context = multiprocessing.get_context()
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=context,
        initializer=_worker_init,
        initargs=(os.getpid(), context.get_start_method()),
    ) as pool:
        futures: list[Future[int]] = [pool.submit(_run_study, task) for task in tasks]
        try:
            for future in as_completed(futures):
                future.result()
                bar.update()
        except BrokenProcessPool as exc:
            raise EnvironmentProblem(
                "a worker process of lumbarssl prepare died (killed by the system, e.g. out of "
                "memory); run the same command again, with fewer --workers if it recurs "
                "(finished studies are kept)"
            ) from exc
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def _npy_header(handle: BinaryIO, shape: tuple[int, ...], dtype: np.dtype[Any]) -> None:
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(handle, header)  # what np.save writes for these


def _assemble(
    out_dir: Path,
    study_ids: Sequence[int],
    records: Mapping[int, Record],
    index_skips: Sequence[Skip],
    config: PrepareConfig,
    meta: dict[str, object],
    n_resumed: int,
) -> PrepareResult:
    """Concatenate the finished studies into the final outputs; ``prepare_meta.json`` last.

    Each study's head is read first, to size the final arrays, then its arrays, appended to
    the final ``.npy`` files with plain sequential writes.
    """
    missing = [study for study in study_ids if study not in records]
    if missing:
        shown = ", ".join(str(study) for study in missing[:5]) + (" ..." if missing[5:] else "")
        raise DataError(
            f"{out_dir / PARTIAL_DIR}: no finished record of studies {shown} (changed by "
            "another program during the run?); run the same command again"
        )
    handles: dict[Path, BinaryIO] = {}
    with ExitStack() as stack:
        for record in records.values():
            if record.log not in handles:
                handles[record.log] = stack.enter_context(record.log.open("rb"))
        parts = [read_partial(records[study], handles[records[study].log]) for study in study_ids]
        return _write_outputs(out_dir, parts, handles, index_skips, config, meta, n_resumed)


def _write_outputs(
    out_dir: Path,
    parts: Sequence[Partial],
    handles: Mapping[Path, BinaryIO],
    index_skips: Sequence[Skip],
    config: PrepareConfig,
    meta: dict[str, object],
    n_resumed: int,
) -> PrepareResult:
    empty = study_arrays(StudyOutput(), config)  # names, trailing shapes and dtypes
    shapes = {
        name: (sum(part.arrays[name][0][0] for part in parts), *array.shape[1:])
        for name, array in empty.items()
    }
    if config.slices == 1:
        for stale in (MULTISLICE_NPY, MULTISLICE_MASK_NPY):
            (out_dir / stale).unlink(missing_ok=True)
    # Every study's shapes and dtypes are checked before any final file is replaced.
    offsets: list[dict[str, tuple[int, int]]] = []  # per part: name -> (offset, nbytes)
    for part in parts:
        position, where = part.offset, {}
        for name, (shape, dtype) in part.arrays.items():
            expected = (shape[0], *empty[name].shape[1:])
            if shape != expected or dtype != empty[name].dtype:
                raise _damaged(out_dir, part, name)
            nbytes = math.prod(shape) * dtype.itemsize
            where[name] = (position, nbytes)
            position += nbytes
        offsets.append(where)
    histogram = np.zeros(256, dtype=np.int64)

    def concatenate(name: str, target: BinaryIO) -> None:
        _npy_header(target, shapes[name], empty[name].dtype)
        for part, where in zip(parts, offsets, strict=True):
            offset, nbytes = where[name]
            handle = handles[part.record.log]
            handle.seek(offset)
            data = handle.read(nbytes)
            if len(data) != nbytes:
                raise _damaged(out_dir, part, name)
            target.write(data)
            if name == ROIS_NPY:
                histogram[:] += np.bincount(np.frombuffer(data, np.uint8), minlength=256)

    for name in empty:
        _atomic_write(out_dir / name, partial(concatenate, name))

    rows_out: list[dict[str, object]] = []
    skips: list[Skip] = list(index_skips)
    localizer_offset = 0
    for part in parts:
        for row in part.rows:
            row["localizer_index"] = int(str(row["localizer_index"])) + localizer_offset
        rows_out.extend(part.rows)
        skips.extend(part.skips)
        localizer_offset += part.n_localizer
    # conditions="all" adds the condition column; the spinal-only index stays as it was.
    columns = INDEX_COLUMNS if config.conditions == "spinal" else CONDITION_INDEX_COLUMNS
    _write_csv(out_dir / INDEX_CSV, columns, ([r[c] for c in columns] for r in rows_out))
    _write_csv(out_dir / SKIPPED_CSV, SKIPPED_COLUMNS, (_skip_row(s) for s in skips))

    n_rows = len(rows_out)
    labels = Counter(int(str(r["label"])) for r in rows_out)
    skip_counts = Counter(s.reason.value for s in skips)
    mean, std = stats_from_histogram(histogram)
    meta |= {
        "n_discs": n_rows,
        "n_labeled": n_rows - labels.get(-1, 0),
        "label_counts": {str(k): labels[k] for k in sorted(labels)},
        "n_localizer_images": localizer_offset,
        "n_studies": len(parts),
        "skip_counts": {
            r.value: skip_counts[r.value] for r in SkipReason if r.value in skip_counts
        },
        "roi_stats": {"mean": mean, "std": std},
        "files": sorted([INDEX_CSV, SKIPPED_CSV, ROIS_DIR, *empty]),
    }
    _write_bytes(out_dir / META_JSON, json.dumps(meta, indent=2).encode())
    return _result_from_meta(out_dir, meta, n_resumed=n_resumed)


def _damaged(out_dir: Path, part: Partial, name: str) -> DataError:
    return DataError(
        f"{part.record.log}: damaged partial result ({name}); delete "
        f"{out_dir / PARTIAL_DIR} and run again"
    )


def _result_from_meta(
    out_dir: Path, meta: Mapping[str, Any], *, n_resumed: int = 0
) -> PrepareResult:
    return PrepareResult(
        out_dir=out_dir,
        n_discs=int(meta["n_discs"]),
        n_labeled=int(meta["n_labeled"]),
        n_localizer_images=int(meta["n_localizer_images"]),
        n_studies=int(meta["n_studies"]),
        n_resumed=n_resumed,
        skip_counts={str(k): int(v) for k, v in meta["skip_counts"].items()},
    )


def prepare_cache(
    data_dir: str | Path,
    out_dir: str | Path,
    config: PrepareConfig | None = None,
    *,
    workers: int = 1,
    progress: bool = True,
) -> PrepareResult:
    """Build the ROI cache of an RSNA directory (the ``lumbarssl prepare`` command).

    Args:
        data_dir: RSNA 2024 layout: the three CSV files and ``train_images/``.
        out_dir: Output directory, created if needed. Re-running on the directory of an
            interrupted run with the same input and settings finishes it; on a completed one
            it returns at once.
        config: Settings; the paper's defaults when ``None``.
        workers: Worker processes (one task per study); 1 runs in this process.
        progress: Show a progress bar.

    Returns:
        Counts of what was written and skipped.

    Raises:
        lumbarssl.errors.ConfigError: If ``workers`` < 1 (a :class:`ValueError`).
        lumbarssl.errors.OutputExistsError: If ``out_dir`` holds a completed run of other data
            or settings.
        RSNADataError: If a CSV lacks a column, repeats a column name or is not UTF-8, or on
            the first bad row or file with ``on_error="raise"``; the message names the file
            (and the CSV line).
        lumbarssl.errors.LockHeldError: If another run holds the lock of ``out_dir``; nothing
            there was read or changed.
        lumbarssl.errors.DiskFullError: If the disk fills up; the message names the file and
            the space needed, and nothing half-written is kept (running again resumes).
        lumbarssl.errors.EnvironmentProblem: If ``out_dir`` cannot be written to, or a worker
            process was killed by the system.
    """
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    config = config or PrepareConfig()
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    index = read_prepare_index(data_dir, config)
    fingerprint = _fingerprint(data_dir, config)
    with _environment_errors(out_dir, _needed_bytes(len(index.discs), config)):
        out_dir.mkdir(parents=True, exist_ok=True)
        with output_lock(out_dir, "lumbarssl prepare"):
            return _prepare_locked(data_dir, out_dir, index, fingerprint, config, workers, progress)


def _read_json(path: Path) -> Any:
    """A JSON file of ``OUT_DIR``, or ``None`` if it cannot be parsed."""
    try:
        return json.loads(path.read_bytes())
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        return None


def _prepare_locked(
    data_dir: Path,
    out_dir: Path,
    index: DiscIndex,
    fingerprint: dict[str, object],
    config: PrepareConfig,
    workers: int,
    progress: bool,
) -> PrepareResult:
    """The run of :func:`prepare_cache`, once the lock of ``out_dir`` is held."""
    meta_path = out_dir / META_JSON
    if meta_path.is_file():
        meta = _read_json(meta_path)
        if isinstance(meta, dict) and meta.get("fingerprint") == fingerprint:
            with contextlib.suppress(KeyError, TypeError, ValueError, AttributeError):
                return _result_from_meta(out_dir, meta, n_resumed=int(meta["n_studies"]))
        raise OutputExistsError(
            f"{out_dir} already holds a completed prepare of other data or settings, or a "
            f"damaged {META_JSON}; choose an empty OUT_DIR or delete this one"
        )

    partial = out_dir / PARTIAL_DIR
    run_file = partial / "run.json"
    if partial.is_dir() and (not run_file.is_file() or _read_json(run_file) != fingerprint):
        # Left by a run of other data or settings: its studies cannot be reused.
        shutil.rmtree(partial)
        shutil.rmtree(out_dir / ROIS_DIR, ignore_errors=True)
    partial.mkdir(exist_ok=True)
    if not run_file.is_file():
        _write_bytes(run_file, json.dumps(fingerprint).encode())

    studies = group_by_study(index.discs)
    done = finished_studies(out_dir).keys() & studies.keys()
    tasks = [
        _StudyTask(data_dir, out_dir, study, discs, config)
        for study, discs in studies.items()
        if study not in done
    ]
    with tqdm(
        total=len(studies), initial=len(done), disable=not progress, unit="study", desc="prepare"
    ) as bar:
        if workers == 1 or len(tasks) <= 1:
            try:
                for task in tasks:
                    _run_study(task)
                    bar.update()
            finally:
                close_log(out_dir)
        else:
            close_log(out_dir)  # nothing of this process may be open while workers fork
            _run_pool(tasks, workers, bar)

    meta = {
        "lumbarssl_version": __version__,
        "format": CACHE_FORMAT_VERSION,
        "data_dir": str(data_dir.resolve()),
        "config": config.to_dict(),
        "fingerprint": fingerprint,
    }
    records = finished_studies(out_dir)
    result = _assemble(out_dir, list(studies), records, index.skips, config, meta, len(done))
    shutil.rmtree(partial)
    return result


def _needed_bytes(n_discs: int, config: PrepareConfig) -> int:
    """About the most disk space a run of ``n_discs`` discs uses at once.

    Every array is held twice at the end (in the journal and in the final ``.npy`` files);
    one localizer input per disc (at most); PNGs of level 0 are about the ROI's size.
    """
    roi = config.roi_size**2
    arrays = roi + 3 * config.localizer_size**2
    if config.slices > 1:
        arrays += config.slices * (roi + 1)
    png = roi + config.roi_size + 128
    return n_discs * (2 * arrays + png + 512)


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


@contextlib.contextmanager
def _environment_errors(out_dir: Path, needed: int) -> Iterator[None]:
    """Turn a full disk or an unwritable ``out_dir`` into one-line typed errors."""
    try:
        yield
    except LumbarsslError:
        raise
    except OSError as exc:
        where = exc.filename if exc.filename is not None else out_dir
        if exc.errno in _NO_SPACE:
            try:
                free = _megabytes(shutil.disk_usage(out_dir).free)
            except OSError:
                free = "unknown"
            raise DiskFullError(
                f"{where}: no space left on device; this run needs about "
                f"{_megabytes(needed)} in {out_dir} ({free} free now); free some space or "
                "choose another OUT_DIR, then run the same command again (finished studies "
                "are kept, nothing half-written was left)"
            ) from exc
        if exc.errno in _NOT_WRITABLE and Path(where).resolve().is_relative_to(out_dir.resolve()):
            raise EnvironmentProblem(
                f"{where}: cannot write ({exc.strerror}); choose an OUT_DIR this user may write to"
            ) from exc
        raise
