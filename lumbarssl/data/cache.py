"""The prepared ROI cache: file names, the ``index.csv`` table and lazy memory-mapped arrays.

``lumbarssl prepare`` (:func:`lumbarssl.data.prepare.prepare_cache`) writes the files below into its
output directory; :class:`PreparedCache` opens them for the datasets. Row ``i`` of
``index.csv`` describes row ``i`` of every per-disc array. The directory is complete only once
``prepare_meta.json`` exists; :meth:`PreparedCache.open` refuses anything else.

* ``index.csv``: one row per usable disc (:data:`INDEX_COLUMNS`);
* ``rois.npy``: uint8 (N, H, W) ROIs, memory-mappable, and the same ROIs as 8-bit PNG files
  ``rois/<study>/<series>_<instance>_<level>.png``;
* ``rois_multislice.npy``: uint8 (N, S, H, W), with ``--slices S`` > 1, and
  ``rois_multislice_mask.npy``: bool (N, S), ``False`` where an edge slice repeats;
* ``localizer_images.npy``: uint8 (U, 3, 256, 256) localizer inputs;
* ``skipped.csv``: every row not used (:data:`SKIPPED_COLUMNS`);
* ``prepare_meta.json``: settings, input fingerprint, counts; written last.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lumbarssl.data.constants import CONDITIONS, LEVELS
from lumbarssl.errors import DataError, InputError, MissingFileError

__all__ = [
    "CONDITION_INDEX_COLUMNS",
    "INDEX_COLUMNS",
    "INDEX_CSV",
    "LOCALIZER_NPY",
    "META_JSON",
    "MULTISLICE_MASK_NPY",
    "MULTISLICE_NPY",
    "PARTIAL_DIR",
    "ROIS_DIR",
    "ROIS_NPY",
    "SKIPPED_COLUMNS",
    "SKIPPED_CSV",
    "DiscTable",
    "IncompleteCacheError",
    "PreparedCache",
    "check_roi_stats",
    "compute_roi_stats",
    "read_disc_table",
    "stats_from_histogram",
]

INDEX_CSV = "index.csv"
ROIS_NPY = "rois.npy"
ROIS_DIR = "rois"
MULTISLICE_NPY = "rois_multislice.npy"
MULTISLICE_MASK_NPY = "rois_multislice_mask.npy"
LOCALIZER_NPY = "localizer_images.npy"
SKIPPED_CSV = "skipped.csv"
META_JSON = "prepare_meta.json"
PARTIAL_DIR = ".partial"

#: Columns of ``index.csv``. ``x``/``y`` are in pixels of the annotated slice, whose size is
#: ``height`` x ``width`` and whose PixelSpacing is ``row_spacing_mm`` (between rows) and
#: ``col_spacing_mm`` (between columns; empty when absent). ``slice_index`` is the annotated
#: slice's place in spatial order among ``n_slices``. ``localizer_index`` is the row of
#: ``localizer_images.npy`` holding its 2.5D localizer input.
INDEX_COLUMNS: tuple[str, ...] = (
    "study_id",
    "series_id",
    "instance_number",
    "level",
    "x",
    "y",
    "severity",
    "label",
    "roi_path",
    "row_spacing_mm",
    "col_spacing_mm",
    "height",
    "width",
    "slice_index",
    "n_slices",
    "localizer_index",
)
#: Columns of ``index.csv`` of a ``PrepareConfig(conditions="all")`` run: the same plus the
#: ``condition`` of each row, as in the coordinates CSV. A spinal-only run (the default) keeps
#: :data:`INDEX_COLUMNS` unchanged.
CONDITION_INDEX_COLUMNS: tuple[str, ...] = (*INDEX_COLUMNS, "condition")
#: Columns of ``skipped.csv``: the disc (empty fields where unknown), the reason code, the
#: file concerned, its CSV line (empty for image files) and a human-readable detail.
SKIPPED_COLUMNS: tuple[str, ...] = (
    "study_id",
    "series_id",
    "instance_number",
    "level",
    "reason",
    "file",
    "line",
    "detail",
)


class IncompleteCacheError(InputError, FileNotFoundError):
    """A directory that is not a completed ``lumbarssl prepare`` output."""


@dataclass(frozen=True)
class DiscTable:
    """The columns of ``index.csv`` as arrays (row ``i`` ↔ cache row ``i``).

    Attributes:
        study_id: int64 (N,).
        series_id: int64 (N,).
        instance_number: int64 (N,).
        level_id: int64 (N,), index into :data:`~lumbarssl.data.constants.LEVELS`.
        x: float64 (N,), column of the disc centre in original pixels.
        y: float64 (N,), row of the disc centre in original pixels.
        label: int64 (N,), 0/1/2, or -1 for an unlabeled disc.
        row_spacing_mm: float64 (N,), NaN when unknown.
        col_spacing_mm: float64 (N,), NaN when unknown.
        height: int64 (N,), rows of the annotated slice.
        width: int64 (N,), columns of the annotated slice.
        slice_index: int64 (N,), spatial index of the annotated slice.
        n_slices: int64 (N,), slices in its series.
        localizer_index: int64 (N,), row of ``localizer_images.npy``.
        severity: Severity text per disc (``""`` when not graded).
        roi_path: PNG path relative to the cache directory (``""`` for in-memory caches).
        condition: Condition of each row (``PrepareConfig(conditions="all")`` caches); empty
            for a spinal-only cache, whose rows are all spinal canal stenosis.
    """

    study_id: np.ndarray
    series_id: np.ndarray
    instance_number: np.ndarray
    level_id: np.ndarray
    x: np.ndarray
    y: np.ndarray
    label: np.ndarray
    row_spacing_mm: np.ndarray
    col_spacing_mm: np.ndarray
    height: np.ndarray
    width: np.ndarray
    slice_index: np.ndarray
    n_slices: np.ndarray
    localizer_index: np.ndarray
    severity: tuple[str, ...]
    roi_path: tuple[str, ...]
    condition: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.label)

    @property
    def has_conditions(self) -> bool:
        """Whether the rows carry a condition (a ``conditions="all"`` cache)."""
        return bool(self.condition)

    @property
    def condition_id(self) -> np.ndarray:
        """Index of each row's condition into ``CONDITIONS``, int64 (N,).

        All 0 (spinal canal stenosis) for a spinal-only cache.
        """
        if not self.condition:
            return np.zeros(len(self.label), dtype=np.int64)
        return np.asarray([CONDITIONS.index(c) for c in self.condition], dtype=np.int64)

    @classmethod
    def from_rows(cls, rows: Sequence[Mapping[str, object]]) -> DiscTable:
        """Build the table from dict rows keyed by :data:`INDEX_COLUMNS`.

        Args:
            rows: One mapping per disc; numbers may be given as numbers or strings, an
                unknown spacing as ``None`` or ``""``.

        Returns:
            The table.
        """

        def column(name: str, dtype: type[np.generic]) -> np.ndarray:
            try:
                values = [_number(row[name], dtype) for row in rows]
                return np.asarray(values, dtype=dtype).reshape(len(rows))
            except (ValueError, OverflowError) as exc:  # e.g. an id beyond int64
                raise DataError(f"column {name}: {exc}") from exc

        return cls(
            study_id=column("study_id", np.int64),
            series_id=column("series_id", np.int64),
            instance_number=column("instance_number", np.int64),
            level_id=np.asarray([LEVELS.index(str(r["level"])) for r in rows], dtype=np.int64),
            x=column("x", np.float64),
            y=column("y", np.float64),
            label=column("label", np.int64),
            row_spacing_mm=column("row_spacing_mm", np.float64),
            col_spacing_mm=column("col_spacing_mm", np.float64),
            height=column("height", np.int64),
            width=column("width", np.int64),
            slice_index=column("slice_index", np.int64),
            n_slices=column("n_slices", np.int64),
            localizer_index=column("localizer_index", np.int64),
            severity=tuple(str(r["severity"]) for r in rows),
            roi_path=tuple(str(r["roi_path"]) for r in rows),
            condition=tuple(str(r["condition"]) for r in rows)
            if rows and "condition" in rows[0]
            else (),
        )


def _number(value: object, dtype: type[np.generic]) -> float | int:
    if value is None or value == "":
        if dtype is np.float64:
            return math.nan
        raise DataError("missing integer value")
    if dtype is np.float64:
        return float(str(value))
    return int(str(value))


def read_disc_table(path: str | Path) -> DiscTable:
    """Read an ``index.csv`` written by ``lumbarssl prepare``.

    Args:
        path: The CSV file.

    Returns:
        Its columns as arrays.

    Raises:
        ValueError: If a column is missing or a value does not parse; the message names the
            file and the line.
    """
    path = Path(path)
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in INDEX_COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise DataError(f"{path}:1: missing column(s) {', '.join(missing)}")
        rows = list(reader)
    try:
        table = DiscTable.from_rows(rows)
    except (ValueError, OverflowError) as exc:
        # Find the offending line for the message (header is line 1).
        for line, row in enumerate(rows, start=2):
            try:
                DiscTable.from_rows([row])
            except (ValueError, OverflowError) as row_exc:
                raise DataError(f"{path}:{line}: {row_exc}") from exc
        raise
    _check_disc_table(path, table)
    return table


#: What every row of index.csv satisfies (prepare writes nothing else); checked on reading,
#: so that a damaged file fails here, naming its line, not later (e.g. a division by width).
_TABLE_RULES: tuple[tuple[str, str, Callable[[DiscTable], np.ndarray]], ...] = (
    ("height", "height must be >= 1", lambda t: t.height >= 1),
    ("width", "width must be >= 1", lambda t: t.width >= 1),
    ("n_slices", "n_slices must be >= 1", lambda t: t.n_slices >= 1),
    (
        "slice_index",
        "slice_index must be in [0, n_slices)",
        lambda t: (t.slice_index >= 0) & (t.slice_index < t.n_slices),
    ),
    ("localizer_index", "localizer_index must be >= 0", lambda t: t.localizer_index >= 0),
    ("label", "label must be -1, 0, 1 or 2", lambda t: (t.label >= -1) & (t.label <= 2)),
    ("x", "x must be finite", lambda t: np.isfinite(t.x)),
    ("y", "y must be finite", lambda t: np.isfinite(t.y)),
)


def _check_disc_table(path: Path, table: DiscTable) -> None:
    for column, rule, holds in _TABLE_RULES:
        bad = np.flatnonzero(~holds(table))
        if bad.size:
            row = int(bad[0])
            value = getattr(table, column)[row]
            raise DataError(
                f"{path}:{row + 2}: {rule}, got {column}={value}; the file is damaged: "
                "run lumbarssl prepare again into an empty directory"
            )


class PreparedCache:
    """ROIs and localizer inputs of a prepare run, memory-mapped lazily.

    Arrays are opened with ``np.load(mmap_mode="r")`` on first access in each process, so a
    cache can be handed to ``DataLoader`` worker processes before anything is opened.

    Args:
        table: The per-disc columns.
        root: The prepare output directory, or ``None`` for arrays held in memory.
        meta: The content of ``prepare_meta.json``.
        arrays: In-memory arrays by file name (:data:`ROIS_NPY` ...), for caches built
            without a directory.
    """

    def __init__(
        self,
        table: DiscTable,
        *,
        root: Path | None = None,
        meta: Mapping[str, object] | None = None,
        arrays: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        self.table = table
        self.root = root
        self.meta: dict[str, object] = dict(meta or {})
        self._arrays: dict[str, np.ndarray] = dict(arrays or {})

    @classmethod
    def open(cls, out_dir: str | Path) -> PreparedCache:
        """Open a completed prepare output directory.

        Args:
            out_dir: The ``OUT_DIR`` of ``lumbarssl prepare``.

        Returns:
            The cache (arrays not opened yet).

        Raises:
            IncompleteCacheError: If ``prepare_meta.json`` is absent, i.e. the run did not
                finish.
            DataError: If ``prepare_meta.json`` is not a JSON object or its intensity
                statistics ``roi_stats`` are impossible for ROIs scaled to [0, 1] (a mean
                outside [0, 1], a standard deviation not in (1e-6, 0.5], NaN); the message
                names the file and the key.
        """
        root = Path(out_dir)
        meta_path = root / META_JSON
        if not meta_path.is_file():
            raise IncompleteCacheError(
                f"{root}: not a completed prepare output (no {META_JSON}); "
                "run `lumbarssl prepare DATA_DIR OUT_DIR` (again) to finish it"
            )
        remedy = f"re-run `lumbarssl prepare DATA_DIR {root}` to rebuild the cache"
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"{meta_path}: not readable JSON ({exc}); {remedy}") from exc
        if not isinstance(meta, dict):
            raise DataError(f"{meta_path}: expected a JSON object; {remedy}")
        check_roi_stats(meta.get("roi_stats"), f"{meta_path}", remedy)
        return cls(read_disc_table(root / INDEX_CSV), root=root, meta=meta)

    def __len__(self) -> int:
        return len(self.table)

    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        if self.root is not None:
            state["_arrays"] = {}  # memmaps are reopened in the receiving process
        return state

    def _array(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            if self.root is None or not (self.root / name).is_file():
                raise MissingFileError(
                    f"{self.root / name if self.root else name}: not in this cache"
                    + (" (prepare with --slices S > 1)" if name == MULTISLICE_NPY else "")
                )
            self._arrays[name] = np.load(self.root / name, mmap_mode="r")
        return self._arrays[name]

    @property
    def rois(self) -> np.ndarray:
        """uint8 ROIs of shape (N, H, W)."""
        return self._array(ROIS_NPY)

    @property
    def multislice(self) -> np.ndarray:
        """uint8 neighbouring-slice ROIs of shape (N, S, H, W)."""
        return self._array(MULTISLICE_NPY)

    @property
    def multislice_mask(self) -> np.ndarray:
        """Mask of shape (N, S): ``False`` where an edge slice is repeated."""
        return self._array(MULTISLICE_MASK_NPY)

    @property
    def localizer_images(self) -> np.ndarray:
        """uint8 localizer inputs of shape (U, 3, 256, 256)."""
        return self._array(LOCALIZER_NPY)

    @property
    def has_multislice(self) -> bool:
        """Whether neighbouring-slice ROIs were prepared."""
        return MULTISLICE_NPY in self._arrays or (
            self.root is not None and (self.root / MULTISLICE_NPY).is_file()
        )

    def roi_stats(self) -> tuple[float, float]:
        """Mean and standard deviation of all ROI pixels scaled to [0, 1].

        Read from ``prepare_meta.json`` when present, otherwise computed from the ROIs.

        Returns:
            ``(mean, std)``.
        """
        stats = self.meta.get("roi_stats")
        if isinstance(stats, dict):
            return float(stats["mean"]), float(stats["std"])
        return compute_roi_stats(self.rois)


#: Smallest standard deviation :func:`stats_from_histogram` reports (below it: 1, constant ROIs).
_MIN_STD = 1e-6


def check_roi_stats(stats: object, source: str, remedy: str) -> None:
    """Raise unless ``stats`` are possible intensity statistics of ROIs scaled to [0, 1].

    ``None`` (no statistics stored: they are computed from the ROIs) passes.

    Args:
        stats: The ``roi_stats`` entry of ``prepare_meta.json``: ``{"mean": m, "std": s}``.
        source: The file, for the message.
        remedy: What to do, for the message.

    Raises:
        DataError: Naming the file, the key and the value.
    """
    if stats is None:
        return
    if not isinstance(stats, Mapping):
        raise DataError(f"{source}: roi_stats is {stats!r}, not an object; {remedy}")
    shown_std = f"({_MIN_STD:g}, 0.5] (or 1: no or constant ROIs)"
    for key, shown in (("mean", "[0, 1]"), ("std", shown_std)):
        value = stats.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            ok = False
        elif key == "mean":
            ok = 0.0 <= value <= 1.0  # False for NaN
        else:
            # 1.0 is what stats_from_histogram reports for an empty or constant cache.
            ok = _MIN_STD < value <= 0.5 or value == 1.0
        if not ok:
            raise DataError(
                f"{source}: roi_stats.{key} is {value!r}, outside {shown} for pixels scaled "
                f"to [0, 1]; {remedy}"
            )


#: Rows of ROIs counted at a time by :func:`_roi_histogram`.
_STATS_BLOCK = 256


def _roi_histogram(rois: np.ndarray) -> np.ndarray:
    """Counts of each uint8 value 0..255 over all pixels of ``rois``, shape (256,), int64.

    Exact and independent of how the ROIs are split into blocks, so statistics of a cache
    assembled study by study equal those computed over the whole array.
    """
    counts = np.zeros(256, dtype=np.int64)
    for start in range(0, len(rois), _STATS_BLOCK):
        block = np.asarray(rois[start : start + _STATS_BLOCK], dtype=np.uint8)
        counts += np.bincount(block.reshape(-1), minlength=256)
    return counts


def stats_from_histogram(counts: np.ndarray) -> tuple[float, float]:
    """Mean and std of ``value / 255`` from a histogram of uint8 values (exact sums)."""
    values = range(256)
    count = int(counts.sum())
    if count == 0:
        return 0.0, 1.0
    total = sum(int(c) * v for c, v in zip(counts, values, strict=True))
    total_sq = sum(int(c) * v * v for c, v in zip(counts, values, strict=True))
    mean = total / (count * 255)
    # count * total_sq - total**2 is an exact non-negative integer: no cancellation error.
    std = math.sqrt(count * total_sq - total * total) / (count * 255)
    return mean, std if std > 1e-6 else 1.0  # constant ROIs: normalise by 1, not 0


def compute_roi_stats(rois: np.ndarray) -> tuple[float, float]:
    """Mean and std of ``rois / 255`` over all pixels, from exact integer sums."""
    return stats_from_histogram(_roi_histogram(rois))
