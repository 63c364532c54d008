"""Everything about one synthetic study except its pixels: ids, labels, anatomy and geometry.

:func:`sample_study_plan` is cheap (no image is rendered), so label statistics over thousands of
studies can be checked through the very code path the generator uses. Each study draws from its
own random streams, derived from ``(seed, study index, purpose)``:

====  =========================================================================
0     labels: latent stenosis, reader grades, missing cells, coordinate errors
1     anatomy: the patient
2     acquisition: image geometry, series, scanner settings
3     pixels: textures, bias field, noise (used by the renderer)
4     midline (generator 2.0 on): drift, tilt and lateral curvature of the plane
5     (``conditions="all"``) the four other conditions: latent severities, reader grades,
      missing cells, annotation errors (:mod:`~lumbarssl.synthetic.conditions`)
====  =========================================================================

so a study does not depend on the studies before it, nor on the number of worker processes.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray
from pydicom.uid import generate_uid

from lumbarssl.layout import AXIAL_T2, LEVELS, SAGITTAL_T1, SAGITTAL_T2
from lumbarssl.synthetic.anatomy import Anatomy, Centerline, sample_anatomy
from lumbarssl.synthetic.conditions import (
    CONDITION_STREAM,
    FORAMINAL,
    SUBARTICULAR,
    ConditionPlan,
    axial_margin,
    axial_row_shift,
    foramen_geometry,
    recess_geometry,
    sample_condition_labels,
)
from lumbarssl.synthetic.config import MULTI_CONDITION_FIELDS, V2_FIELDS, SyntheticConfig
from lumbarssl.synthetic.labels import grade_from_r, reader_grade, sample_latent_stenosis

F64 = NDArray[np.float64]

__all__ = ["DiscPlan", "Midline", "SeriesPlan", "StudyPlan", "sample_study_plan", "study_rng"]

LABEL_STREAM, ANATOMY_STREAM, ACQUISITION_STREAM, PIXEL_STREAM, MIDLINE_STREAM = 0, 1, 2, 3, 4

# Study and series ids: an affine bijection of the index modulo this prime, offset so the ids
# have 7 to 10 digits like RSNA's, distinct within a dataset by construction.
_ID_PRIME = 2_147_483_647
_ID_OFFSET = 1_000_000
# A study has at most these series: Sagittal T2/STIR, Sagittal T1, Axial T2.
_SERIES_PER_STUDY = 3
# Coordinates stay this far (fraction of the field of view) inside the image edge.
_COORDINATE_MARGIN = 0.08
# The annotator's error along the spine is clipped to this fraction of the disc height, and
# across it to this fraction of the remaining CSF column, so a point stays on its disc's canal.
_JITTER_S_CLIP = 0.25
_JITTER_T_CLIP = 0.25
# The midline lies within this fraction of a slice spacing from the centre slice, which is then
# the mid-sagittal slice that carries the coordinates.
_MIDLINE_OFFSET = 0.4
# (v2) The midline stays this many slice spacings inside the first and last slices.
_MIDLINE_SLAB_MARGIN = 1.0
# (v2) Beyond the lumbar discs the midline's shape is held at this multiple of its half-span.
_MIDLINE_U_CLIP = 1.25
# (conditions="all") Axial slices are at most this far apart (mm), so each disc has one near it.
_AXIAL_MAX_SPACING_MM = 4.0
# (conditions="all") Beyond the foramen plane the sagittal slab reaches this far (mm).
_FORAMEN_SLAB_MARGIN_MM = 1.5
# Study dates are spread over these days.
_FIRST_STUDY_DATE = np.datetime64("2015-01-01")
_STUDY_DATE_SPAN_DAYS = 3000
# Echo and repetition times (ms) of T2- and T1-weighted fast spin echo.
_TIMING = {"T2": ((80.0, 120.0), (2500.0, 4500.0)), "T1": ((8.0, 15.0), (400.0, 700.0))}
# Rescale slopes and intercepts of series stored with a Modality LUT.
_RESCALE_SLOPE_RANGE = (0.5, 4.0)
_RESCALE_INTERCEPT_RANGE = (-200.0, 0.0)


@dataclass(frozen=True)
class DiscPlan:
    """Ground truth and annotation of one graded disc.

    Attributes:
        level: ``"L1/L2"`` ... ``"L5/S1"``.
        r: Latent stenosis.
        true_grade: Grade of ``r`` before reader noise (index into ``SEVERITIES``).
        recorded_grade: Grade the reader recorded; ``None`` for an empty ``train.csv`` cell.
        coordinate: ``(x, y)`` pixel position on the annotated instance; ``None`` if the study
            has no coordinate for this level.
        instance_number: InstanceNumber of the Sagittal T2 slice nearest to this level's canal
            midline: the instance the reader annotates (and the true one).
        true_coordinate: Noise-free ``(x, y)`` pixel position of the disc's canal centre (the
            annotation without the reader's offset).
        midline_index: Lateral position of the level's canal midline in spatial slice units
            (0 = first slice along the slice normal; the true instance is the nearest integer).
    """

    level: str
    r: float
    true_grade: int
    recorded_grade: int | None
    coordinate: tuple[float, float] | None
    instance_number: int = 0
    true_coordinate: tuple[float, float] = (0.0, 0.0)
    midline_index: float = 0.0


@dataclass(frozen=True)
class SeriesPlan:
    """One series of a study.

    Attributes:
        series_id: Integer id (the folder name under the study).
        description: ``Sagittal T2/STIR``, ``Sagittal T1`` or ``Axial T2``.
        uid: SeriesInstanceUID.
        series_number: SeriesNumber tag.
        n_slices: Number of instances.
        slice_spacing: Distance between slice centres (mm).
        slice_thickness: Slice thickness (mm).
        reversed: Whether InstanceNumber runs against the spatial order.
        rescale: ``(slope, intercept)`` of the stored values, ``(1, 0)`` when absent.
        intensity_scale: Value of CSF (T2) or fat (T1) before bias and noise.
        noise_sd: Noise standard deviation relative to that value.
        echo_time: EchoTime (ms).
        repetition_time: RepetitionTime (ms).
    """

    series_id: int
    description: str
    uid: str
    series_number: int
    n_slices: int
    slice_spacing: float
    slice_thickness: float
    reversed: bool
    rescale: tuple[float, float]
    intensity_scale: float
    noise_sd: float
    echo_time: float
    repetition_time: float

    def instance_number(self, spatial_index: int) -> int:
        """InstanceNumber of the slice at ``spatial_index`` along the slice normal."""
        return self.n_slices - spatial_index if self.reversed else spatial_index + 1


@dataclass(frozen=True)
class Midline:
    """Lateral position of the canal midline along the spine, relative to the centre slice.

    ``m(s) = offset + tilt * u + bow * (1 - u**2)`` mm, with ``u = (s - center) / half_span``
    clipped to ``[-1.25, 1.25]``: ``u = -1`` at L1/L2 and ``u = 1`` at L5/S1. Positive ``m`` lies
    towards higher spatial slice indices. Generator 1.0 has ``tilt = bow = 0``.

    Attributes:
        offset: Lateral shift (mm).
        tilt: Half the lateral difference between L5/S1 and L1/L2 (mm).
        bow: Lateral bow of a curved spine at the middle level (mm).
        center: ``s`` (mm) midway between the L1/L2 and L5/S1 discs.
        half_span: Half the ``s`` distance between them (mm).
    """

    offset: float
    tilt: float = 0.0
    bow: float = 0.0
    center: float = 0.0
    half_span: float = 1.0

    @property
    def is_flat(self) -> bool:
        """Whether the midline is one plane parallel to the slices."""
        return self.tilt == 0.0 and self.bow == 0.0

    def at(self, s: NDArray[np.float64] | float) -> NDArray[np.float64]:
        """``m(s)`` (mm) at spine positions ``s``, same shape."""
        u = np.asarray(s, dtype=np.float64) - self.center
        u = np.clip(u / self.half_span, -_MIDLINE_U_CLIP, _MIDLINE_U_CLIP)
        out: NDArray[np.float64] = self.offset + self.tilt * u + self.bow * (1.0 - u * u)
        return out

    def extent(self) -> tuple[float, float]:
        """Smallest and largest ``m(s)`` over all ``s`` (mm)."""
        u = np.linspace(-_MIDLINE_U_CLIP, _MIDLINE_U_CLIP, 201)
        m = self.offset + self.tilt * u + self.bow * (1.0 - u * u)
        return float(m.min()), float(m.max())


@dataclass(frozen=True)
class StudyPlan:
    """Everything about one study except its pixel values.

    Attributes:
        index: Position of the study in the dataset.
        study_id: Integer id (the folder name).
        uid: StudyInstanceUID.
        frame_uid: FrameOfReferenceUID shared by the study's series.
        anatomy: The patient.
        centerline: The spine in the sagittal pixel plane (mm from the first pixel's centre).
        size: Rows (= columns) of every image.
        spacing: In-plane pixel spacing (mm).
        midline_offset: Lateral offset (mm) of the midline from the centre slice's plane (at the
            middle of the lumbar spine, :attr:`Midline.offset`); slice positions are given
            relative to it.
        study_date: StudyDate, ``YYYYMMDD``.
        series: The study's series; the first is the Sagittal T2/STIR.
        discs: The five graded discs, L1/L2 to L5/S1.
        midline: The canal midline along the spine; flat (``midline_offset`` everywhere) for
            generator 1.0.
        conditions: (``conditions="all"``) The 20 foraminal and subarticular targets, condition
            by condition (Left then Right foraminal, Left then Right subarticular), level by
            level; empty otherwise.
    """

    index: int
    study_id: int
    uid: str
    frame_uid: str
    anatomy: Anatomy
    centerline: Centerline
    size: int
    spacing: float
    midline_offset: float
    study_date: str
    series: tuple[SeriesPlan, ...]
    discs: tuple[DiscPlan, ...]
    midline: Midline | None = None
    conditions: tuple[ConditionPlan, ...] = ()

    def series_of(self, description: str) -> SeriesPlan | None:
        """The study's series with this description, if any."""
        return next((s for s in self.series if s.description == description), None)

    @property
    def sagittal_t2(self) -> SeriesPlan:
        """The graded series."""
        return self.series[0]

    @property
    def annotated_instance(self) -> int:
        """InstanceNumber of the centre T2 slice (generator 1.0 annotates it for every level).

        Generator 2.0 annotates each level on its own instance: see
        :attr:`DiscPlan.instance_number`.
        """
        t2 = self.sagittal_t2
        return t2.instance_number(t2.n_slices // 2)

    def lateral_offset(self, spatial_index: int, series: SeriesPlan, s: F64) -> F64:
        """Lateral offset (mm) from the canal midline of a sagittal slice at spine positions ``s``.

        Equals :meth:`slice_offset` everywhere when the midline is flat.
        """
        midline = self.midline or Midline(self.midline_offset)
        offset: F64 = (spatial_index - series.n_slices // 2) * series.slice_spacing - midline.at(s)
        return offset

    def slice_offset(self, spatial_index: int, series: SeriesPlan) -> float:
        """Lateral offset (mm) from the midline of a sagittal slice."""
        return (spatial_index - series.n_slices // 2) * series.slice_spacing - self.midline_offset


def study_rng(config: SyntheticConfig, index: int, stream: int) -> np.random.Generator:
    """The random generator of one study and purpose (see the module docstring)."""
    return np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(index, stream)))


def sample_study_plan(config: SyntheticConfig, index: int) -> StudyPlan:
    """Draw study ``index`` of the dataset that ``config`` describes.

    Args:
        config: Generator parameters (``n_studies`` is not used: a study does not depend on it).
        index: Study index, ``0 <= index``.

    Returns:
        The study's plan.
    """
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    label_rng = study_rng(config, index, LABEL_STREAM)
    r = sample_latent_stenosis(
        config.stenosis_prevalence, config.healthy_r_beta, config.stenotic_r_beta, label_rng
    )
    true_grade = grade_from_r(r, config.grade_thresholds)
    recorded = reader_grade(r, config.grade_thresholds, config.reader_noise_sd, label_rng)
    # Draw every value whatever the branch, so one probability does not shift the other draws.
    n = len(LEVELS)
    missing = _choose_levels(label_rng, config.p_missing_labels, max_levels=2)
    dropped = _choose_levels(label_rng, config.p_partial_coordinates, max_levels=3)
    jitter = label_rng.normal(0.0, config.coordinate_jitter_mm, size=(n, 2))

    anatomy = sample_anatomy(
        r,
        config.patient_scale_range,
        config.lordosis_range_deg,
        config.rotation_range_deg,
        study_rng(config, index, ANATOMY_STREAM),
    )
    acq = study_rng(config, index, ACQUISITION_STREAM)
    size = int(acq.integers(config.image_size_range[0], config.image_size_range[1] + 1))
    fov = acq.uniform(*config.field_of_view_range)
    lo, hi = config.pixel_spacing_range
    spacing = float(np.clip(round(float(np.clip(fov / size, lo, hi)), 4), lo, hi))
    fov = size * spacing
    anchor = (anatomy.anchor_fraction[0] * fov, anatomy.anchor_fraction[1] * fov)
    centerline = Centerline.build(anatomy, anchor)
    points = [_canal_point(anatomy, k, jitter[k]) for k in range(n)]
    centerline = _fit_in_view(centerline, points, fov)
    multi = config.conditions == "all"
    series = _sample_series(config, index, acq)
    if multi:
        series = _widen_sagittal(series, anatomy)
    midline_offset = acq.uniform(-_MIDLINE_OFFSET, _MIDLINE_OFFSET) * series[0].slice_spacing
    study_date = _FIRST_STUDY_DATE + np.timedelta64(
        int(acq.integers(0, _STUDY_DATE_SPAN_DAYS)), "D"
    )
    series = tuple(_fit_axial(s, anatomy, centerline, dense=multi) for s in series)
    t2 = series[0]
    if config.generator_version == "1.0":
        midline = Midline(float(midline_offset))
    else:
        margin = _MIDLINE_SLAB_MARGIN
        if multi:
            margin += _foramen_reach(anatomy) / t2.slice_spacing
        midline = _sample_midline(
            config, anatomy, t2, study_rng(config, index, MIDLINE_STREAM), margin
        )
        midline_offset = midline.offset

    discs = []
    for k, level in enumerate(LEVELS):
        coordinate = None
        if k not in dropped:
            x_mm, y_mm = centerline.to_image(*points[k])
            coordinate = (x_mm / spacing, y_mm / spacing)
        true_x, true_y = centerline.to_image(*_canal_point(anatomy, k, np.zeros(2)))
        midline_index = t2.n_slices // 2 + float(
            midline.at(anatomy.lumbar_discs[k].center) / t2.slice_spacing
        )
        nearest = int(np.clip(round(midline_index), 0, t2.n_slices - 1))
        if config.generator_version == "1.0":
            nearest = t2.n_slices // 2
        discs.append(
            DiscPlan(
                level=level,
                r=float(r[k]),
                true_grade=int(true_grade[k]),
                recorded_grade=None if k in missing else int(recorded[k]),
                coordinate=coordinate,
                instance_number=t2.instance_number(nearest),
                true_coordinate=(true_x / spacing, true_y / spacing),
                midline_index=midline_index,
            )
        )
    conditions: tuple[ConditionPlan, ...] = ()
    if multi:
        conditions = _condition_plans(
            config, index, anatomy, centerline, spacing, size, series, midline
        )
    return StudyPlan(
        index=index,
        study_id=_permuted_id(config.seed, index, salt=0),
        uid=_uid(config, index, "study"),
        frame_uid=_uid(config, index, "frame"),
        anatomy=anatomy,
        centerline=centerline,
        size=size,
        spacing=spacing,
        midline_offset=float(midline_offset),
        study_date=str(study_date).replace("-", ""),
        series=series,
        discs=tuple(discs),
        midline=midline,
        conditions=conditions,
    )


def _foramen_reach(anatomy: Anatomy) -> float:
    """(conditions="all") Lateral distance (mm) the slab must cover on each side of the midline."""
    return foramen_geometry(anatomy, 0).lateral + _FORAMEN_SLAB_MARGIN_MM


def _widen_sagittal(series: tuple[SeriesPlan, ...], anatomy: Anatomy) -> tuple[SeriesPlan, ...]:
    """(conditions="all") Enough sagittal slices to reach both foramina.

    Room is left for the midline to drift by ``_MIDLINE_SLAB_MARGIN`` slices either way.
    """
    out = []
    for s in series:
        if s.description != AXIAL_T2:
            half = int(np.ceil(_foramen_reach(anatomy) / s.slice_spacing + _MIDLINE_SLAB_MARGIN))
            s = replace(s, n_slices=max(s.n_slices, 2 * half + 3))
        out.append(s)
    return tuple(out)


def _condition_plans(
    config: SyntheticConfig,
    index: int,
    anatomy: Anatomy,
    centerline: Centerline,
    spacing: float,
    size: int,
    series: tuple[SeriesPlan, ...],
    midline: Midline,
) -> tuple[ConditionPlan, ...]:
    """(conditions="all") Labels, annotated instances and coordinates of the 20 targets."""
    labels = sample_condition_labels(config, study_rng(config, index, CONDITION_STREAM))
    t1 = next(s for s in series if s.description == SAGITTAL_T1)
    axial = next(s for s in series if s.description == AXIAL_T2)
    plans: list[ConditionPlan] = []

    def plan(
        condition: str,
        k: int,
        on: SeriesPlan,
        j: int,
        xy: tuple[float, float],
        true_xy: tuple[float, float],
    ) -> ConditionPlan:
        """Level ``k`` of ``condition``, annotated on slice ``j`` of series ``on``."""
        r, recorded, missing, dropped, _ = labels[condition]
        return ConditionPlan(
            condition=condition,
            level=LEVELS[k],
            r=float(r[k]),
            true_grade=int(grade_from_r(r[k], config.grade_thresholds)),
            recorded_grade=None if missing[k] else int(recorded[k]),
            series_id=on.series_id,
            instance_number=on.instance_number(j),
            coordinate=None if dropped[k] else xy,
            true_coordinate=true_xy,
        )

    for condition in FORAMINAL:
        jitter = labels[condition][4]
        sign = 1.0 if condition.startswith("Right") else -1.0  # sagittal: + = patient right
        for k in range(len(LEVELS)):
            g = foramen_geometry(anatomy, k)
            centre = t1.n_slices // 2
            offsets = [
                (j - centre) * t1.slice_spacing - float(midline.at(g.s)) for j in range(t1.n_slices)
            ]
            j = int(np.argmin([abs(o - sign * g.lateral) for o in offsets]))
            true_xy = centerline.to_image(g.s, g.t)
            xy = centerline.to_image(g.s + jitter[k, 0] * g.half_s, g.t + jitter[k, 1] * g.half_t)
            plans.append(
                plan(
                    condition,
                    k,
                    t1,
                    j,
                    (xy[0] / spacing, xy[1] / spacing),
                    (true_xy[0] / spacing, true_xy[1] / spacing),
                )
            )
    rg = recess_geometry(anatomy)
    margin = axial_margin(anatomy, centerline)
    fov = size * spacing
    discs = anatomy.lumbar_discs
    bottom = centerline.to_image(discs[-1].center, 0.0)[1]
    for condition in SUBARTICULAR:
        jitter = labels[condition][4]
        side = 1.0 if condition.startswith("Left") else -1.0  # axial: + = patient left
        for k in range(len(LEVELS)):
            row = centerline.to_image(discs[k].center, 0.0)[1]
            j = int(np.clip(round((bottom - row) / axial.slice_spacing), 0, axial.n_slices - 1))
            shift = axial_row_shift(centerline, margin, spacing, bottom - j * axial.slice_spacing)

            def pixel(s_ap: float, t: float, shift: int = shift) -> tuple[float, float]:
                return (0.5 * fov + t) / spacing, (s_ap + margin) / spacing + shift

            true_xy = pixel(rg.recess_s, side * rg.recess_t)
            xy = pixel(
                rg.recess_s + jitter[k, 0] * rg.canal_half_s,
                side * rg.recess_t + jitter[k, 1] * rg.canal_half_t,
            )
            plans.append(plan(condition, k, axial, j, xy, true_xy))
    return tuple(plans)


def _sample_midline(
    config: SyntheticConfig,
    anatomy: Anatomy,
    t2: SeriesPlan,
    rng: np.random.Generator,
    margin: float = _MIDLINE_SLAB_MARGIN,
) -> Midline:
    """(v2) Draw the drift, tilt and lateral curvature of the canal midline.

    Every value is drawn whatever the branch; the shape is then scaled down if needed so the
    midline stays :data:`_MIDLINE_SLAB_MARGIN` slices inside the slab.
    """
    discs = anatomy.lumbar_discs
    center = 0.5 * (discs[0].center + discs[-1].center)
    half_span = max(0.5 * (discs[-1].center - discs[0].center), 1.0)
    spacing = t2.slice_spacing
    offset = rng.uniform(-1.0, 1.0) * config.midline_drift_slices * spacing
    tilt = rng.uniform(-1.0, 1.0) * config.midline_tilt_mm
    curved = rng.random() < config.p_lateral_curvature
    bow = rng.uniform(*config.lateral_curvature_mm) * (1.0 if rng.random() < 0.5 else -1.0)
    midline = Midline(offset, tilt, bow if curved else 0.0, center, half_span)
    centre = t2.n_slices // 2
    below = max(centre - margin, 0.0) * spacing
    above = max(t2.n_slices - 1 - margin - centre, 0.0) * spacing
    low, high = midline.extent()
    shrink = min(1.0, below / -low if low < 0 else 1.0, above / high if high > 0 else 1.0)
    if shrink < 1.0:
        midline = replace(
            midline, offset=offset * shrink, tilt=tilt * shrink, bow=midline.bow * shrink
        )
    return midline


def _choose_levels(rng: np.random.Generator, p: float, max_levels: int) -> frozenset[int]:
    happens = rng.random() < p
    count = int(rng.integers(1, max_levels + 1))
    order = rng.permutation(len(LEVELS))
    return frozenset(int(k) for k in order[:count]) if happens else frozenset()


def _canal_point(anatomy: Anatomy, k: int, jitter: NDArray[np.float64]) -> tuple[float, float]:
    """Frame position of disc ``k``'s coordinate: in the CSF column at the disc's centre."""
    disc = anatomy.lumbar_discs[k]
    clip_s = _JITTER_S_CLIP * disc.height
    s = disc.center + float(np.clip(jitter[0], -clip_s, clip_s))
    anterior, posterior = (float(v[0]) for v in anatomy.csf_bounds(np.asarray([s])))
    clip_t = _JITTER_T_CLIP * (posterior - anterior)
    t = 0.5 * (anterior + posterior) + float(np.clip(jitter[1], -clip_t, clip_t))
    return s, t


def _fit_in_view(
    centerline: Centerline, points: list[tuple[float, float]], fov: float
) -> Centerline:
    """Shift the spine so every coordinate lies inside the margin of the field of view."""
    xy = np.array([centerline.to_image(s, t) for s, t in points])
    margin = _COORDINATE_MARGIN * fov
    shift = []
    for axis in (0, 1):
        low, high = float(xy[:, axis].min()), float(xy[:, axis].max())
        if low < margin:
            shift.append(margin - low)
        elif high > fov - margin:
            shift.append(fov - margin - high)
        else:
            shift.append(0.0)
    if shift == [0.0, 0.0]:
        return centerline
    return centerline.shifted(*shift)


def _sample_series(
    config: SyntheticConfig, index: int, rng: np.random.Generator
) -> tuple[SeriesPlan, ...]:
    # conditions="all": every study has the three series (RSNA: nearly every study does).
    every = config.conditions == "all"
    has_t1 = rng.random() < (1.0 if every else config.p_sagittal_t1)
    has_axial = rng.random() < (1.0 if every else config.p_axial_t2)
    descriptions = [SAGITTAL_T2] + [SAGITTAL_T1] * has_t1 + [AXIAL_T2] * has_axial
    numbers = rng.permutation(np.arange(1, 10))
    slices = int(rng.integers(config.slices_range[0], config.slices_range[1] + 1))
    spacing = round(rng.uniform(*config.slice_spacing_range), 3)
    series = []
    for k, description in enumerate((SAGITTAL_T2, SAGITTAL_T1, AXIAL_T2)):
        # Draw for every kind, present or not, to keep the stream aligned.
        reversed_ = bool(rng.random() < config.p_reversed_instances)
        rescaled = bool(rng.random() < config.p_rescale)
        slope = round(rng.uniform(*_RESCALE_SLOPE_RANGE), 4)
        intercept = round(rng.uniform(*_RESCALE_INTERCEPT_RANGE), 1)
        ratio = rng.uniform(*config.slice_thickness_ratio_range)
        scale = rng.uniform(*config.intensity_scale_range)
        noise = rng.uniform(*config.noise_sd_range)
        axial_slices = int(rng.integers(config.slices_range[0], config.slices_range[1] + 1))
        echo_range, repetition_range = _TIMING["T1" if description == SAGITTAL_T1 else "T2"]
        echo_time = round(rng.uniform(*echo_range), 1)
        repetition_time = round(rng.uniform(*repetition_range), 0)
        if description not in descriptions:
            continue
        n = axial_slices if description == AXIAL_T2 else slices
        series.append(
            SeriesPlan(
                series_id=_permuted_id(config.seed, _SERIES_PER_STUDY * index + k, salt=1),
                description=description,
                uid=_uid(config, index, f"series-{k}"),
                series_number=int(numbers[k]),
                n_slices=n,
                slice_spacing=spacing,
                slice_thickness=round(spacing * ratio, 3),
                reversed=reversed_,
                rescale=(slope, intercept) if rescaled else (1.0, 0.0),
                intensity_scale=scale,
                noise_sd=noise,
                echo_time=echo_time,
                repetition_time=repetition_time,
            )
        )
    return tuple(series)


def _fit_axial(
    series: SeriesPlan, anatomy: Anatomy, centerline: Centerline, *, dense: bool = False
) -> SeriesPlan:
    """Spread an axial series' slices evenly in height from the L5/S1 to the L1/L2 disc.

    ``dense`` (conditions="all") adds slices until they are at most 4 mm apart.
    """
    if series.description != AXIAL_T2 or series.n_slices < 2:
        return series
    discs = anatomy.lumbar_discs
    top = centerline.to_image(discs[0].center, 0.0)[1]
    bottom = centerline.to_image(discs[-1].center, 0.0)[1]
    if dense:
        needed = int(np.ceil((bottom - top) / _AXIAL_MAX_SPACING_MM)) + 1
        series = replace(series, n_slices=max(series.n_slices, needed))
    spacing = round((bottom - top) / (series.n_slices - 1), 3)
    ratio = series.slice_thickness / series.slice_spacing
    return replace(series, slice_spacing=spacing, slice_thickness=round(spacing * ratio, 3))


def _permuted_id(seed: int, index: int, salt: int) -> int:
    a, b = (int(v) for v in np.random.SeedSequence((seed, salt)).generate_state(2, np.uint64))
    a = 1 + a % (_ID_PRIME - 1)
    return _ID_OFFSET + (a * index + b) % _ID_PRIME


@functools.lru_cache(maxsize=8)
def config_digest(config: SyntheticConfig) -> str:
    """Short hash of the parameters that shape a study (all but ``n_studies``)."""
    params = config.to_dict()
    params.pop("n_studies")
    if config.generator_version == "1.0":
        # Version 1.0 predates these fields; leaving them out keeps its UIDs.
        for name in V2_FIELDS:
            params.pop(name)
    if config.conditions == "spinal":
        # Spinal-only datasets predate these fields; leaving them out keeps their UIDs.
        for name in MULTI_CONDITION_FIELDS:
            params.pop(name)
    text = repr(sorted(params.items())) + config.generator_version
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _uid(config: SyntheticConfig, index: int, *parts: str) -> str:
    return str(
        generate_uid(
            entropy_srcs=["lumbarssl.synthetic", config_digest(config), str(index), *parts]
        )
    )


def instance_uid(config_key: str, index: int, series_id: int, instance_number: int) -> str:
    """SOPInstanceUID of one image, deterministic in the dataset's parameters."""
    return str(
        generate_uid(
            entropy_srcs=[
                "lumbarssl.synthetic",
                config_key,
                str(index),
                str(series_id),
                str(instance_number),
            ]
        )
    )
