"""``lumbarssl prepare``: an RSNA directory → the ROI cache that training reads.

For every usable disc of :func:`~lumbarssl.data.index.read_index` the annotated slice is
decoded once, the paper's ROI is cut (:func:`~lumbarssl.data.roi.extract_roi`, Sec. 3.1, 4.1)
and saved as a PNG and as a row of ``rois.npy``; optionally ROIs at the same ``(x, y)`` on the
neighbouring slices (``rois_multislice.npy``), and the 2.5D localizer input of each annotated
slice (:func:`~lumbarssl.data.roi.localizer_input`, Sec. 4.5). Training then never decodes
DICOM. The output layout is described in :mod:`lumbarssl.data.cache`.

Work is grouped by study (one task per study, ``workers`` processes). Inside a study, the
headers of each needed series are read once to order it (only the few elements needed, see
:func:`~lumbarssl.data.dicom.open_series`), and the needed slices (annotated ones, their
neighbours, the localizer's ±1) are decoded one at a time, each once, and cut into every ROI
and localizer channel asked of it. A worker sends back only a row count: each finished study
is appended, as one record, to its process's log in ``OUT_DIR/.partial/`` (one write per study,
no file created per study), which the parent reads once to assemble the final files. Those
are written under temporary names and renamed, and ``prepare_meta.json`` is written last. An
interrupted run therefore leaves no ``prepare_meta.json``; a record cut short by the
interruption is ignored, and running the same command again only processes the studies
without a complete record.

Normalisation: every slice is min-max normalised on its own to [0, 1] and stored as uint8,
for ROIs and localizer channels alike.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import secrets
import shutil
import struct
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image
from tqdm import tqdm

from lumbarssl import __version__
from lumbarssl.data._config import known_fields
from lumbarssl.data.cache import (
    INDEX_COLUMNS,
    INDEX_CSV,
    LOCALIZER_NPY,
    META_JSON,
    MULTISLICE_MASK_NPY,
    MULTISLICE_NPY,
    PARTIAL_DIR,
    ROIS_DIR,
    ROIS_NPY,
    SKIPPED_COLUMNS,
    SKIPPED_CSV,
    DiscTable,
    PreparedCache,
    _roi_stats,
    _stats_from_histogram,
)
from lumbarssl.data.constants import (
    COORDINATES_CSV,
    IMAGES_DIR,
    LEVEL_SLUGS,
    SERIES_CSV,
    TRAIN_CSV,
)
from lumbarssl.data.dicom import (
    DicomReadError,
    LazySeries,
    MissingDecoderError,
    SeriesGeometryError,
    open_series,
)
from lumbarssl.data.index import DiscRecord, read_index
from lumbarssl.data.roi import (
    LOCALIZER_SIZE,
    ROI_SIZE,
    extract_roi,
    intensity_range,
    is_inside,
    localizer_channel,
)
from lumbarssl.data.skips import OnError, RSNADataError, Skip, SkipReason
from lumbarssl.errors import DataError, OutputExistsError

__all__ = ["PrepareConfig", "PrepareResult", "format_summary", "prepare_cache", "prepare_in_memory"]

#: Bumped when the layout of the prepared files changes.
CACHE_FORMAT_VERSION = 1
#: Extension of the per-process logs of finished studies in ``OUT_DIR/.partial/``.
_LOG_SUFFIX = ".log"
#: Marks both ends of a record of a finished study in a log.
_MAGIC = b"LSS1"
#: Record header: magic, study id, payload length.
_RECORD = struct.Struct("<4sqQ")
#: Highest zlib level of a PNG.
_MAX_PNG_LEVEL = 9


@dataclass(frozen=True)
class PrepareConfig:
    """Settings of ``lumbarssl prepare``; saved in ``prepare_meta.json``.

    Attributes:
        roi_size: Side of the square ROI in pixels (paper Sec. 4.1: 96).
        slices: ROIs per disc in ``rois_multislice.npy``: the annotated slice and its
            ``slices // 2`` spatial neighbours on each side; odd; 1 writes no such file.
        localizer_size: Side of the 2.5D localizer input (paper Sec. 4.5: 256).
        pad_value: Constant padding in normalised units (paper Sec. 3.1: constant padding;
            0 = the slice's darkest value).
        on_error: ``"skip"`` records a bad row or file in ``skipped.csv`` and goes on;
            ``"raise"`` stops at the first one.
        png_compress_level: zlib level of the ROI PNGs, 0-9; lossless at every level. The
            default 0 stores them uncompressed, as large as their rows of ``rois.npy``: MR
            noise leaves deflate little to gain (level 1 saves about a fifth of the size on
            synthetic ROIs) for about 30 % more time per PNG.
    """

    roi_size: int = ROI_SIZE  # Sec. 4.1: 96 x 96 crops
    slices: int = 1
    localizer_size: int = LOCALIZER_SIZE  # Sec. 4.5: 256 x 256 2.5D input
    pad_value: float = 0.0  # Sec. 3.1: constant padding
    on_error: OnError = "skip"
    png_compress_level: int = 0

    def __post_init__(self) -> None:
        if self.roi_size < 1:
            raise ValueError(f"roi_size must be >= 1, got {self.roi_size}")
        if self.slices < 1 or self.slices % 2 == 0:
            raise ValueError(f"slices must be an odd number >= 1, got {self.slices}")
        if self.localizer_size < 1:
            raise ValueError(f"localizer_size must be >= 1, got {self.localizer_size}")
        if not 0.0 <= self.pad_value <= 1.0:
            raise ValueError(f"pad_value must be in [0, 1], got {self.pad_value}")
        if self.on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', got {self.on_error!r}")
        if not 0 <= self.png_compress_level <= _MAX_PNG_LEVEL:
            raise ValueError(
                f"png_compress_level must be in [0, {_MAX_PNG_LEVEL}], "
                f"got {self.png_compress_level}"
            )

    def to_dict(self) -> dict[str, object]:
        """Return the settings as a JSON-compatible dict; :meth:`from_dict` inverts it."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> PrepareConfig:
        """Rebuild settings from :meth:`to_dict`'s output.

        Args:
            data: Field values; missing fields take their defaults.

        Returns:
            The validated settings.

        Raises:
            ValueError: If a key is not a field or a value is invalid.
        """
        return cls(**known_fields(cls, data))

    def to_json(self) -> str:
        """Serialise to a JSON string; :meth:`from_json` inverts it."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> PrepareConfig:
        """Rebuild settings from :meth:`to_json`'s output.

        Args:
            text: The JSON string.

        Returns:
            The validated settings.
        """
        return cls.from_dict(json.loads(text))


@dataclass(frozen=True)
class PrepareResult:
    """What a prepare run produced.

    Attributes:
        out_dir: The output directory.
        n_discs: Rows of ``index.csv``.
        n_labeled: Discs with a grade (the others have label -1).
        n_localizer_images: Rows of ``localizer_images.npy``.
        n_studies: Studies with at least one disc to extract.
        n_resumed: Studies found already done from an interrupted run.
        skip_counts: Rows of ``skipped.csv`` per reason code.
    """

    out_dir: Path
    n_discs: int
    n_labeled: int
    n_localizer_images: int
    n_studies: int
    n_resumed: int
    skip_counts: dict[str, int] = field(default_factory=dict)


def format_summary(result: PrepareResult) -> str:
    """Human-readable summary of a run: counts of discs and of skipped rows per reason.

    Args:
        result: The run's result.

    Returns:
        Several lines of text.
    """
    unlabeled = result.n_discs - result.n_labeled
    lines = [
        f"prepared {result.n_discs} discs ({result.n_labeled} labeled, {unlabeled} unlabeled) "
        f"and {result.n_localizer_images} localizer inputs from {result.n_studies} studies "
        f"into {result.out_dir}"
        + (f" ({result.n_resumed} studies resumed)" if result.n_resumed else ""),
    ]
    total = sum(result.skip_counts.values())
    if total == 0:
        lines.append("skipped nothing")
    else:
        lines.append(f"skipped {total} rows (details in {result.out_dir / SKIPPED_CSV}):")
        width = max(len(reason) for reason in result.skip_counts)
        for reason in SkipReason:
            if reason.value in result.skip_counts:
                lines.append(f"  {reason.value:<{width}}  {result.skip_counts[reason.value]:>6}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- one study


@dataclass
class _StudyOutput:
    rows: list[dict[str, object]] = field(default_factory=list)
    rois: list[np.ndarray] = field(default_factory=list)
    multislice: list[np.ndarray] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    localizer: list[np.ndarray] = field(default_factory=list)
    skips: list[Skip] = field(default_factory=list)


@dataclass
class _SliceProducts:
    """What a study needs from one decoded slice; the slice's pixels are not kept."""

    shape: tuple[int, int]
    crops: dict[tuple[float, float], np.ndarray]  # (x, y) -> uint8 ROI centred there
    channel: np.ndarray | None  # uint8 localizer channel, if some stack uses this slice


def _clamp(index: int, n: int) -> int:
    return min(max(index, 0), n - 1)


def _slice_products(
    series: LazySeries,
    index: int,
    positions: Iterable[tuple[float, float]],
    with_channel: bool,
    config: PrepareConfig,
) -> _SliceProducts | DicomReadError:
    """Decode one slice and cut everything asked of it: ROIs at ``positions``, a channel."""
    header = series.geometry.slices[index]
    try:
        pixels = series.decode(index)
        if pixels.shape != (header.rows, header.columns):
            detail = (
                f"pixel data of shape {pixels.shape}, header says {header.rows, header.columns}"
            )
            raise DicomReadError(header.path, detail)
        try:
            value_range = intensity_range(pixels)
        except ValueError as exc:
            raise DicomReadError(header.path, f"unusable pixel values: {exc}") from exc
    except DicomReadError as exc:
        return exc
    crops = {
        (x, y): extract_roi(
            pixels, x, y, config.roi_size, pad_value=config.pad_value, value_range=value_range
        )
        for x, y in positions
    }
    channel = (
        localizer_channel(pixels, config.localizer_size, value_range=value_range)
        if with_channel
        else None
    )
    return _SliceProducts((header.rows, header.columns), crops, channel)


def _file_skip(disc: DiscRecord, reason: SkipReason, detail: str, file: Path) -> Skip:
    return Skip(
        reason,
        detail,
        str(file),
        None,
        disc.study_id,
        disc.series_id,
        disc.instance_number,
        disc.level,
    )


def _roi_path(disc: DiscRecord) -> str:
    slug = LEVEL_SLUGS[disc.level_id]
    return f"{ROIS_DIR}/{disc.study_id}/{disc.series_id}_{disc.instance_number}_{slug}.png"


def _extract_series(
    series_dir: Path,
    discs: Sequence[DiscRecord],
    config: PrepareConfig,
    out: _StudyOutput,
) -> None:
    """Extract the discs annotated on one series into ``out``.

    Every file's header is read once (:func:`~lumbarssl.data.dicom.open_series`). The slices that
    any disc needs (its own, its ``slices // 2`` neighbours, the localizer's ±1) are then
    decoded one at a time, in spatial order, and each is cut into all the ROIs and the
    localizer channel asked of it before the next is decoded: a series never holds more than
    one slice of pixels.
    """

    def skip(disc: DiscRecord, reason: SkipReason, detail: str, file: Path) -> None:
        record = _file_skip(disc, reason, detail, file)
        if config.on_error == "raise":
            raise RSNADataError.from_skip(record)
        out.skips.append(record)

    if not series_dir.is_dir():
        for disc in discs:
            skip(disc, SkipReason.MISSING_FILE, "series directory does not exist", series_dir)
        return
    try:
        # An unreadable file only matters if a disc is annotated on it (checked below); any
        # other is left out of the spatial order.
        series = open_series(series_dir, on_error="skip")
    except SeriesGeometryError as exc:
        for disc in discs:
            skip(disc, SkipReason.BAD_GEOMETRY, str(exc), series_dir)
        return
    geometry = series.geometry
    n = len(geometry)
    unreadable = {error.path.name: error for error in geometry.unreadable}
    half = config.slices // 2

    # Which slice each disc is on, and what each slice must provide.
    placed: list[tuple[DiscRecord, int]] = []
    positions: dict[int, set[tuple[float, float]]] = {}
    channels: set[int] = set()
    for disc in discs:
        if disc.instance_number not in geometry.instance_to_index:
            path = series_dir / f"{disc.instance_number}.dcm"
            if path.name in unreadable:
                skip(disc, SkipReason.CORRUPT_FILE, unreadable[path.name].reason, path)
            else:
                skip(disc, SkipReason.MISSING_FILE, "no file with this InstanceNumber", path)
            continue
        center = geometry.index_of(disc.instance_number)
        placed.append((disc, center))
        positions.setdefault(center, set())
        header = geometry.slices[center]
        if is_inside((header.rows, header.columns), disc.x, disc.y):
            for offset in range(-half, half + 1):
                positions.setdefault(_clamp(center + offset, n), set()).add((disc.x, disc.y))
            channels.update(_clamp(center + offset, n) for offset in (-1, 0, 1))
    products = {
        index: _slice_products(
            series, index, sorted(positions.get(index, ())), index in channels, config
        )
        for index in sorted(positions.keys() | channels)
    }

    def usable(index: int, center: int) -> tuple[int, _SliceProducts]:
        """The slice at ``index``, or the centre slice in place of an unreadable one."""
        found = products[index]
        if isinstance(found, DicomReadError):
            index, found = center, products[center]
        assert isinstance(found, _SliceProducts)  # the centre was checked first
        return index, found

    localizer_rows: dict[int, int] = {}  # annotated spatial index -> its row in out.localizer
    for disc, center in placed:
        header = geometry.slices[center]
        decoded = products[center]
        if isinstance(decoded, MissingDecoderError):
            skip(disc, SkipReason.UNSUPPORTED_TRANSFER_SYNTAX, decoded.reason, header.path)
            continue
        if isinstance(decoded, DicomReadError):
            skip(disc, SkipReason.CORRUPT_FILE, decoded.reason, header.path)
            continue
        shape = decoded.shape
        if not is_inside(shape, disc.x, disc.y):
            detail = f"(x, y) = ({disc.x}, {disc.y}) is outside the {shape} image"
            skip(disc, SkipReason.OUTSIDE_IMAGE, detail, header.path)
            continue
        position = (disc.x, disc.y)
        out.rois.append(decoded.crops[position])
        if config.slices > 1:
            stack, distinct = [], []
            for offset in range(-half, half + 1):
                index, found = usable(_clamp(center + offset, n), center)
                stack.append(found.crops[position])
                distinct.append(index == center + offset)
            out.multislice.append(np.stack(stack))
            out.masks.append(np.asarray(distinct, dtype=bool))
        if center not in localizer_rows:
            trio = []
            for offset in (-1, 0, 1):
                channel = usable(_clamp(center + offset, n), center)[1].channel
                assert channel is not None  # asked of every slice of a stack in the plan above
                trio.append(channel)
            localizer_rows[center] = len(out.localizer)
            out.localizer.append(np.stack(trio))
        spacing = header.pixel_spacing
        out.rows.append(
            {
                "study_id": disc.study_id,
                "series_id": disc.series_id,
                "instance_number": disc.instance_number,
                "level": disc.level,
                "x": disc.x,
                "y": disc.y,
                "severity": disc.severity,
                "label": disc.label,
                "roi_path": _roi_path(disc),
                "row_spacing_mm": None if spacing is None else spacing[0],
                "col_spacing_mm": None if spacing is None else spacing[1],
                "height": shape[0],
                "width": shape[1],
                "slice_index": center,
                "n_slices": n,
                "localizer_index": localizer_rows[center],
            }
        )


def _extract_study(
    data_dir: Path, study_id: int, discs: Sequence[DiscRecord], config: PrepareConfig
) -> _StudyOutput:
    """Extract every disc of one study; in ``"skip"`` mode an unexpected error skips it."""
    out = _StudyOutput()
    by_series: dict[int, list[DiscRecord]] = {}
    for disc in discs:
        by_series.setdefault(disc.series_id, []).append(disc)
    study_dir = data_dir / IMAGES_DIR / str(study_id)
    try:
        for series_id, series_discs in by_series.items():
            _extract_series(study_dir / str(series_id), series_discs, config, out)
    except (RSNADataError, DicomReadError):
        raise
    except Exception as exc:
        if config.on_error == "raise":
            raise
        detail = f"unexpected {type(exc).__name__} while reading the study: {exc}"
        skips = [_file_skip(d, SkipReason.INTERNAL_ERROR, detail, study_dir) for d in discs]
        return _StudyOutput(skips=skips)
    return out


def _stack(
    arrays: Sequence[np.ndarray], shape: tuple[int, ...], dtype: type[np.generic]
) -> np.ndarray:
    return np.stack(arrays) if arrays else np.empty((0, *shape), dtype=dtype)


def _study_arrays(out: _StudyOutput, config: PrepareConfig) -> dict[str, np.ndarray]:
    roi = (config.roi_size, config.roi_size)
    arrays = {
        ROIS_NPY: _stack(out.rois, roi, np.uint8),
        LOCALIZER_NPY: _stack(
            out.localizer, (3, config.localizer_size, config.localizer_size), np.uint8
        ),
    }
    if config.slices > 1:
        arrays[MULTISLICE_NPY] = _stack(out.multislice, (config.slices, *roi), np.uint8)
        arrays[MULTISLICE_MASK_NPY] = _stack(out.masks, (config.slices,), np.bool_)
    return arrays


# --------------------------------------------------------------------------- files


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


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


@dataclass(frozen=True)
class _StudyTask:
    data_dir: Path
    out_dir: Path
    study_id: int
    discs: tuple[DiscRecord, ...]
    config: PrepareConfig


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
    name = f"{os.getpid()}-{secrets.token_hex(4)}{_LOG_SUFFIX}"
    handle = (out_dir / PARTIAL_DIR / name).open("xb", buffering=0)
    _open_logs[out_dir] = (os.getpid(), handle)
    return handle


def _close_log(out_dir: Path) -> None:
    entry = _open_logs.pop(out_dir, None)
    if entry is not None and entry[0] == os.getpid():
        entry[1].close()


def _append_study(out_dir: Path, study_id: int, out: _StudyOutput, config: PrepareConfig) -> None:
    arrays = _study_arrays(out, config)
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
    while record:  # one write() for a regular file; the loop only guards against short ones
        written = handle.write(record)
        if not written:
            raise OSError(f"{handle.name}: could not append the record of study {study_id}")
        record = record[written:]


@dataclass(frozen=True)
class _Record:
    """Where a finished study's payload lies in a log."""

    log: Path
    offset: int
    length: int


def _scan_log(path: Path) -> dict[int, _Record]:
    """The complete records of one log, by study; reading stops at the first incomplete one."""
    records: dict[int, _Record] = {}
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
            records.setdefault(study, _Record(path, position + _RECORD.size, length))
            position = end + len(_MAGIC)
    return records


def _finished_studies(out_dir: Path) -> dict[int, _Record]:
    """Every study recorded in the logs of ``out_dir`` (the first record if several)."""
    records: dict[int, _Record] = {}
    for log in sorted((out_dir / PARTIAL_DIR).glob(f"*{_LOG_SUFFIX}")):
        for study, record in _scan_log(log).items():
            records.setdefault(study, record)
    return records


@dataclass(frozen=True)
class _Partial:
    """A finished study's rows and skips; its arrays follow in ``record`` at ``offset``."""

    record: _Record
    rows: list[dict[str, object]]
    skips: list[Skip]
    arrays: dict[str, tuple[tuple[int, ...], np.dtype[Any]]]
    offset: int

    @property
    def n_localizer(self) -> int:
        return self.arrays[LOCALIZER_NPY][0][0]


def _read_partial(record: _Record, handle: BinaryIO) -> _Partial:
    handle.seek(record.offset)
    line = handle.readline()
    head = json.loads(line)
    arrays = {
        name: (tuple(int(n) for n in shape), np.dtype(dtype))
        for name, (shape, dtype) in head["arrays"].items()
    }
    skips = [_skip_from_json(s) for s in head["skips"]]
    return _Partial(record, head["rows"], skips, arrays, record.offset + len(line))


def _run_study(task: _StudyTask) -> int:
    """Extract one study, write its PNGs and append it to this process's log; return its rows.

    Only this count goes back to the parent process: the arrays travel through the log,
    which the parent reads once when it assembles the final files.
    """
    out = _extract_study(task.data_dir, task.study_id, task.discs, task.config)
    # PNGs need no temporary names: the study counts as done only once its record is
    # complete, and a resumed run rewrites the PNGs of every study that is not done.
    if out.rows:
        (task.out_dir / ROIS_DIR / str(task.study_id)).mkdir(parents=True, exist_ok=True)
    for row, roi in zip(out.rows, out.rois, strict=True):
        path = task.out_dir / str(row["roi_path"])
        Image.fromarray(roi).save(path, format="PNG", compress_level=task.config.png_compress_level)
    _append_study(task.out_dir, task.study_id, out, task.config)
    return len(out.rows)


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
    _atomic_write_bytes(path, buffer.getvalue().encode())


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


def _group_by_study(discs: Sequence[DiscRecord]) -> dict[int, tuple[DiscRecord, ...]]:
    groups: dict[int, list[DiscRecord]] = {}
    for disc in discs:
        groups.setdefault(disc.study_id, []).append(disc)
    return {study: tuple(group) for study, group in groups.items()}


def _run_pool(tasks: Sequence[_StudyTask], workers: int, bar: tqdm[Any]) -> None:
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures: list[Future[int]] = [pool.submit(_run_study, task) for task in tasks]
        try:
            for future in as_completed(futures):
                future.result()
                bar.update()
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
    records: Mapping[int, _Record],
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
        raise RuntimeError(f"{out_dir / PARTIAL_DIR}: no finished record of studies {missing}")
    handles: dict[Path, BinaryIO] = {}
    with ExitStack() as stack:
        for record in records.values():
            if record.log not in handles:
                handles[record.log] = stack.enter_context(record.log.open("rb"))
        parts = [_read_partial(records[study], handles[records[study].log]) for study in study_ids]
        return _write_outputs(out_dir, parts, handles, index_skips, config, meta, n_resumed)


def _write_outputs(
    out_dir: Path,
    parts: Sequence[_Partial],
    handles: Mapping[Path, BinaryIO],
    index_skips: Sequence[Skip],
    config: PrepareConfig,
    meta: dict[str, object],
    n_resumed: int,
) -> PrepareResult:
    empty = _study_arrays(_StudyOutput(), config)  # names, trailing shapes and dtypes
    shapes = {
        name: (sum(part.arrays[name][0][0] for part in parts), *array.shape[1:])
        for name, array in empty.items()
    }
    if config.slices == 1:
        for stale in (MULTISLICE_NPY, MULTISLICE_MASK_NPY):
            (out_dir / stale).unlink(missing_ok=True)
    histogram = np.zeros(256, dtype=np.int64)
    with ExitStack() as stack:
        targets = {
            name: stack.enter_context((out_dir / f"{name}.tmp").open("wb")) for name in empty
        }
        for name, target in targets.items():
            _npy_header(target, shapes[name], empty[name].dtype)
        for part in parts:
            handle = handles[part.record.log]
            handle.seek(part.offset)
            for name, (shape, dtype) in part.arrays.items():
                expected = (shape[0], *empty[name].shape[1:])
                nbytes = math.prod(shape) * dtype.itemsize
                data = handle.read(nbytes)
                if shape != expected or dtype != empty[name].dtype or len(data) != nbytes:
                    raise DataError(
                        f"{part.record.log}: damaged partial result ({name}); delete "
                        f"{out_dir / PARTIAL_DIR} and run again"
                    )
                targets[name].write(data)
                if name == ROIS_NPY:
                    histogram += np.bincount(np.frombuffer(data, np.uint8), minlength=256)
    for name in empty:
        os.replace(out_dir / f"{name}.tmp", out_dir / name)

    rows_out: list[dict[str, object]] = []
    skips: list[Skip] = list(index_skips)
    localizer_offset = 0
    for part in parts:
        for row in part.rows:
            row["localizer_index"] = int(str(row["localizer_index"])) + localizer_offset
        rows_out.extend(part.rows)
        skips.extend(part.skips)
        localizer_offset += part.n_localizer
    _write_csv(
        out_dir / INDEX_CSV, INDEX_COLUMNS, ([r[c] for c in INDEX_COLUMNS] for r in rows_out)
    )
    _write_csv(out_dir / SKIPPED_CSV, SKIPPED_COLUMNS, (_skip_row(s) for s in skips))

    n_rows = len(rows_out)
    labels = Counter(int(str(r["label"])) for r in rows_out)
    skip_counts = Counter(s.reason.value for s in skips)
    mean, std = _stats_from_histogram(histogram)
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
    _atomic_write_bytes(out_dir / META_JSON, json.dumps(meta, indent=2).encode())
    return _result_from_meta(out_dir, meta, n_resumed=n_resumed)


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
        ValueError: If ``workers`` < 1, or ``out_dir`` holds a completed run of other data or
            settings.
        RSNADataError: If a CSV lacks a column, or on the first bad row or file with
            ``on_error="raise"``; the message names the file (and the CSV line).
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    config = config or PrepareConfig()
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    index = read_index(data_dir, on_error=config.on_error)
    fingerprint = _fingerprint(data_dir, config)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta_path = out_dir / META_JSON
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("fingerprint") == fingerprint:
            return _result_from_meta(out_dir, meta, n_resumed=int(meta["n_studies"]))
        raise OutputExistsError(
            f"{out_dir} already holds a completed prepare of other data or settings "
            f"({META_JSON}); choose an empty OUT_DIR or delete this one"
        )

    partial = out_dir / PARTIAL_DIR
    run_file = partial / "run.json"
    if partial.is_dir() and (
        not run_file.is_file() or json.loads(run_file.read_text()) != fingerprint
    ):
        # Left by a run of other data or settings: its studies cannot be reused.
        shutil.rmtree(partial)
        shutil.rmtree(out_dir / ROIS_DIR, ignore_errors=True)
    partial.mkdir(exist_ok=True)
    if not run_file.is_file():
        _atomic_write_bytes(run_file, json.dumps(fingerprint).encode())

    studies = _group_by_study(index.discs)
    done = _finished_studies(out_dir).keys() & studies.keys()
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
                _close_log(out_dir)
        else:
            _close_log(out_dir)  # nothing of this process may be open while workers fork
            _run_pool(tasks, workers, bar)

    meta = {
        "lumbarssl_version": __version__,
        "format": CACHE_FORMAT_VERSION,
        "data_dir": str(data_dir.resolve()),
        "config": config.to_dict(),
        "fingerprint": fingerprint,
    }
    records = _finished_studies(out_dir)
    result = _assemble(out_dir, list(studies), records, index.skips, config, meta, len(done))
    shutil.rmtree(partial)
    return result


def prepare_in_memory(
    data_dir: str | Path, config: PrepareConfig | None = None
) -> tuple[PreparedCache, tuple[Skip, ...]]:
    """Run the extraction of :func:`prepare_cache` without writing anything.

    Args:
        data_dir: RSNA 2024 layout.
        config: Settings; the paper's defaults when ``None``.

    Returns:
        A cache held in memory (``roi_path`` empty) and the skipped rows.
    """
    config = config or PrepareConfig()
    data_dir = Path(data_dir)
    index = read_index(data_dir, on_error=config.on_error)
    rows: list[dict[str, object]] = []
    skips: list[Skip] = list(index.skips)
    blocks: dict[str, list[np.ndarray]] = {}
    n_localizer = 0
    for study, discs in _group_by_study(index.discs).items():
        out = _extract_study(data_dir, study, discs, config)
        for row in out.rows:
            row["localizer_index"] = int(str(row["localizer_index"])) + n_localizer
            row["roi_path"] = ""
        rows.extend(out.rows)
        skips.extend(out.skips)
        n_localizer += len(out.localizer)
        for name, array in _study_arrays(out, config).items():
            blocks.setdefault(name, []).append(array)
    empty = _study_arrays(_StudyOutput(), config)
    arrays = {name: np.concatenate([*blocks.get(name, []), empty[name]]) for name in empty}
    mean, std = _roi_stats(arrays[ROIS_NPY])
    meta = {"config": config.to_dict(), "roi_stats": {"mean": mean, "std": std}}
    return PreparedCache(DiscTable.from_rows(rows), meta=meta, arrays=arrays), tuple(skips)
