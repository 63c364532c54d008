"""``PrepareConfig(conditions="all")``: one ROI per (condition, side, level) coordinate.

The spinal canal path (:func:`~lumbarssl.data.index.read_index`,
:func:`~lumbarssl.data.prepare.extract.extract_study`) is used as it is for the spinal canal
rows; this module adds the other four conditions:

* :func:`read_condition_index` reads their coordinate rows and grades. Neural foraminal
  narrowing must lie on a ``Sagittal T1`` series and subarticular stenosis on an ``Axial T2``
  one (else ``wrong_sequence``); a second coordinate for the same (study, condition, level) is
  a ``duplicate_disc``; the first in file order is kept.
* :func:`extract_condition_study` cuts the ROI of each row on the series and instance the row
  names, with the same ROI code as the canal (:func:`~lumbarssl.data.prepare.extract.
  extract_series`), one call per (series, condition) so that left and right ROIs on one axial
  slice keep their own rows and PNGs.
* **Axial level from geometry.** An axial row's level is checked against the study's sagittal
  coordinates: every sagittal coordinate (spinal canal on Sagittal T2, foramina on Sagittal T1)
  is mapped to patient space with its slice's ImagePositionPatient, ImageOrientationPatient
  and PixelSpacing, the levels' points are averaged, and the axial slice's plane is assigned
  the level whose point is nearest to it. The row is skipped as ``ambiguous_axial_level`` when
  the study has no sagittal reference, or when the nearest and second-nearest levels are
  within :data:`AMBIGUITY_FRACTION` of their spacing of being equally near; as
  ``axial_level_mismatch`` when the geometry names another level than the CSV.

Rows of ``index.csv`` then carry a ``condition`` column (see :mod:`lumbarssl.data.cache`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lumbarssl.data.cache import ROIS_DIR
from lumbarssl.data.constants import (
    AXIAL_T2,
    CONDITION_SEQUENCE,
    CONDITION_SLUGS,
    CONDITIONS,
    COORDINATES_CSV,
    IMAGES_DIR,
    LEVEL_SLUGS,
    LEVELS,
    SERIES_CSV,
    SEVERITY_TO_LABEL,
    SPINAL_CANAL,
    TRAIN_CSV,
)
from lumbarssl.data.dicom import DicomReadError, SeriesGeometryError, open_series
from lumbarssl.data.index import (
    DiscIndex,
    DiscRecord,
    _graded_record,
    _missing_coordinate,
    _parse_float,
    _parse_int,
    _rows,
    read_index,
)
from lumbarssl.data.prepare.config import PrepareConfig
from lumbarssl.data.prepare.extract import StudyOutput, extract_series
from lumbarssl.data.skips import OnError, RSNADataError, Skip, SkipReason

__all__ = [
    "AMBIGUITY_FRACTION",
    "CONDITION_SEQUENCE",
    "ConditionRecord",
    "assign_axial_level",
    "extract_condition_study",
    "patient_point",
    "read_condition_index",
]

#: An axial slice is ambiguous when its distances to the nearest and second-nearest levels'
#: points differ by less than this fraction of the distance between those two points.
AMBIGUITY_FRACTION = 0.25


@dataclass(frozen=True)
class ConditionRecord(DiscRecord):
    """A :class:`~lumbarssl.data.index.DiscRecord` of any of the five conditions.

    Attributes:
        condition: As in the coordinates CSV (``"Spinal Canal Stenosis"`` ...).
    """

    condition: str = SPINAL_CANAL


def read_condition_index(data_dir: str | Path, *, on_error: OnError = "skip") -> DiscIndex:
    """The rows of all five conditions: the spinal canal as :func:`read_index`, then the rest.

    Args:
        data_dir: RSNA 2024 layout.
        on_error: ``"skip"`` records bad rows; ``"raise"`` raises on the first error
            (exclusions are always recorded).

    Returns:
        :class:`ConditionRecord` rows (spinal canal first, in file order) and the skips.
    """
    base = read_index(data_dir, on_error=on_error)
    records: list[DiscRecord] = [_as_condition(d) for d in base.discs]
    skips = list(base.skips)

    def record(skip: Skip) -> None:
        if on_error == "raise" and skip.reason.is_error:
            raise RSNADataError.from_skip(skip)
        skips.append(skip)

    root = Path(data_dir)
    grades, grade_lines = _read_grades(root / TRAIN_CSV)
    descriptions = _read_descriptions(root / SERIES_CSV)
    path = root / COORDINATES_CSV
    seen: dict[tuple[int, str, str], int] = {}
    annotated: set[tuple[int, str, str]] = set()  # with any parsable coordinate row
    for line, row in _rows(
        path, ("study_id", "series_id", "instance_number", "condition"), _already_recorded
    ):
        # Malformed rows, unknown conditions and levels were recorded by read_index already.
        if row is None:
            continue
        condition, level = row["condition"].strip(), row["level"].strip()
        if condition not in CONDITIONS or condition == SPINAL_CANAL or level not in LEVELS:
            if condition in CONDITIONS and condition != SPINAL_CANAL:
                detail = f"level {level!r} is not one of {', '.join(LEVELS)}"
                record(Skip(SkipReason.UNKNOWN_LEVEL, detail, str(path), line))
            continue
        study, series, instance = (
            _parse_int(row[c]) for c in ("study_id", "series_id", "instance_number")
        )
        x, y = _parse_float(row["x"]), _parse_float(row["y"])
        if study is None or series is None or instance is None or x is None or y is None:
            detail = "not a finite number in study_id, series_id, instance_number, x or y"
            record(Skip(SkipReason.UNPARSABLE_NUMBER, detail, str(path), line, study, series))
            continue
        annotated.add((study, condition, level))
        description = descriptions.get((study, series))
        if description is None:
            detail = f"series {series} is not in {SERIES_CSV}"
            skip = Skip(SkipReason.SERIES_NOT_LISTED, detail, str(path), line, study, series)
            record(skip)
            continue
        wanted = CONDITION_SEQUENCE[condition]
        if description != wanted:
            detail = f"{condition} on series {series} ({description!r}), not on {wanted!r}"
            record(
                Skip(SkipReason.WRONG_SEQUENCE, detail, str(path), line, study, series, instance)
            )
            continue
        if (study, condition, level) in seen:
            detail = (
                f"{condition} {level} already annotated at line {seen[study, condition, level]}"
            )
            reason = SkipReason.DUPLICATE_DISC
            record(Skip(reason, detail, str(path), line, study, series, instance, level))
            continue
        seen[study, condition, level] = line
        severity = grades.get((study, condition, level), "")
        disc = _graded_record(ConditionRecord, study, series, instance, level, x, y, severity)
        records.append(dataclasses.replace(disc, condition=condition))
    for (study, condition, level), severity in grades.items():
        if (study, condition, level) not in annotated:
            what = f"{condition} {level}"
            train_csv = str(root / TRAIN_CSV)
            record(_missing_coordinate(what, study, severity, train_csv, grade_lines[study], level))
    return DiscIndex(discs=tuple(records), skips=tuple(skips))


def _already_recorded(skip: Skip) -> None:
    """Drop a malformed row (``read_index`` reads the file first and records it)."""


def _read_grades(path: Path) -> tuple[dict[tuple[int, str, str], str], dict[int, int]]:
    """Severity text of the four non-spinal conditions by (study, condition, level).

    Returns:
        The grades (an unknown severity leaves the target unlabeled) and each study's line.
    """
    grades: dict[tuple[int, str, str], str] = {}
    lines: dict[int, int] = {}
    for line, row in _rows(path, ("study_id",), _already_recorded):
        if row is None:
            continue
        study = _parse_int(row["study_id"])
        if study is None or study in lines:
            continue
        lines[study] = line
        for condition, slug in zip(CONDITIONS[1:], CONDITION_SLUGS[1:], strict=True):
            for level, level_slug in zip(LEVELS, LEVEL_SLUGS, strict=True):
                text = (row.get(f"{slug}_{level_slug}") or "").strip()
                if text in SEVERITY_TO_LABEL:
                    grades[study, condition, level] = text
    return grades, lines


def _read_descriptions(path: Path) -> dict[tuple[int, int], str]:
    out: dict[tuple[int, int], str] = {}
    for _, row in _rows(path, ("study_id", "series_id", "series_description"), _already_recorded):
        if row is None:
            continue
        study, series = _parse_int(row["study_id"]), _parse_int(row["series_id"])
        if study is not None and series is not None:
            out.setdefault((study, series), row["series_description"].strip())
    return out


# --------------------------------------------------------------------------- geometry


def patient_point(
    position: Sequence[float],
    orientation: Sequence[float],
    spacing: tuple[float, float],
    x: float,
    y: float,
) -> np.ndarray:
    """Patient-space point (mm) of pixel column ``x``, row ``y`` of a slice.

    Args:
        position: The slice's ImagePositionPatient (mm), the centre of its first pixel.
        orientation: Its ImageOrientationPatient (row then column direction cosines).
        spacing: Its PixelSpacing ``(row spacing, column spacing)`` in mm.
        x: Column (pixels, may be fractional).
        y: Row (pixels).

    Returns:
        float64 (3,) in the patient's coordinates (mm).
    """
    row_dir = np.asarray(orientation[:3], dtype=np.float64)
    col_dir = np.asarray(orientation[3:], dtype=np.float64)
    point: np.ndarray = (
        np.asarray(position, dtype=np.float64) + x * spacing[1] * row_dir + y * spacing[0] * col_dir
    )
    return point


def assign_axial_level(
    references: dict[str, np.ndarray],
    position: Sequence[float],
    orientation: Sequence[float],
) -> tuple[str | None, str]:
    """The level an axial slice's plane cuts, from the levels' patient-space points.

    Args:
        references: Level -> a patient-space point (mm) of that level (e.g. the mean of its
            sagittal coordinates).
        position: The axial slice's ImagePositionPatient.
        orientation: Its ImageOrientationPatient.

    Returns:
        ``(level, detail)``; ``level`` is ``None`` when it is ambiguous (``detail`` says why).
    """
    if not references:
        return None, "the study has no sagittal coordinate to place the levels"
    normal = np.cross(np.asarray(orientation[:3]), np.asarray(orientation[3:]))
    normal = normal / max(float(np.linalg.norm(normal)), 1e-12)
    origin = np.asarray(position, dtype=np.float64)
    distances = {
        level: abs(float(np.dot(point - origin, normal))) for level, point in references.items()
    }
    ranked = sorted(distances, key=lambda lv: (distances[lv], LEVELS.index(lv)))
    first = ranked[0]
    if len(ranked) > 1:
        second = ranked[1]
        gap = abs(float(np.dot(references[first] - references[second], normal)))
        if distances[second] - distances[first] < AMBIGUITY_FRACTION * gap:
            detail = (
                f"the slice plane lies {distances[first]:.1f} mm from {first} and "
                f"{distances[second]:.1f} mm from {second}"
            )
            return None, detail
    return first, f"the slice plane lies {distances[first]:.1f} mm from {first}"


def _level_references(study_dir: Path, discs: Sequence[ConditionRecord]) -> dict[str, np.ndarray]:
    """Mean patient-space point of each level's sagittal coordinates (unreadable ones left out)."""
    points: dict[str, list[np.ndarray]] = {}
    by_series: dict[int, list[ConditionRecord]] = {}
    for d in discs:
        if CONDITION_SEQUENCE[d.condition] != AXIAL_T2:
            by_series.setdefault(d.series_id, []).append(d)
    for series_id, records in by_series.items():
        try:
            geometry = open_series(study_dir / str(series_id), on_error="skip").geometry
        except (SeriesGeometryError, DicomReadError, OSError):
            continue
        for d in records:
            if d.instance_number not in geometry.instance_to_index:
                continue
            header = geometry.slices[geometry.index_of(d.instance_number)]
            if header.position is None or header.orientation is None:
                continue
            spacing = header.pixel_spacing or (1.0, 1.0)
            points.setdefault(d.level, []).append(
                patient_point(header.position, header.orientation, spacing, d.x, d.y)
            )
    return {level: np.mean(p, axis=0) for level, p in points.items()}


def _check_axial_levels(
    study_dir: Path,
    series_id: int,
    records: Sequence[ConditionRecord],
    references: dict[str, np.ndarray],
    out: StudyOutput,
) -> list[ConditionRecord]:
    """The axial records whose level the geometry confirms; the others become skips."""
    try:
        geometry = open_series(study_dir / str(series_id), on_error="skip").geometry
    except (SeriesGeometryError, DicomReadError, OSError):
        return list(records)  # extract_series records the series' own problem
    kept = []
    for d in records:
        if d.instance_number not in geometry.instance_to_index:
            kept.append(d)  # extract_series records the missing file
            continue
        header = geometry.slices[geometry.index_of(d.instance_number)]
        if header.position is None or header.orientation is None:
            level, detail = None, "the axial slice has no ImagePositionPatient/Orientation"
        else:
            level, detail = assign_axial_level(references, header.position, header.orientation)
        if level is None or level != d.level:
            reason = (
                SkipReason.AMBIGUOUS_AXIAL_LEVEL
                if level is None
                else SkipReason.AXIAL_LEVEL_MISMATCH
            )
            detail = f"{d.condition} {d.level}: {detail}"
            out.skips.append(
                Skip(
                    reason,
                    detail,
                    str(header.path),
                    None,
                    d.study_id,
                    d.series_id,
                    d.instance_number,
                    d.level,
                )
            )
            continue
        kept.append(d)
    return kept


# --------------------------------------------------------------------------- extraction


def _roi_path(row: dict[str, object], condition: str) -> str:
    slug = LEVEL_SLUGS[LEVELS.index(str(row["level"]))]
    tag = CONDITION_SLUGS[CONDITIONS.index(condition)]
    return (
        f"{ROIS_DIR}/{row['study_id']}/{row['series_id']}_{row['instance_number']}_{slug}_{tag}.png"
    )


def extract_condition_study(
    data_dir: Path, study_id: int, discs: Sequence[DiscRecord], config: PrepareConfig
) -> StudyOutput:
    """Extract every (condition, side, level) ROI of one study.

    Spinal canal rows keep the paper's PNG name; the others add the condition's slug to it.
    Every row of the output carries its ``condition``.
    """
    out = StudyOutput()
    records = [_as_condition(d) for d in discs]
    study_dir = data_dir / IMAGES_DIR / str(study_id)
    groups: dict[tuple[int, str], list[ConditionRecord]] = {}
    for d in records:
        groups.setdefault((d.series_id, d.condition), []).append(d)
    references: dict[str, np.ndarray] | None = None
    for (series_id, condition), group in groups.items():
        if CONDITION_SEQUENCE[condition] == AXIAL_T2:
            if references is None:
                references = _level_references(study_dir, records)
            group = _check_axial_levels(study_dir, series_id, group, references, out)
            if not group:
                continue
        first = len(out.rows)
        extract_series(study_dir / str(series_id), group, config, out)
        for row in out.rows[first:]:
            row["condition"] = condition
            if condition != SPINAL_CANAL:
                row["roi_path"] = _roi_path(row, condition)
    return out


def _as_condition(disc: DiscRecord) -> ConditionRecord:
    """``disc`` as a :class:`ConditionRecord` (a plain record is a spinal canal one)."""
    if isinstance(disc, ConditionRecord):
        return disc
    return ConditionRecord(
        study_id=disc.study_id,
        series_id=disc.series_id,
        instance_number=disc.instance_number,
        level=disc.level,
        x=disc.x,
        y=disc.y,
        severity=disc.severity,
        label=disc.label,
        condition=SPINAL_CANAL,
    )
