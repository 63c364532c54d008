"""The spinal-canal part of the RSNA 2024 Lumbar Spine competition metric.

The competition scores predicted probabilities of the three grades with a sample-weighted log
loss, weights 1 / 2 / 4 for true Normal/Mild / Moderate / Severe. For spinal canal stenosis it
adds a study-level ``any_severe_spinal`` term: the label is 1 when any level of the study is
Severe, the prediction is the largest Severe probability over the study's levels, and the
weight is the largest sample weight of its levels (4 if any level is Severe, 2 if the worst is
Moderate, 1 otherwise), scored by a weighted binary log loss. The score is the mean of the two
terms. (The full competition score also averages the foraminal and subarticular conditions.)

Both log losses are :func:`sklearn.metrics.log_loss`, which the competition used: a weighted
mean ``sum_i w_i * (-log p_i[y_i]) / sum_i w_i`` with probabilities clipped to
``[eps, 1 - eps]``, ``eps`` the machine epsilon of float64. Probability rows are divided by
their sum first; the competition's ``any_severe`` term took the maximum of the submitted Severe
column *before* any normalisation, which is the same whenever rows already sum to one (as
softmax outputs do).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, NamedTuple

import numpy as np
import sklearn.metrics as skm

from lumbarssl.metrics.classification import NUM_GRADES as _NUM_GRADES
from lumbarssl.metrics.classification import SEVERE_LABEL as _SEVERE
from lumbarssl.metrics.classification import as_grades as _grades

if TYPE_CHECKING:  # only in annotations, so the API docs show `npt.ArrayLike` unexpanded
    import numpy.typing as npt

__all__ = ["RSNA_SAMPLE_WEIGHTS", "RSNASpinalScore", "rsna_spinal_score"]

#: Sample weight of a disc by its true grade, for Normal/Mild, Moderate and Severe.
RSNA_SAMPLE_WEIGHTS: Final[tuple[float, float, float]] = (1.0, 2.0, 4.0)


class RSNASpinalScore(NamedTuple):
    """The spinal-canal terms of the RSNA 2024 metric (lower is better)."""

    #: Sample-weighted log loss over discs.
    spinal: float
    #: Weighted binary log loss of the study-level any-severe label.
    any_severe_spinal: float
    #: Mean of the two terms.
    score: float


def rsna_spinal_score(
    y_true: npt.ArrayLike,
    probabilities: npt.ArrayLike,
    study_ids: npt.ArrayLike,
) -> RSNASpinalScore:
    """Score spinal-canal grade probabilities as the RSNA 2024 competition did.

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
    probs = np.asarray(probabilities, dtype=np.float64)
    studies = np.asarray(study_ids)
    if probs.shape != (t.size, _NUM_GRADES):
        raise ValueError(
            f"expected probabilities of shape (N, {_NUM_GRADES}) = {(t.size, _NUM_GRADES)}, "
            f"got {probs.shape}"
        )
    if studies.shape != t.shape:
        raise ValueError(f"expected study_ids of shape (N,) = {t.shape}, got {studies.shape}")
    if not np.isfinite(probs).all() or (probs < 0).any():
        raise ValueError("probabilities must be finite and non-negative")
    row_sums = probs.sum(axis=1, keepdims=True)
    if (row_sums == 0).any():
        raise ValueError(f"probability rows sum to zero at discs {np.flatnonzero(row_sums == 0)}")
    probs = probs / row_sums

    weights = np.asarray(RSNA_SAMPLE_WEIGHTS, dtype=np.float64)[t]
    spinal = float(skm.log_loss(t, probs, sample_weight=weights, labels=np.arange(_NUM_GRADES)))

    study_index = np.unique(studies, return_inverse=True)[1].reshape(-1)
    n_studies = int(study_index.max()) + 1
    any_label = np.zeros(n_studies, dtype=np.int64)
    np.maximum.at(any_label, study_index, (t == _SEVERE).astype(np.int64))
    any_prob = np.zeros(n_studies, dtype=np.float64)
    np.maximum.at(any_prob, study_index, probs[:, _SEVERE])
    any_weight = np.zeros(n_studies, dtype=np.float64)
    np.maximum.at(any_weight, study_index, weights)
    any_severe = float(
        skm.log_loss(any_label, any_prob, sample_weight=any_weight, labels=np.arange(2))
    )
    return RSNASpinalScore(spinal, any_severe, (spinal + any_severe) / 2.0)
