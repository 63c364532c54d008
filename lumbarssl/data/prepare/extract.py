"""Slice extraction of ``lumbarssl prepare``: one study's DICOM series → its ROIs and rows.

Inside a study, the headers of each needed series are read once to order it (only the few
elements needed, see :func:`~lumbarssl.data.dicom.open_series`), and the needed slices (annotated
ones, their neighbours, the localizer's ±1) are decoded one at a time, each once, and cut into
every ROI and localizer channel asked of it. Nothing here writes a file:
:func:`~lumbarssl.data.prepare.study.prepare_in_memory` returns the result as an in-memory
:class:`~lumbarssl.data.cache.PreparedCache`, and :mod:`lumbarssl.data.prepare.writer` stores it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lumbarssl.data.cache import (
    LOCALIZER_NPY,
    MULTISLICE_MASK_NPY,
    MULTISLICE_NPY,
    ROIS_DIR,
    ROIS_NPY,
)
from lumbarssl.data.constants import LEVEL_SLUGS
from lumbarssl.data.dicom import (
    DicomReadError,
    LazySeries,
    NotRegularFileError,
    PixelSizeMismatchError,
    SeriesGeometryError,
    UnsupportedTransferSyntaxError,
    open_series,
)
from lumbarssl.data.index import DiscRecord
from lumbarssl.data.prepare.config import PrepareConfig
from lumbarssl.data.roi import extract_roi, intensity_range, is_inside, localizer_channel
from lumbarssl.data.skips import RSNADataError, Skip, SkipReason

__all__ = [
    "StudyOutput",
    "extract_series",
    "group_by_study",
    "study_arrays",
]


@dataclass
class StudyOutput:
    """What one study produced: rows of ``index.csv``, their arrays and the skipped rows."""

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


def _read_error_reason(error: DicomReadError) -> SkipReason:
    """The skip reason of a file that could not be read or decoded."""
    if isinstance(error, NotRegularFileError):
        return SkipReason.NOT_REGULAR_FILE
    if isinstance(error, PixelSizeMismatchError):
        return SkipReason.PIXEL_SIZE_MISMATCH
    if isinstance(error, UnsupportedTransferSyntaxError):
        return SkipReason.UNSUPPORTED_TRANSFER_SYNTAX
    if isinstance(error.__cause__, FileNotFoundError):
        return SkipReason.MISSING_FILE
    return SkipReason.CORRUPT_FILE


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


def extract_series(
    series_dir: Path,
    discs: Sequence[DiscRecord],
    config: PrepareConfig,
    out: StudyOutput,
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
                error = unreadable[path.name]
                skip(disc, _read_error_reason(error), error.reason, path)
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
        if isinstance(decoded, DicomReadError):
            skip(disc, _read_error_reason(decoded), decoded.reason, header.path)
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


def _stack(
    arrays: Sequence[np.ndarray], shape: tuple[int, ...], dtype: type[np.generic]
) -> np.ndarray:
    return np.stack(arrays) if arrays else np.empty((0, *shape), dtype=dtype)


def study_arrays(out: StudyOutput, config: PrepareConfig) -> dict[str, np.ndarray]:
    """The arrays of ``out`` by cache file name (an empty study gives empty arrays)."""
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


def group_by_study(discs: Sequence[DiscRecord]) -> dict[int, tuple[DiscRecord, ...]]:
    """The discs of each study, in the order of first appearance."""
    groups: dict[int, list[DiscRecord]] = {}
    for disc in discs:
        groups.setdefault(disc.study_id, []).append(disc)
    return {study: tuple(group) for study, group in groups.items()}
