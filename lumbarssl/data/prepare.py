"""``lumbarssl prepare``: an RSNA directory → the ROI cache that training reads.

For every usable disc of :func:`~lumbarssl.data.index.read_index` the annotated slice is
decoded once, the paper's ROI is cut (:func:`~lumbarssl.data.roi.extract_roi`, Sec. 3.1, 4.1)
and saved as a PNG and as a row of ``rois.npy``; optionally ROIs at the same ``(x, y)`` on the
neighbouring slices (``rois_multislice.npy``), and the 2.5D localizer input of each annotated
slice (:func:`~lumbarssl.data.roi.localizer_input`, Sec. 4.5). Training then never decodes
DICOM. The output layout is described in :mod:`lumbarssl.data.cache`.

Work is grouped by study (one task per study, ``workers`` processes); inside a study every
needed DICOM file is decoded at most once, whatever number of discs, neighbours and localizer
stacks use it. Each finished study is saved atomically under ``OUT_DIR/.partial/``; the final
files are written under temporary names and renamed, and ``prepare_meta.json`` is written last.
An interrupted run therefore leaves no ``prepare_meta.json``, and running the same command
again only processes the studies that are not in ``.partial/`` yet.

Normalisation: every slice is min-max normalised on its own to [0, 1] and stored as uint8,
for ROIs and localizer channels alike.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

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
    MissingDecoderError,
    SeriesGeometry,
    SeriesGeometryError,
    read_series_geometry,
    read_slice,
)
from lumbarssl.data.index import DiscRecord, read_index
from lumbarssl.data.roi import (
    LOCALIZER_SIZE,
    ROI_SIZE,
    extract_roi,
    intensity_range,
    is_inside,
    localizer_input,
)
from lumbarssl.data.skips import OnError, RSNADataError, Skip, SkipReason

__all__ = ["PrepareConfig", "PrepareResult", "format_summary", "prepare_cache", "prepare_in_memory"]

#: Bumped when the layout of the prepared files changes.
CACHE_FORMAT_VERSION = 1
#: zlib level of the ROI PNGs: lossless at any level; 1 is several times faster than 6.
_PNG_COMPRESSION = 1


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
    """

    roi_size: int = ROI_SIZE  # Sec. 4.1: 96 x 96 crops
    slices: int = 1
    localizer_size: int = LOCALIZER_SIZE  # Sec. 4.5: 256 x 256 2.5D input
    pad_value: float = 0.0  # Sec. 3.1: constant padding
    on_error: OnError = "skip"

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


@dataclass(frozen=True)
class _Decoded:
    pixels: np.ndarray  # float32 (H, W), rescaled
    value_range: tuple[float, float]  # the slice's min and max, for min-max normalisation


class _SeriesSlices:
    """Decodes each slice of one series at most once, on first use."""

    def __init__(self, geometry: SeriesGeometry) -> None:
        self.geometry = geometry
        self._cache: dict[int, _Decoded | DicomReadError] = {}

    def get(self, index: int) -> _Decoded | DicomReadError:
        if index not in self._cache:
            path = self.geometry.slices[index].path
            try:
                pixels = read_slice(path)
                try:
                    value_range = intensity_range(pixels)
                except ValueError as exc:
                    raise DicomReadError(path, f"unusable pixel values: {exc}") from exc
                self._cache[index] = _Decoded(pixels, value_range)
            except DicomReadError as exc:
                self._cache[index] = exc
        return self._cache[index]

    def neighbour(self, center: int, offset: int) -> tuple[_Decoded, bool]:
        """Slice ``center + offset`` (edges repeat); ``False`` when it is not a distinct slice.

        An unreadable neighbour is replaced by the centre slice (also flagged ``False``).
        """
        index = min(max(center + offset, 0), len(self.geometry) - 1)
        decoded = self.get(index)
        center_decoded = self.get(center)
        assert isinstance(center_decoded, _Decoded)  # callers check the centre first
        if isinstance(decoded, DicomReadError):
            return center_decoded, offset == 0
        return decoded, index == center + offset


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
        geometry = read_series_geometry(series_dir, on_error="skip")
    except SeriesGeometryError as exc:
        for disc in discs:
            skip(disc, SkipReason.BAD_GEOMETRY, str(exc), series_dir)
        return
    unreadable = {error.path.name: error for error in geometry.unreadable}
    slices = _SeriesSlices(geometry)
    localizer_rows: dict[int, int] = {}  # annotated spatial index -> its row in out.localizer
    half = config.slices // 2
    for disc in discs:
        path = series_dir / f"{disc.instance_number}.dcm"
        if disc.instance_number not in geometry.instance_to_index:
            if path.name in unreadable:
                error = unreadable[path.name]
                skip(disc, SkipReason.CORRUPT_FILE, error.reason, path)
            else:
                skip(disc, SkipReason.MISSING_FILE, "no file with this InstanceNumber", path)
            continue
        center = geometry.index_of(disc.instance_number)
        header = geometry.slices[center]
        decoded = slices.get(center)
        if isinstance(decoded, MissingDecoderError):
            skip(disc, SkipReason.UNSUPPORTED_TRANSFER_SYNTAX, decoded.reason, header.path)
            continue
        if isinstance(decoded, DicomReadError):
            skip(disc, SkipReason.CORRUPT_FILE, decoded.reason, header.path)
            continue
        shape = decoded.pixels.shape
        if not is_inside(shape, disc.x, disc.y):
            detail = f"(x, y) = ({disc.x}, {disc.y}) is outside the {shape} image"
            skip(disc, SkipReason.OUTSIDE_IMAGE, detail, header.path)
            continue

        def roi(source: _Decoded, disc: DiscRecord = disc) -> np.ndarray:
            return extract_roi(
                source.pixels,
                disc.x,
                disc.y,
                config.roi_size,
                pad_value=config.pad_value,
                value_range=source.value_range,
            )

        out.rois.append(roi(decoded))
        if config.slices > 1:
            neighbours = [slices.neighbour(center, offset) for offset in range(-half, half + 1)]
            out.multislice.append(np.stack([roi(n) for n, _ in neighbours]))
            out.masks.append(np.asarray([distinct for _, distinct in neighbours], dtype=bool))
        if center not in localizer_rows:
            trio = [slices.neighbour(center, offset)[0].pixels for offset in (-1, 0, 1)]
            localizer_rows[center] = len(out.localizer)
            out.localizer.append(localizer_input(trio, 1, config.localizer_size))
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
                "n_slices": len(geometry),
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


def _partial_path(out_dir: Path, study_id: int) -> Path:
    return out_dir / PARTIAL_DIR / f"{study_id}.npz"


@dataclass(frozen=True)
class _StudyTask:
    data_dir: Path
    out_dir: Path
    study_id: int
    discs: tuple[DiscRecord, ...]
    config: PrepareConfig


def _run_study(task: _StudyTask) -> int:
    """Extract one study, write its PNGs and its partial file atomically; return its rows."""
    out = _extract_study(task.data_dir, task.study_id, task.discs, task.config)
    # PNGs need no temporary names: the study counts as done only once its partial file
    # exists, and a resumed run rewrites the PNGs of every study that is not done.
    if out.rows:
        (task.out_dir / ROIS_DIR / str(task.study_id)).mkdir(parents=True, exist_ok=True)
    for row, roi in zip(out.rows, out.rois, strict=True):
        path = task.out_dir / str(row["roi_path"])
        Image.fromarray(roi).save(path, format="PNG", compress_level=_PNG_COMPRESSION)
    meta = json.dumps({"rows": out.rows, "skips": [_skip_to_json(s) for s in out.skips]})
    arrays = {name.removesuffix(".npy"): a for name, a in _study_arrays(out, task.config).items()}
    target = _partial_path(task.out_dir, task.study_id)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    with tmp.open("wb") as handle:
        # mypy matches **arrays against savez's allow_pickle: bool keyword.
        np.savez(handle, meta=np.asarray(meta), **arrays)  # type: ignore[arg-type]
    os.replace(tmp, target)
    return len(out.rows)


def _read_partial(path: Path) -> tuple[list[dict[str, object]], list[Skip]]:
    with np.load(path) as npz:
        meta = json.loads(str(npz["meta"]))
    return meta["rows"], [_skip_from_json(s) for s in meta["skips"]]


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


def _assemble(
    out_dir: Path,
    study_ids: Sequence[int],
    index_skips: Sequence[Skip],
    config: PrepareConfig,
    meta: dict[str, object],
    n_resumed: int,
) -> PrepareResult:
    """Concatenate the partial files into the final outputs; ``prepare_meta.json`` last."""
    parts = [_read_partial(_partial_path(out_dir, study)) for study in study_ids]
    n_rows = sum(len(rows) for rows, _ in parts)
    per_study = [
        (1 + max(int(str(r["localizer_index"])) for r in rows)) if rows else 0 for rows, _ in parts
    ]
    shapes = {
        ROIS_NPY: (n_rows, config.roi_size, config.roi_size),
        LOCALIZER_NPY: (sum(per_study), 3, config.localizer_size, config.localizer_size),
    }
    if config.slices > 1:
        shapes[MULTISLICE_NPY] = (n_rows, config.slices, config.roi_size, config.roi_size)
        shapes[MULTISLICE_MASK_NPY] = (n_rows, config.slices)
    else:
        for stale in (MULTISLICE_NPY, MULTISLICE_MASK_NPY):
            (out_dir / stale).unlink(missing_ok=True)
    targets = {
        name: np.lib.format.open_memmap(
            out_dir / f"{name}.tmp",
            mode="w+",
            dtype=np.bool_ if name == MULTISLICE_MASK_NPY else np.uint8,
            shape=shape,
        )
        for name, shape in shapes.items()
    }
    rows_out: list[dict[str, object]] = []
    skips: list[Skip] = list(index_skips)
    row_offset = localizer_offset = 0
    for study, (rows, study_skips), n_localizer in zip(study_ids, parts, per_study, strict=True):
        with np.load(_partial_path(out_dir, study)) as npz:
            for name, target in targets.items():
                block = npz[name.removesuffix(".npy")]
                start = localizer_offset if name == LOCALIZER_NPY else row_offset
                target[start : start + len(block)] = block
        for row in rows:
            row["localizer_index"] = int(str(row["localizer_index"])) + localizer_offset
        rows_out.extend(rows)
        skips.extend(study_skips)
        row_offset += len(rows)
        localizer_offset += n_localizer
    # Unmapping publishes the data to the page cache; no msync: like every file here, the
    # cache guards against interrupted processes, not against power loss.
    targets.clear()
    for name in shapes:
        os.replace(out_dir / f"{name}.tmp", out_dir / name)
    _write_csv(
        out_dir / INDEX_CSV, INDEX_COLUMNS, ([r[c] for c in INDEX_COLUMNS] for r in rows_out)
    )
    _write_csv(out_dir / SKIPPED_CSV, SKIPPED_COLUMNS, (_skip_row(s) for s in skips))

    labels = Counter(int(str(r["label"])) for r in rows_out)
    skip_counts = Counter(s.reason.value for s in skips)
    mean, std = _roi_stats(np.load(out_dir / ROIS_NPY, mmap_mode="r"))
    meta |= {
        "n_discs": n_rows,
        "n_labeled": n_rows - labels.get(-1, 0),
        "label_counts": {str(k): labels[k] for k in sorted(labels)},
        "n_localizer_images": localizer_offset,
        "n_studies": len(study_ids),
        "skip_counts": {
            r.value: skip_counts[r.value] for r in SkipReason if r.value in skip_counts
        },
        "roi_stats": {"mean": mean, "std": std},
        "files": sorted([INDEX_CSV, SKIPPED_CSV, ROIS_DIR, *shapes]),
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
        raise ValueError(
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
    done = {study for study in studies if _partial_path(out_dir, study).is_file()}
    tasks = [
        _StudyTask(data_dir, out_dir, study, discs, config)
        for study, discs in studies.items()
        if study not in done
    ]
    with tqdm(
        total=len(studies), initial=len(done), disable=not progress, unit="study", desc="prepare"
    ) as bar:
        if workers == 1 or len(tasks) <= 1:
            for task in tasks:
                _run_study(task)
                bar.update()
        else:
            _run_pool(tasks, workers, bar)

    meta = {
        "lumbarssl_version": __version__,
        "format": CACHE_FORMAT_VERSION,
        "data_dir": str(data_dir.resolve()),
        "config": config.to_dict(),
        "fingerprint": fingerprint,
    }
    result = _assemble(out_dir, list(studies), index.skips, config, meta, len(done))
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
