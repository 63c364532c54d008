"""Disc-level grading metrics: the columns of the paper's Table 1 (Sec. 5.2, 6).

Labels are the class indices of :data:`lumbarssl.layout.SEVERITY_TO_LABEL`:
0 = Normal/Mild, 1 = Moderate, 2 = Severe. Inputs are array-likes of integers (NumPy arrays,
lists or CPU tensors), one entry per disc.

A recall is undefined for a class with no true disc; it is then NaN (with an
:class:`sklearn.exceptions.UndefinedMetricWarning`), and balanced accuracy averages the recalls
of the classes present, as :func:`sklearn.metrics.balanced_accuracy_score` does.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Final

import numpy as np
import sklearn.metrics as skm
from sklearn.exceptions import UndefinedMetricWarning

from lumbarssl.paper import SEVERITIES, SEVERITY_TO_LABEL

if TYPE_CHECKING:  # only in annotations, so the API docs show `npt.ArrayLike` unexpanded
    import numpy.typing as npt

__all__ = [
    "TABLE1_COLUMNS",
    "accuracy",
    "balanced_accuracy",
    "confusion_matrix",
    "disc_report",
    "per_class_recall",
    "report_from_confusion",
    "severe_to_normal_error",
]

#: The metric columns of the paper's Table 1, in order. Paper Sec. 6.
TABLE1_COLUMNS: Final[tuple[str, ...]] = ("R(N)", "R(M)", "R(S)", "Acc", "Bal Acc", "S-N Err")

#: Number of grades, and the class indices of Normal/Mild and Severe (paper Sec. 3.1).
NUM_GRADES: Final[int] = len(SEVERITIES)
NORMAL_LABEL: Final[int] = SEVERITY_TO_LABEL["Normal/Mild"]
SEVERE_LABEL: Final[int] = SEVERITY_TO_LABEL["Severe"]


def as_grades(values: npt.ArrayLike, name: str) -> npt.NDArray[np.int64]:
    """Validate one vector of grade labels and return it as an int64 array."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"expected {name} of shape (N,), got {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"expected integer grade labels in {name}, got dtype {array.dtype}")
    grades = array.astype(np.int64)
    bad = grades[(grades < 0) | (grades >= NUM_GRADES)]
    if bad.size:
        raise ValueError(
            f"{name} labels must be in [0, {NUM_GRADES}) ({', '.join(SEVERITIES)}), "
            f"got {sorted(set(bad.tolist()))}"
        )
    return grades


def as_label_pair(
    y_true: npt.ArrayLike, y_pred: npt.ArrayLike
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Validate paired true and predicted grades."""
    t, p = as_grades(y_true, "y_true"), as_grades(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length: {t.shape} vs {p.shape}")
    if t.size == 0:
        raise ValueError("no discs to evaluate: y_true and y_pred are empty")
    return t, p


def confusion_matrix(y_true: npt.ArrayLike, y_pred: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """Confusion counts, rows = true grade, columns = predicted grade.

    Args:
        y_true: True grades, shape ``(N,)``.
        y_pred: Predicted grades, shape ``(N,)``.

    Returns:
        Counts of shape ``(C, C)`` with ``C = 3``; entry ``[i, j]`` counts discs of grade ``i``
        predicted ``j`` (paper Fig. 3c).
    """
    t, p = as_label_pair(y_true, y_pred)
    counts: npt.NDArray[np.int64] = skm.confusion_matrix(t, p, labels=np.arange(NUM_GRADES)).astype(
        np.int64
    )
    return counts


def per_class_recall(y_true: npt.ArrayLike, y_pred: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Recall of each grade: R(N), R(M), R(S) of Table 1.

    Args:
        y_true: True grades, shape ``(N,)``.
        y_pred: Predicted grades, shape ``(N,)``.

    Returns:
        Recalls of shape ``(C,)``; NaN, with a warning, for a grade absent from ``y_true``.
    """
    t, p = as_label_pair(y_true, y_pred)
    absent = sorted(set(range(NUM_GRADES)) - set(t.tolist()))
    if absent:
        names = [SEVERITIES[i] for i in absent]
        warnings.warn(
            f"recall is undefined (NaN) for grades with no true disc: {names}",
            UndefinedMetricWarning,
            stacklevel=2,
        )
    recall: npt.NDArray[np.float64] = np.asarray(
        skm.recall_score(t, p, labels=np.arange(NUM_GRADES), average=None, zero_division=np.nan),
        dtype=np.float64,
    )
    return recall


def accuracy(y_true: npt.ArrayLike, y_pred: npt.ArrayLike) -> float:
    """Fraction of discs graded correctly (Acc of Table 1).

    Args:
        y_true: True grades, shape ``(N,)``.
        y_pred: Predicted grades, shape ``(N,)``.

    Returns:
        The accuracy in ``[0, 1]``.
    """
    t, p = as_label_pair(y_true, y_pred)
    return float(skm.accuracy_score(t, p))


def balanced_accuracy(y_true: npt.ArrayLike, y_pred: npt.ArrayLike) -> float:
    """Mean of the per-grade recalls over the grades present in ``y_true`` (Bal Acc of Table 1).

    Args:
        y_true: True grades, shape ``(N,)``.
        y_pred: Predicted grades, shape ``(N,)``.

    Returns:
        The balanced accuracy in ``[0, 1]``.
    """
    t, p = as_label_pair(y_true, y_pred)
    return float(skm.balanced_accuracy_score(t, p))


def severe_to_normal_error(y_true: npt.ArrayLike, y_pred: npt.ArrayLike) -> float:
    """Fraction of severe discs predicted Normal/Mild (S-N Err of Table 1).

    ``#{true Severe, predicted Normal/Mild} / #{true Severe}``; a severe disc predicted Moderate
    does not count as an error here. The paper prints it as a percentage (2.13 % = 2 / 94).

    Args:
        y_true: True grades, shape ``(N,)``.
        y_pred: Predicted grades, shape ``(N,)``.

    Returns:
        The error rate in ``[0, 1]``; NaN, with a warning, when there is no severe disc.
    """
    t, p = as_label_pair(y_true, y_pred)
    severe = t == SEVERE_LABEL
    if not severe.any():
        warnings.warn(
            "severe-to-normal error is undefined (NaN): no disc is truly Severe",
            UndefinedMetricWarning,
            stacklevel=2,
        )
        return float("nan")
    return float(np.mean(p[severe] == NORMAL_LABEL))


def disc_report(y_true: npt.ArrayLike, y_pred: npt.ArrayLike) -> dict[str, float]:
    """The paper's Table 1 row for one model.

    Paper Sec. 6; every column is computed with scikit-learn.

    Args:
        y_true: True grades, shape ``(N,)``.
        y_pred: Predicted grades, shape ``(N,)``.

    Returns:
        ``{column: value}`` for the columns of :data:`TABLE1_COLUMNS`, in that order. Every
        value is a fraction; S-N Err is not multiplied by 100.
    """
    recall = per_class_recall(y_true, y_pred)
    values = (
        *recall.tolist(),
        accuracy(y_true, y_pred),
        balanced_accuracy(y_true, y_pred),
        severe_to_normal_error(y_true, y_pred),
    )
    return dict(zip(TABLE1_COLUMNS, (float(v) for v in values), strict=True))


def report_from_confusion(confusion: npt.ArrayLike) -> dict[str, npt.NDArray[np.float64]]:
    """Table 1's columns computed from (a stack of) confusion matrices, vectorised.

    Gives the same values as :func:`disc_report` on the discs the matrix counts, with NaN
    (and no warning) where a recall or the S-N error is undefined; balanced accuracy averages
    the defined recalls. Used by :func:`~lumbarssl.metrics.bootstrap_ci` on thousands of
    resampled matrices at once.

    Args:
        confusion: Counts of shape ``(..., C, C)`` with ``C = 3``, rows = true grade.

    Returns:
        ``{column: values}`` for :data:`TABLE1_COLUMNS`, each of shape ``(...)``.

    Raises:
        ValueError: If the last two dimensions are not ``(3, 3)`` or a count is negative.
    """
    counts = np.asarray(confusion, dtype=np.float64)
    if counts.ndim < 2 or counts.shape[-2:] != (NUM_GRADES, NUM_GRADES):
        raise ValueError(
            f"expected confusion of shape (..., {NUM_GRADES}, {NUM_GRADES}), got {counts.shape}"
        )
    if (counts < 0).any():
        raise ValueError("confusion counts must be non-negative")
    support = counts.sum(axis=-1)
    correct = np.diagonal(counts, axis1=-2, axis2=-1)
    total = support.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, correct / support, np.nan)
        acc = np.where(total > 0, correct.sum(axis=-1) / total, np.nan)
        defined = support > 0
        n_defined = defined.sum(axis=-1)
        bal = np.where(
            n_defined > 0, np.where(defined, recall, 0.0).sum(axis=-1) / n_defined, np.nan
        )
        sn = np.where(
            support[..., SEVERE_LABEL] > 0,
            counts[..., SEVERE_LABEL, NORMAL_LABEL] / support[..., SEVERE_LABEL],
            np.nan,
        )
    columns = (*np.moveaxis(recall, -1, 0), acc, bal, sn)
    return dict(zip(TABLE1_COLUMNS, columns, strict=True))
