"""Where the four other conditions lie, from the spinal canal points and the DICOM geometry.

``lumbarssl predict --conditions all`` localises only the spinal canal (the paper's localizer on
the Sagittal T2/STIR series). The other targets of the RSNA 2024 task are placed by an honest
geometric baseline, no learnt network:

* :func:`fit_condition_points` reads a training RSNA-layout directory (its coordinates CSV
  through :func:`~lumbarssl.data.prepare.conditions.read_condition_index` and each series'
  ImagePositionPatient/ImageOrientationPatient/PixelSpacing) and stores, per (condition,
  level), the mean offset in patient millimetres of the condition's annotation from the
  spinal canal annotation of the same study and level (and the per-condition mean, used for a
  level with fewer than ``min_level_count`` examples): a :class:`ConditionPointModel`.
* :func:`map_condition_points` takes a new study's spinal canal points (instance, x, y on the
  Sagittal T2 series: what predict's localizer and slice selection produce), maps each to
  patient space (:func:`~lumbarssl.data.prepare.conditions.patient_point`), adds the offset
  and projects the result into the Sagittal T1 series (foramina) and the Axial T2 series
  (lateral recesses): the slice whose plane is nearest, and the in-plane column and row.

A point is still mapped when it is doubtful, but carries a skip code (:class:`MappedPoint`):
``outside_slab`` when the nearest slice plane is more than ``max_plane_distance_mm`` away;
for the axial series ``ambiguous_axial_level`` / ``axial_level_mismatch`` when the chosen
slice's level, assigned from the canal points by the same rule ``prepare`` uses
(:func:`~lumbarssl.data.prepare.conditions.assign_axial_level`), is ambiguous or another level;
``bad_geometry`` when a slice lacks position or orientation; ``no_series`` without a series.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lumbarssl._core.config import ConfigBase
from lumbarssl.data.constants import (
    AXIAL_T2,
    CONDITIONS,
    IMAGES_DIR,
    LEVELS,
    SPINAL_CANAL,
)
from lumbarssl.data.dicom import DicomReadError, SeriesGeometry, SeriesGeometryError, open_series
from lumbarssl.data.prepare.conditions import (
    CONDITION_SEQUENCE,
    ConditionRecord,
    assign_axial_level,
    patient_point,
    read_condition_index,
)
from lumbarssl.data.skips import SkipReason
from lumbarssl.errors import DataError

__all__ = [
    "OTHER_CONDITIONS",
    "ConditionPointModel",
    "MappedPoint",
    "PointErrors",
    "evaluate_condition_points",
    "fit_condition_points",
    "map_condition_points",
    "map_on_nearest_series",
    "project_point",
]

#: The four conditions placed by offsets from the spinal canal.
OTHER_CONDITIONS: tuple[str, ...] = tuple(c for c in CONDITIONS if c != SPINAL_CANAL)
#: Skip code of a point whose nearest slice plane is too far away.
OUTSIDE_SLAB = "outside_slab"
#: Skip code of a condition whose series the study lacks.
NO_SERIES = "no_series"
_ALL_LEVELS = "*"


def _key(condition: str, level: str) -> str:
    return f"{condition}|{level}"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConditionPointModel(ConfigBase):
    """Mean patient-space offsets of the four other conditions from the spinal canal point.

    Attributes:
        offsets_mm: ``"condition|level"`` (and ``"condition|*"`` for all levels together) ->
            mean offset ``(dx, dy, dz)`` in patient mm (DICOM LPS axes).
        counts: The same keys -> number of (study, level) pairs averaged.
        spread_mm: The same keys -> root-mean-square distance of those offsets from their mean.
        min_level_count: A level with fewer examples uses its condition's ``"*"`` offset.
        max_plane_distance_mm: A mapped point farther than this from its nearest slice plane is
            flagged ``outside_slab``.
    """

    offsets_mm: dict[str, tuple[float, float, float]]
    counts: dict[str, int]
    spread_mm: dict[str, float]
    min_level_count: int = 3
    max_plane_distance_mm: float = 6.0

    def __post_init__(self) -> None:
        offsets = {k: tuple(float(v) for v in value) for k, value in self.offsets_mm.items()}
        for key, value in offsets.items():
            condition, _, level = key.partition("|")
            if condition not in OTHER_CONDITIONS or level not in (*LEVELS, _ALL_LEVELS):
                raise DataError(
                    f"ConditionPointModel: key {key!r} is not 'condition|level' of a non-spinal "
                    "condition; refit with lumbarssl fit-condition-points"
                )
            if len(value) != 3 or not np.all(np.isfinite(value)):
                raise DataError(f"ConditionPointModel: offset of {key!r} is not 3 finite numbers")
        object.__setattr__(self, "offsets_mm", offsets)

    def offset(self, condition: str, level: str) -> np.ndarray:
        """The offset to add to the canal point of ``level`` for ``condition``.

        Args:
            condition: One of :data:`OTHER_CONDITIONS`.
            level: ``"L1/L2"`` ... ``"L5/S1"``.

        Returns:
            float64 (3,) in patient mm.

        Raises:
            DataError: If the model has no offset for the condition.
        """
        key = _key(condition, level)
        if key in self.offsets_mm and self.counts.get(key, 0) >= self.min_level_count:
            return np.asarray(self.offsets_mm[key], dtype=np.float64)
        fallback = _key(condition, _ALL_LEVELS)
        if fallback not in self.offsets_mm:
            raise DataError(
                f"ConditionPointModel has no offset for {condition}: the training data had no "
                "study with both its coordinate and the spinal canal's; refit on data that has"
            )
        return np.asarray(self.offsets_mm[fallback], dtype=np.float64)


@dataclass(frozen=True)
class MappedPoint:
    """One condition's mapped point on its series.

    Attributes:
        condition: As in the coordinates CSV.
        level: ``"L1/L2"`` ... ``"L5/S1"``.
        series_id: The series it lies on (``""`` for ``no_series``).
        slice_index: The chosen slice's place in spatial order (``-1`` for ``no_series``).
        instance_number: Its InstanceNumber (``-1`` for ``no_series``).
        x: Column in pixels on that slice.
        y: Row in pixels.
        plane_distance_mm: Distance of the offset point from the chosen slice's plane.
        skip: ``None``, or why the point is doubtful (see the module docstring).
        detail: A clause saying more about ``skip``.
    """

    condition: str
    level: str
    series_id: str
    slice_index: int
    instance_number: int
    x: float
    y: float
    plane_distance_mm: float
    skip: str | None = None
    detail: str = ""


def _header_point(geometry: SeriesGeometry, index: int, x: float, y: float) -> np.ndarray | None:
    header = geometry.slices[index]
    if header.position is None or header.orientation is None:
        return None
    return patient_point(header.position, header.orientation, header.pixel_spacing or (1, 1), x, y)


def project_point(geometry: SeriesGeometry, point: np.ndarray) -> tuple[int, float, float, float]:
    """The slice of a series whose plane is nearest to a patient-space point, and the pixel.

    The inverse of :func:`~lumbarssl.data.prepare.conditions.patient_point` on that slice:
    a point taken from pixel ``(x, y)`` of slice ``i`` projects back to ``(i, x, y, 0.0)``.

    Args:
        geometry: The series (slices with ImagePositionPatient/Orientation).
        point: float (3,) in patient mm.

    Returns:
        ``(slice_index, x, y, plane_distance_mm)``.

    Raises:
        DataError: If no slice has a position and orientation.
    """
    best: tuple[float, int] | None = None
    for i, header in enumerate(geometry.slices):
        normal = header.normal
        if header.position is None or normal is None:
            continue
        distance = abs(float(np.dot(point - np.asarray(header.position), normal)))
        if best is None or distance < best[0]:
            best = (distance, i)
    if best is None:
        raise DataError(
            f"{geometry.series_dir}: no slice has ImagePositionPatient and "
            "ImageOrientationPatient, so no point can be placed on it"
        )
    distance, index = best
    header = geometry.slices[index]
    assert header.position is not None
    assert header.orientation is not None
    row_spacing, column_spacing = header.pixel_spacing or (1.0, 1.0)
    delta = point - np.asarray(header.position, dtype=np.float64)
    x = float(np.dot(delta, np.asarray(header.orientation[:3]))) / column_spacing
    y = float(np.dot(delta, np.asarray(header.orientation[3:]))) / row_spacing
    return index, x, y, distance


def map_condition_points(
    model: ConditionPointModel,
    t2: SeriesGeometry,
    canal: Mapping[str, tuple[int, float, float]],
    series: Mapping[str, tuple[str, SeriesGeometry] | None],
    *,
    conditions: Sequence[str] = OTHER_CONDITIONS,
) -> list[MappedPoint]:
    """Place every (condition, level) of ``conditions`` from the study's spinal canal points.

    Args:
        model: The fitted offsets.
        t2: The Sagittal T2/STIR series the canal points lie on.
        canal: Level -> ``(instance_number, x, y)`` on ``t2`` (levels absent are not mapped).
        series: Sequence name (``"Sagittal T1"``, ``"Axial T2"``) -> ``(series_id,
            geometry)``, or ``None`` when the study lacks it.
        conditions: The conditions to place (non-spinal ones).

    Returns:
        One point per (condition, level), condition-major, levels in :data:`LEVELS` order.
    """
    references: dict[str, np.ndarray] = {}
    for level, (instance, x, y) in canal.items():
        if instance in t2.instance_to_index:
            p = _header_point(t2, t2.index_of(instance), x, y)
            if p is not None:
                references[level] = p
    out: list[MappedPoint] = []
    for condition in conditions:
        sequence = CONDITION_SEQUENCE[condition]
        found = series.get(sequence)
        for level in LEVELS:
            if level not in canal:
                continue
            if found is None:
                out.append(
                    MappedPoint(condition, level, "", -1, -1, float("nan"), float("nan"),
                                float("nan"), NO_SERIES, f"the study has no {sequence} series")
                )  # fmt: skip
                continue
            series_id, geometry = found
            if level not in references:
                detail = "the Sagittal T2 slice has no ImagePositionPatient/Orientation"
                out.append(
                    MappedPoint(condition, level, series_id, -1, -1, float("nan"), float("nan"),
                                float("nan"), SkipReason.BAD_GEOMETRY.value, detail)
                )  # fmt: skip
                continue
            target = references[level] + model.offset(condition, level)
            try:
                index, x, y, distance = project_point(geometry, target)
            except DataError as exc:
                out.append(
                    MappedPoint(condition, level, series_id, -1, -1, float("nan"), float("nan"),
                                float("nan"), SkipReason.BAD_GEOMETRY.value, str(exc))
                )  # fmt: skip
                continue
            header = geometry.slices[index]
            skip: str | None = None
            detail = f"{distance:.1f} mm from the plane of instance {header.instance_number}"
            if distance > model.max_plane_distance_mm:
                skip = OUTSIDE_SLAB
            elif sequence == AXIAL_T2 and header.position is not None:
                assert header.orientation is not None
                assigned, why = assign_axial_level(references, header.position, header.orientation)
                if assigned is None:
                    skip, detail = SkipReason.AMBIGUOUS_AXIAL_LEVEL.value, why
                elif assigned != level:
                    skip, detail = SkipReason.AXIAL_LEVEL_MISMATCH.value, why
            out.append(
                MappedPoint(
                    condition,
                    level,
                    series_id,
                    index,
                    header.instance_number,
                    x,
                    y,
                    distance,
                    skip,
                    detail,
                )
            )
    return out


def _rank(point: MappedPoint) -> tuple[bool, float]:
    """Preference among one target's points on several series: unflagged, then nearest."""
    distance = point.plane_distance_mm
    return point.skip is not None, distance if np.isfinite(distance) else float("inf")


def map_on_nearest_series(
    model: ConditionPointModel,
    t2: SeriesGeometry,
    canal: Mapping[str, tuple[int, float, float]],
    series: Mapping[str, Sequence[tuple[str, SeriesGeometry]]],
    *,
    conditions: Sequence[str] = OTHER_CONDITIONS,
) -> list[MappedPoint]:
    """:func:`map_condition_points` when a sequence has several series.

    Many RSNA studies store their axial slices as several Axial T2 series (a block per level
    or two): each target is placed on the series whose point ranks first, unflagged before
    flagged, then the nearest slice plane.

    Args:
        model: The fitted offsets.
        t2: The Sagittal T2/STIR series the canal points lie on.
        canal: Level -> ``(instance_number, x, y)`` on ``t2``.
        series: Sequence name -> its ``(series_id, geometry)`` pairs (empty or absent: the
            study lacks it, and its targets are ``no_series``).
        conditions: The conditions to place.

    Returns:
        One point per (condition, level), condition-major, levels in :data:`LEVELS` order.
    """
    best: dict[tuple[str, str], MappedPoint] = {}
    for condition in conditions:
        found = series.get(CONDITION_SEQUENCE[condition])
        options: list[tuple[str, SeriesGeometry] | None] = list(found) if found else [None]
        for option in options:
            for m in map_condition_points(
                model, t2, canal, {CONDITION_SEQUENCE[condition]: option}, conditions=[condition]
            ):
                key = (m.condition, m.level)
                if key not in best or _rank(m) < _rank(best[key]):
                    best[key] = m
    return [best[c, lv] for c in conditions for lv in LEVELS if (c, lv) in best]


# --------------------------------------------------------------------------- fitting


def _study_points(
    data_dir: Path, studies: Iterable[int] | None
) -> dict[int, dict[tuple[str, str], tuple[ConditionRecord, np.ndarray, SeriesGeometry]]]:
    """Per study, (condition, level) -> (record, patient point, its series' geometry)."""
    index = read_condition_index(data_dir, on_error="skip")
    wanted = None if studies is None else {int(s) for s in studies}
    geometries: dict[tuple[int, int], SeriesGeometry | None] = {}
    out: dict[int, dict[tuple[str, str], tuple[ConditionRecord, np.ndarray, SeriesGeometry]]] = {}
    for record in index.discs:
        assert isinstance(record, ConditionRecord)
        if wanted is not None and record.study_id not in wanted:
            continue
        key = (record.study_id, record.series_id)
        if key not in geometries:
            path = data_dir / IMAGES_DIR / str(record.study_id) / str(record.series_id)
            try:
                geometries[key] = open_series(path, on_error="skip").geometry
            except (SeriesGeometryError, DicomReadError, OSError):
                geometries[key] = None
        geometry = geometries[key]
        if geometry is None or record.instance_number not in geometry.instance_to_index:
            continue
        p = _header_point(geometry, geometry.index_of(record.instance_number), record.x, record.y)
        if p is not None:
            study = out.setdefault(record.study_id, {})
            study[record.condition, record.level] = (record, p, geometry)
    return out


def fit_condition_points(
    data_dir: str | Path,
    *,
    studies: Iterable[int] | None = None,
    min_level_count: int = 3,
    max_plane_distance_mm: float = 6.0,
) -> ConditionPointModel:
    """Fit the mean offsets of the four other conditions from an annotated directory.

    Args:
        data_dir: RSNA 2024 layout with ``train_label_coordinates.csv`` and the DICOM files.
        studies: Only these study ids (all when ``None``), e.g. a training split.
        min_level_count: See :class:`ConditionPointModel`.
        max_plane_distance_mm: See :class:`ConditionPointModel`.

    Returns:
        The fitted model.

    Raises:
        DataError: If no study has a spinal canal point and another condition's at one level.
    """
    offsets: dict[str, list[np.ndarray]] = {}
    for points in _study_points(Path(data_dir), studies).values():
        for (condition, level), (_, p, _) in points.items():
            canal = points.get((SPINAL_CANAL, level))
            if condition == SPINAL_CANAL or canal is None:
                continue
            offset = p - canal[1]
            offsets.setdefault(_key(condition, level), []).append(offset)
            offsets.setdefault(_key(condition, _ALL_LEVELS), []).append(offset)
    if not offsets:
        raise DataError(
            f"{data_dir}: no study has both a spinal canal coordinate and another condition's "
            "at the same level (readable DICOM geometry); fit on a directory with all five "
            "conditions annotated"
        )
    means = {k: np.mean(v, axis=0) for k, v in sorted(offsets.items())}
    return ConditionPointModel(
        offsets_mm={k: (float(m[0]), float(m[1]), float(m[2])) for k, m in means.items()},
        counts={k: len(v) for k, v in sorted(offsets.items())},
        spread_mm={
            k: float(np.sqrt(np.mean(np.sum((np.asarray(v) - means[k]) ** 2, axis=1))))
            for k, v in sorted(offsets.items())
        },
        min_level_count=min_level_count,
        max_plane_distance_mm=max_plane_distance_mm,
    )


@dataclass(frozen=True)
class PointErrors:
    """How well mapped points meet the annotations of one condition.

    Attributes:
        condition: As in the coordinates CSV.
        n: Annotated targets with a canal point at their level.
        n_flagged: Of those, mapped points that carry a skip code (still measured).
        on_instance: Share of the ``n`` mapped onto the annotated instance.
        mean_mm: Mean distance (mm, patient space) from the mapped pixel on its slice to the
            annotated point.
        median_mm: Median of the same.
    """

    condition: str
    n: int
    n_flagged: int
    on_instance: float
    mean_mm: float
    median_mm: float


def evaluate_condition_points(
    model: ConditionPointModel,
    data_dir: str | Path,
    *,
    studies: Iterable[int] | None = None,
    canal: Mapping[int, Mapping[str, tuple[int, float, float]]] | None = None,
) -> dict[str, PointErrors]:
    """Map each study's canal points and compare with the other conditions' annotations.

    Args:
        model: The fitted offsets.
        data_dir: An annotated RSNA-layout directory (held out from the fit, for an honest
            number).
        studies: Only these study ids (all when ``None``).
        canal: Study id -> level -> ``(instance_number, x, y)`` on its Sagittal T2 series to
            map from (e.g. a localizer's predictions); the annotated canal points when
            ``None``.

    Returns:
        Condition -> its errors (conditions without annotations are left out).
    """
    errors: dict[str, list[tuple[float, bool, bool]]] = {}
    for study, points in _study_points(Path(data_dir), studies).items():
        annotated = {lv: v for (c, lv), v in points.items() if c == SPINAL_CANAL}
        if not annotated:
            continue
        t2 = next(iter(annotated.values()))[2]
        if canal is not None:
            if study not in canal:
                continue
            start = dict(canal[study])
        else:
            start = {lv: (r.instance_number, r.x, r.y) for lv, (r, _, _) in annotated.items()}
        by_sequence: dict[str, tuple[str, SeriesGeometry] | None] = {}
        for (condition, _), (record, _, geometry) in points.items():
            if condition != SPINAL_CANAL:
                sequence = CONDITION_SEQUENCE[condition]
                by_sequence[sequence] = (str(record.series_id), geometry)
        for m in map_condition_points(model, t2, start, by_sequence):
            truth = points.get((m.condition, m.level))
            if truth is None or m.slice_index < 0:
                continue
            record, p, geometry = truth
            if str(record.series_id) != m.series_id:
                continue
            q = _header_point(geometry, m.slice_index, m.x, m.y)
            if q is None:
                continue
            errors.setdefault(m.condition, []).append(
                (
                    float(np.linalg.norm(q - p)),
                    m.instance_number == record.instance_number,
                    m.skip is not None,
                )
            )
    out = {}
    for condition in OTHER_CONDITIONS:
        rows = errors.get(condition)
        if not rows:
            continue
        distance = np.asarray([r[0] for r in rows])
        out[condition] = PointErrors(
            condition=condition,
            n=len(rows),
            n_flagged=sum(r[2] for r in rows),
            on_instance=float(np.mean([r[1] for r in rows])),
            mean_mm=float(distance.mean()),
            median_mm=float(np.median(distance)),
        )
    return out
