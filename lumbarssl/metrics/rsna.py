"""The RSNA 2024 Lumbar Spine competition metric: all 25 targets and ``any_severe_spinal``.

The competition scores predicted probabilities of the three grades with a sample-weighted log
loss, weights 1 / 2 / 4 for true Normal/Mild / Moderate / Severe, computed separately for the
three condition groups: spinal canal stenosis (5 levels), neural foraminal narrowing (left and
right, 10 targets) and subarticular stenosis (left and right, 10 targets); left and right pool
into one group, as the official scorer's substring match (``"spinal"``, ``"foraminal"``,
``"subarticular"`` in the row id) does. A fourth, study-level ``any_severe_spinal`` term
takes the label 1 when any spinal level of the study is Severe, the prediction as the largest
Severe probability over the study's spinal levels, and the weight as the largest sample weight
of those levels (4 if any level is Severe, 2 if the worst is Moderate, 1 otherwise), scored by
a weighted binary log loss. The score is the unweighted mean of the four terms (the
competition's ``any_severe_scalar`` was 1).

Every log loss is :func:`sklearn.metrics.log_loss`, which the competition used: a weighted
mean ``sum_i w_i * (-log p_i[y_i]) / sum_i w_i`` with probabilities clipped to
``[eps, 1 - eps]``, ``eps`` the machine epsilon of float64. Probability rows are divided by
their sum first; the competition's ``any_severe`` term took the maximum of the submitted Severe
column *before* any normalisation, which is the same whenever rows already sum to one (as
softmax outputs and :func:`~lumbarssl.metrics.write_submission` files do).

A condition group with no scored row (spinal-only predictions today) is reported as NaN and
left out of the mean, so on spinal rows alone :func:`rsna_score` equals
:func:`rsna_spinal_score`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Final, NamedTuple

import numpy as np
import sklearn.metrics as skm

from lumbarssl.layout import CONDITION_SLUGS, CONDITIONS
from lumbarssl.metrics.classification import NUM_GRADES as _NUM_GRADES
from lumbarssl.metrics.classification import SEVERE_LABEL as _SEVERE
from lumbarssl.metrics.classification import as_grades as _grades

if TYPE_CHECKING:  # only in annotations, so the API docs show `npt.ArrayLike` unexpanded
    import numpy.typing as npt

__all__ = [
    "RSNA_CONDITION_GROUPS",
    "RSNA_SAMPLE_WEIGHTS",
    "RSNAScore",
    "RSNASpinalScore",
    "condition_group",
    "rsna_score",
    "rsna_spinal_score",
]

#: Sample weight of a target by its true grade, for Normal/Mild, Moderate and Severe.
RSNA_SAMPLE_WEIGHTS: Final[tuple[float, float, float]] = (1.0, 2.0, 4.0)
#: The condition groups the competition scores separately, in the official scorer's order.
RSNA_CONDITION_GROUPS: Final[tuple[str, ...]] = ("spinal", "foraminal", "subarticular")


class RSNASpinalScore(NamedTuple):
    """The spinal-canal terms of the RSNA 2024 metric (lower is better)."""

    #: Sample-weighted log loss over discs.
    spinal: float
    #: Weighted binary log loss of the study-level any-severe label.
    any_severe_spinal: float
    #: Mean of the two terms.
    score: float


class RSNAScore(NamedTuple):
    """The RSNA 2024 competition metric and its four terms (lower is better).

    A term whose condition group has no scored row is NaN and is left out of :attr:`score`.
    """

    #: Sample-weighted log loss over spinal canal stenosis targets.
    spinal: float
    #: Sample-weighted log loss over left and right neural foraminal narrowing targets.
    foraminal: float
    #: Sample-weighted log loss over left and right subarticular stenosis targets.
    subarticular: float
    #: Weighted binary log loss of the study-level any-severe-spinal label.
    any_severe_spinal: float
    #: Mean of the terms that are not NaN (all four for a full submission).
    score: float


def condition_group(condition: str) -> str:
    """The scored group of a condition, as the official scorer finds it in a row id.

    Args:
        condition: A condition slug of ``train.csv`` (``"left_neural_foraminal_narrowing"``),
            a condition of ``train_label_coordinates.csv`` (``"Left Neural Foraminal
            Narrowing"``) or a whole row id (``"123_spinal_canal_stenosis_l1_l2"``).

    Returns:
        ``"spinal"``, ``"foraminal"`` or ``"subarticular"``.

    Raises:
        ValueError: If the text names none of the three.
    """
    text = condition.lower()
    for group in RSNA_CONDITION_GROUPS:
        if group in text:
            return group
    raise ValueError(
        f"condition {condition!r} is none of the RSNA conditions; use a slug of "
        f"{CONDITION_SLUGS} or a name of {CONDITIONS}"
    )


def _probabilities(probabilities: npt.ArrayLike, n: int) -> npt.NDArray[np.float64]:
    """Validate ``(N, 3)`` non-negative scores and divide each row by its sum."""
    probs = np.asarray(probabilities, dtype=np.float64)
    if probs.shape != (n, _NUM_GRADES):
        raise ValueError(
            f"expected probabilities of shape (N, {_NUM_GRADES}) = {(n, _NUM_GRADES)}, "
            f"got {probs.shape}"
        )
    if not np.isfinite(probs).all() or (probs < 0).any():
        raise ValueError("probabilities must be finite and non-negative")
    row_sums = probs.sum(axis=1, keepdims=True)
    if (row_sums == 0).any():
        raise ValueError(f"probability rows sum to zero at rows {np.flatnonzero(row_sums == 0)}")
    normalised: npt.NDArray[np.float64] = probs / row_sums
    return normalised


def _weighted_log_loss(t: npt.NDArray[np.int64], probs: npt.NDArray[np.float64]) -> float:
    weights = np.asarray(RSNA_SAMPLE_WEIGHTS, dtype=np.float64)[t]
    return float(skm.log_loss(t, probs, sample_weight=weights, labels=np.arange(_NUM_GRADES)))


def _any_severe(
    t: npt.NDArray[np.int64], probs: npt.NDArray[np.float64], studies: npt.NDArray[np.generic]
) -> float:
    """Weighted binary log loss of "any level Severe", one row per study."""
    weights = np.asarray(RSNA_SAMPLE_WEIGHTS, dtype=np.float64)[t]
    study_index = np.unique(studies, return_inverse=True)[1].reshape(-1)
    n_studies = int(study_index.max()) + 1
    any_label = np.zeros(n_studies, dtype=np.int64)
    np.maximum.at(any_label, study_index, (t == _SEVERE).astype(np.int64))
    any_prob = np.zeros(n_studies, dtype=np.float64)
    np.maximum.at(any_prob, study_index, probs[:, _SEVERE])
    any_weight = np.zeros(n_studies, dtype=np.float64)
    np.maximum.at(any_weight, study_index, weights)
    return float(skm.log_loss(any_label, any_prob, sample_weight=any_weight, labels=np.arange(2)))


def rsna_score(
    y_true: npt.ArrayLike,
    probabilities: npt.ArrayLike,
    study_ids: npt.ArrayLike,
    conditions: npt.ArrayLike,
) -> RSNAScore:
    """Score grade probabilities of any RSNA 2024 targets as the competition did.

    One row per scored target, i.e. per (study, condition, level) with a true grade; rows
    without a grade are not passed (the competition did not score them).

    Args:
        y_true: True grades, shape ``(N,)`` (0 Normal/Mild, 1 Moderate, 2 Severe).
        probabilities: Non-negative grade scores, shape ``(N, 3)``; each row is divided by its
            sum.
        study_ids: Study of each row, shape ``(N,)``; ``any_severe_spinal`` has one row per
            study with spinal rows.
        conditions: Condition of each row, shape ``(N,)``, as :func:`condition_group` accepts
            (slugs such as ``"right_subarticular_stenosis"`` or names such as
            ``"Spinal Canal Stenosis"``).

    Returns:
        The :class:`RSNAScore`.

    Raises:
        ValueError: On shape mismatches, invalid grades, unknown conditions, or probabilities
            that are negative, non-finite or sum to zero in a row.
    """
    t = _grades(y_true, "y_true")
    if t.size == 0:
        raise ValueError("no targets to evaluate: y_true is empty")
    probs = _probabilities(probabilities, t.size)
    studies = np.asarray(study_ids)
    if studies.shape != t.shape:
        raise ValueError(f"expected study_ids of shape (N,) = {t.shape}, got {studies.shape}")
    names = np.asarray(conditions)
    if names.shape != t.shape:
        raise ValueError(f"expected conditions of shape (N,) = {t.shape}, got {names.shape}")
    unique, inverse = np.unique(names.astype(str), return_inverse=True)
    groups = np.asarray([condition_group(str(name)) for name in unique])[inverse.reshape(-1)]

    terms: dict[str, float] = {}
    for group in RSNA_CONDITION_GROUPS:
        rows = groups == group
        terms[group] = _weighted_log_loss(t[rows], probs[rows]) if rows.any() else math.nan
    spinal = groups == "spinal"
    any_severe = (
        _any_severe(t[spinal], probs[spinal], studies[spinal]) if spinal.any() else math.nan
    )
    present = [v for v in (*terms.values(), any_severe) if not math.isnan(v)]
    return RSNAScore(
        spinal=terms["spinal"],
        foraminal=terms["foraminal"],
        subarticular=terms["subarticular"],
        any_severe_spinal=any_severe,
        score=float(np.mean(present)),
    )


def rsna_spinal_score(
    y_true: npt.ArrayLike,
    probabilities: npt.ArrayLike,
    study_ids: npt.ArrayLike,
) -> RSNASpinalScore:
    """Score spinal-canal grade probabilities as the RSNA 2024 competition did.

    The spinal terms of :func:`rsna_score`, for rows that are all spinal canal stenosis.

    Args:
        y_true: True grades of the labelled discs, shape ``(N,)`` (0 Normal/Mild, 1 Moderate,
            2 Severe).
        probabilities: Non-negative grade scores, shape ``(N, C)`` with ``C = 3``; each row is
            divided by its sum.
        study_ids: Study of each disc, shape ``(N,)``; the any-severe term has one row per study.

    Returns:
        The :class:`RSNASpinalScore`.

    Raises:
        ValueError: On shape mismatches, invalid grades, or probabilities that are negative,
            non-finite or sum to zero in a row.
    """
    t = _grades(y_true, "y_true")
    if t.size == 0:
        raise ValueError("no discs to evaluate: y_true is empty")
    probs = _probabilities(probabilities, t.size)
    studies = np.asarray(study_ids)
    if studies.shape != t.shape:
        raise ValueError(f"expected study_ids of shape (N,) = {t.shape}, got {studies.shape}")
    spinal = _weighted_log_loss(t, probs)
    any_severe = _any_severe(t, probs, studies)
    return RSNASpinalScore(spinal, any_severe, (spinal + any_severe) / 2.0)
