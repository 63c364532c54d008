"""The four conditions beside the spinal canal: foraminal narrowing and subarticular stenosis.

With ``SyntheticConfig(conditions="all")`` every study also grades, per side and level,

* **neural foraminal narrowing** on parasagittal Sagittal T1 slices: the fat-filled foramen
  between two pedicles, around the exiting nerve root, is narrowed front to back (disc bulge
  from the front, facet overgrowth from behind) by the fraction ``0.85 r`` of its width, the
  root squeezed with it;
* **subarticular stenosis** on Axial T2 slices at each disc level: the lateral recess of the
  canal's CSF is filled from its posterolateral corner (facet and ligamentum flavum) and its
  anterolateral corner (disc bulge) by dark tissue whose size grows with ``r``.

Each (condition, side, level) has its own latent severity ``r``, drawn like the canal's
(:func:`~lumbarssl.synthetic.labels.sample_latent_stenosis`, with the condition's prevalence
and stenotic Beta law and the canal's healthy law) and graded by the same noisy reader
(:func:`~lumbarssl.synthetic.labels.reader_grade`). Everything here draws from two new random
streams of the study (5: labels, annotation errors; none for pixels: the painting is
deterministic given ``r``), so the streams of the spinal canal are untouched.

Sides: ``Left``/``Right`` are the patient's. On the sagittal series a positive lateral offset
lies towards the patient's right (the slice normal is ``-x`` in LPS); on the axial series the
columns run to the patient's left.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from lumbarssl.layout import CONDITIONS, LEVELS, SEVERITIES, SPINAL_CANAL
from lumbarssl.synthetic.anatomy import Anatomy, Centerline
from lumbarssl.synthetic.ceiling import BayesCeiling, bayes_ceiling
from lumbarssl.synthetic.config import SyntheticConfig
from lumbarssl.synthetic.labels import grade_probabilities, reader_grade, sample_latent_stenosis

__all__ = [
    "CONDITION_STREAM",
    "FORAMINAL",
    "SUBARTICULAR",
    "ConditionPlan",
    "ForamenGeometry",
    "RecessGeometry",
    "axial_row_shift",
    "condition_ceilings",
    "condition_label_config",
    "foramen_geometry",
    "paint_foramina",
    "paint_recesses",
    "recess_geometry",
    "sample_condition_labels",
    "true_posterior_score",
]

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]

#: Random stream (see :mod:`lumbarssl.synthetic.plan`) of the four conditions' labels.
CONDITION_STREAM = 5
#: Conditions graded on Sagittal T1 and on Axial T2, as written in the coordinates CSV.
FORAMINAL: tuple[str, str] = (CONDITIONS[1], CONDITIONS[2])
SUBARTICULAR: tuple[str, str] = (CONDITIONS[3], CONDITIONS[4])
# Lateral offset of the foramen plane beyond the thecal sac's edge (mm).
_FORAMEN_BEYOND_SAC_MM = 3.0
# Largest fraction of a foramen's width that narrowing closes.
_FORAMEN_CLOSURE = 0.85
# Relative signals (T1: fat = 1; T2: CSF = 1) of what the overlays paint.
_T1_FAT, _T1_DARK, _T1_ROOT = 0.92, 0.2, 0.38
_T2_DARK = 0.08
# Clip of the annotator's error, as a fraction of the structure's half-size.
_JITTER_CLIP = 0.25


@dataclass(frozen=True)
class ConditionPlan:
    """Ground truth and annotation of one (condition, level): one side of one disc level.

    Attributes:
        condition: As in the coordinates CSV, e.g. ``"Left Neural Foraminal Narrowing"``.
        level: ``"L1/L2"`` ... ``"L5/S1"``.
        r: Latent severity in ``[0, 1]``.
        true_grade: Grade before reader noise.
        recorded_grade: Grade of ``train.csv``; ``None`` for an empty cell.
        series_id: Series the coordinate is on (Sagittal T1 or Axial T2).
        instance_number: Its annotated instance.
        coordinate: ``(x, y)`` pixel position on that instance; ``None`` if not annotated.
        true_coordinate: The position without the annotator's error.
    """

    condition: str
    level: str
    r: float
    true_grade: int
    recorded_grade: int | None
    series_id: int
    instance_number: int
    coordinate: tuple[float, float] | None
    true_coordinate: tuple[float, float]


@dataclass(frozen=True)
class ForamenGeometry:
    """One level's foramen in the sagittal spine frame (mm).

    Attributes:
        s: Centre along the spine.
        t: Centre front to back (0 = back of the disc).
        half_s: Half-height along the spine.
        half_t: Half-width front to back.
        root_s: Position of the exiting root along the spine (upper part of the foramen).
        lateral: Lateral distance of the foramen plane from the midline.
    """

    s: float
    t: float
    half_s: float
    half_t: float
    root_s: float
    lateral: float


@dataclass(frozen=True)
class RecessGeometry:
    """The canal and its lateral recesses in the axial frame.

    Millimetres; ``s`` runs front to back from the back of the disc, ``t`` laterally, positive
    to the patient's left.
    """

    canal_s: float
    canal_half_s: float
    canal_half_t: float
    recess_s: float
    recess_t: float


def condition_label_config(config: SyntheticConfig, condition: str) -> SyntheticConfig:
    """``config`` with the canal's label model replaced by ``condition``'s.

    The label model of every condition shares the canal's healthy law, grade thresholds and
    reader noise, so :func:`~lumbarssl.synthetic.ceiling.bayes_ceiling` applies as is.
    """
    if condition == SPINAL_CANAL:
        return config
    if condition in FORAMINAL:
        prevalence, beta = config.foraminal_prevalence, config.foraminal_stenotic_beta
    elif condition in SUBARTICULAR:
        prevalence, beta = config.subarticular_prevalence, config.subarticular_stenotic_beta
    else:
        raise ValueError(f"unknown condition {condition!r}; expected one of {CONDITIONS}")
    return dataclasses.replace(config, stenosis_prevalence=prevalence, stenotic_r_beta=beta)


def condition_ceilings(config: SyntheticConfig) -> dict[str, BayesCeiling]:
    """The Bayes ceiling of each of the five conditions (levels pooled), by condition name."""
    return {c: bayes_ceiling(condition_label_config(config, c)) for c in CONDITIONS}


def sample_condition_labels(
    config: SyntheticConfig, rng: np.random.Generator
) -> dict[str, tuple[F64, NDArray[np.int64], list[bool], list[bool], F64]]:
    """Draw the four conditions of one study from its condition stream.

    Returns:
        Per condition name: ``r``, recorded grades, missing cells, dropped coordinates and
        annotation errors (``(5, 2)``, in units of the structure's half-size).
    """
    out = {}
    n = len(LEVELS)
    for condition in (*FORAMINAL, *SUBARTICULAR):
        c = condition_label_config(config, condition)
        r = sample_latent_stenosis(c.stenosis_prevalence, c.healthy_r_beta, c.stenotic_r_beta, rng)
        recorded = reader_grade(r, c.grade_thresholds, c.reader_noise_sd, rng)
        missing = _choose(rng, config.p_missing_labels, 2)
        dropped = _choose(rng, config.p_partial_coordinates, 3)
        jitter = np.clip(rng.normal(0.0, 0.1, size=(n, 2)), -_JITTER_CLIP, _JITTER_CLIP)
        out[condition] = (r, recorded, missing, dropped, jitter)
    return out


def _choose(rng: np.random.Generator, p: float, max_levels: int) -> list[bool]:
    happens = rng.random() < p
    count = int(rng.integers(1, max_levels + 1))
    order = rng.permutation(len(LEVELS))
    chosen = set(order[:count].tolist()) if happens else set()
    return [k in chosen for k in range(len(LEVELS))]


def foramen_geometry(anatomy: Anatomy, level: int) -> ForamenGeometry:
    """Where the foramen of a level lies: below the upper vertebra's pedicle, above the lower's."""
    upper, lower = LEVELS[level].split("/")
    v, below = anatomy.vertebra(upper), anatomy.vertebra(lower)
    top = v.top + 0.55 * v.height
    bottom = below.top + 1.5
    s = 0.5 * (top + bottom)
    wall = float(anatomy.canal_wall(np.asarray([s]))[0])
    return ForamenGeometry(
        s=s,
        t=0.45 * wall,
        half_s=0.5 * (bottom - top),
        half_t=0.4 * wall,
        root_s=top + 4.5,
        lateral=anatomy.sac_half_width + _FORAMEN_BEYOND_SAC_MM,
    )


def recess_geometry(anatomy: Anatomy) -> RecessGeometry:
    """The canal of the axial phantom (the same sizes :class:`AxialPhantom` paints)."""
    lumbar = [v for v in anatomy.vertebrae if v.name.startswith("L")]
    width = float(np.mean([v.canal_width for v in lumbar]))
    hs = anatomy.sac_half_width
    return RecessGeometry(
        canal_s=1.0 + 0.5 * width,
        canal_half_s=0.5 * width,
        canal_half_t=hs,
        recess_s=1.0 + 0.35 * width,
        recess_t=0.7 * hs,
    )


def axial_margin(anatomy: Anatomy, centerline: Centerline) -> float:
    """Column (mm) of the spine at mid-lumbar height: the axial frame's ``s`` origin."""
    discs = anatomy.lumbar_discs
    return float(centerline.to_image(0.5 * (discs[0].center + discs[-1].center), 0.0)[0])


def axial_row_shift(centerline: Centerline, margin: float, spacing: float, row_mm: float) -> int:
    """Rows the axial cross-section at sagittal row ``row_mm`` is moved (follows the lordosis)."""
    x_row = float(centerline.rows(np.asarray([row_mm]))[1][0])
    return round((x_row - margin) / spacing)


def lateral_weight(offset: float, spacing: float) -> float:
    """How much of a foramen a sagittal slice ``offset`` mm from its plane shows.

    All of it within half a slice spacing, none beyond one spacing (so the nearest slice always
    shows it fully).
    """
    w = min(max((spacing - abs(offset)) / (0.5 * spacing), 0.0), 1.0)
    return w * w * (3.0 - 2.0 * w)


def _ellipse_alpha(u: F32, v: F32, half_min: float, edge: float) -> F32:
    """Anti-aliased inside of the unit ellipse in ``(u, v)`` (one-pixel edge)."""
    rho = np.sqrt(u * u + v * v)
    alpha: F32 = np.clip((1.0 - rho) * np.float32(half_min / edge) + 0.5, 0.0, 1.0)
    return alpha


def paint_foramina(
    image: F32,
    s: F32,
    t: F32,
    foramina: Sequence[tuple[ForamenGeometry, float, float]],
    spacing: float,
) -> F32:
    """Paint the foramina a sagittal T1 slice shows; ``image`` is changed in place and returned.

    Args:
        image: Noise-free slice, ``(H, W)``.
        s: Spine-frame ``s`` of every pixel, ``(H, W)``.
        t: Spine-frame ``t`` of every pixel, ``(H, W)``.
        foramina: ``(geometry, r, weight)`` per foramen; ``weight`` from :func:`lateral_weight`.
        spacing: Pixel spacing (mm).
    """
    edge = max(spacing, 0.5)
    for g, r, weight in foramina:
        if weight <= 0.0:
            continue
        rows, cols = _window(s, t, g.s, g.t, g.half_s + edge, g.half_t + edge)
        if rows.stop <= rows.start or cols.stop <= cols.start:
            continue
        ss, tt = s[rows, cols], t[rows, cols]
        u = (ss - np.float32(g.s)) / np.float32(g.half_s)
        v = (tt - np.float32(g.t)) / np.float32(g.half_t)
        inside = _ellipse_alpha(u, v, min(g.half_s, g.half_t), edge)
        open_ = 1.0 - _FORAMEN_CLOSURE * r
        fat = _ellipse_alpha(u, v / np.float32(open_), min(g.half_s, g.half_t * open_), edge)
        target = np.float32(_T1_DARK) + np.float32(_T1_FAT - _T1_DARK) * fat
        root_t = max(min(2.0, 0.8 * open_ * g.half_t), 0.5)
        root = _ellipse_alpha(
            (ss - np.float32(g.root_s)) / np.float32(2.5),
            (tt - np.float32(g.t)) / np.float32(root_t),
            min(2.5, root_t),
            edge,
        )
        target += (np.float32(_T1_ROOT) - target) * root
        alpha = inside * np.float32(weight)
        patch = image[rows, cols]
        patch += alpha * (target - patch)
    return image


def paint_recesses(
    image: F32,
    s: F32,
    t: F32,
    geometry: RecessGeometry,
    recesses: Sequence[tuple[float, float, float]],
    spacing: float,
) -> F32:
    """Narrow the lateral recesses an axial T2 slice shows; ``image`` changed in place.

    Args:
        image: Noise-free slice before its lordosis row shift, ``(H, W)``.
        s: Axial-frame ``s`` (front to back) of every pixel, ``(H, W)``.
        t: Axial-frame ``t`` (lateral, + = patient's left) of every pixel, ``(H, W)``.
        geometry: The canal.
        recesses: ``(side, r, weight)`` per recess: side ``+1`` left, ``-1`` right; weight how
            much of the level's disc the slice cuts (0 to 1).
        spacing: Pixel spacing (mm).
    """
    edge = max(spacing, 0.5)
    g = geometry
    rows, cols = _window(s, t, g.canal_s, 0.0, g.canal_half_s + edge, g.canal_half_t + edge)
    if rows.stop <= rows.start or cols.stop <= cols.start:
        return image
    ss, tt = s[rows, cols], t[rows, cols]
    csf = _ellipse_alpha(
        (ss - np.float32(g.canal_s)) / np.float32(g.canal_half_s),
        tt / np.float32(g.canal_half_t),
        min(g.canal_half_s, g.canal_half_t),
        edge,
    )
    patch = image[rows, cols]
    for side, r, weight in recesses:
        if weight <= 0.0 or r <= 0.0:
            continue
        # Facet and ligamentum flavum from the posterolateral corner, disc from the front.
        back_s, back_t = (0.9 + 0.1 * r) * 2.0 * g.canal_half_s, 1.1 * r * g.canal_half_t
        back = _ellipse_alpha(
            (ss - np.float32(1.0 + 2.0 * g.canal_half_s)) / np.float32(back_s),
            (tt - np.float32(side * g.canal_half_t)) / np.float32(back_t),
            min(back_s, back_t),
            edge,
        )
        front_s, front_t = 0.7 * r * g.canal_half_s, 0.6 * r * g.canal_half_t
        front = _ellipse_alpha(
            (ss - np.float32(1.0)) / np.float32(max(front_s, 1e-3)),
            (tt - np.float32(side * 0.6 * g.canal_half_t)) / np.float32(max(front_t, 1e-3)),
            min(front_s, front_t),
            edge,
        )
        alpha = np.maximum(back, front) * csf * np.float32(weight)
        patch += alpha * (np.float32(_T2_DARK) - patch)
    return image


def _window(
    s: F32, t: F32, s0: float, t0: float, half_s: float, half_t: float
) -> tuple[slice, slice]:
    """Bounding rows and columns of the pixels within ``half`` of ``(s0, t0)``."""
    near = (np.abs(s - np.float32(s0)) <= half_s) & (np.abs(t - np.float32(t0)) <= half_t)
    r_any, c_any = near.any(axis=1), near.any(axis=0)
    if not r_any.any():
        return slice(0, 0), slice(0, 0)
    r = np.flatnonzero(r_any)
    c = np.flatnonzero(c_any)
    return slice(int(r[0]), int(r[-1]) + 1), slice(int(c[0]), int(c[-1]) + 1)


def true_posterior_score(config: SyntheticConfig, n_studies: int = 20_000) -> dict[str, float]:
    """The RSNA 2024 score of the true posterior ``P(recorded grade | r)`` on all 25 targets.

    The label model is sampled for ``n_studies`` studies (from its own seed, independent of the
    dataset's), every target is predicted by its exact posterior given its latent ``r``, and
    :func:`~lumbarssl.metrics.rsna.rsna_score` scores them (empty cells are left out). No image
    classifier can do better in expectation: the score is the floor a model approaches.

    Returns:
        The four terms and ``score``.
    """
    from lumbarssl.metrics.rsna import rsna_score  # metrics import torch-free numpy only

    rng = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(2**31, 7)))
    y, probs, studies, names = [], [], [], []
    for condition in CONDITIONS:
        c = condition_label_config(config, condition)
        prevalence = np.tile(np.asarray(c.stenosis_prevalence), (n_studies, 1))
        r = sample_latent_stenosis(prevalence, c.healthy_r_beta, c.stenotic_r_beta, rng)
        recorded = reader_grade(r, c.grade_thresholds, c.reader_noise_sd, rng)
        y.append(recorded.ravel())
        probs.append(grade_probabilities(r.ravel(), c.grade_thresholds, c.reader_noise_sd))
        studies.append(np.repeat(np.arange(n_studies), len(LEVELS)))
        names.append(np.full(r.size, condition))
    score = rsna_score(
        np.concatenate(y), np.concatenate(probs), np.concatenate(studies), np.concatenate(names)
    )
    return {k: float(v) for k, v in score._asdict().items()}


def grade_name(grade: int | None) -> str:
    """The ``train.csv`` cell of a grade (empty for ``None``)."""
    return "" if grade is None else SEVERITIES[grade]


def nearest_index(values: Sequence[float], target: float) -> int:
    """Index of the value nearest to ``target`` (the first on ties)."""
    best = min(range(len(values)), key=lambda k: (abs(values[k] - target), k))
    return int(best)
