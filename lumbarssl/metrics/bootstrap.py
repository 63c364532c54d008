"""Percentile-bootstrap confidence intervals for every column of the paper's Table 1.

The paper's 2.13 % severe-to-normal error is 2 discs out of 94; with so few events an interval
says more than the point. Resampling is over discs, or over whole studies when study ids are
given (cluster bootstrap): the five discs of one patient share anatomy, scanner and reader, so
treating them as independent understates the uncertainty.

Each resample is reduced to a 3x3 confusion matrix by counting (a bincount of resampled
cluster multiplicities times per-cluster confusion counts), so 1000 resamples of a thousand
discs take milliseconds.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Final, NamedTuple

import numpy as np

from lumbarssl.metrics.classification import NUM_GRADES as _NUM_GRADES
from lumbarssl.metrics.classification import (
    TABLE1_COLUMNS,
    report_from_confusion,
)
from lumbarssl.metrics.classification import as_label_pair as _labels

if TYPE_CHECKING:  # only in annotations, so the API docs show `npt.ArrayLike` unexpanded
    import numpy.typing as npt

__all__ = ["ConfidenceInterval", "bootstrap_ci", "bootstrap_distribution"]

#: Resamples x clusters handled per chunk, to bound memory on large evaluation sets.
_CHUNK_ELEMENTS: Final[int] = 4_000_000
_CELLS: Final[int] = _NUM_GRADES * _NUM_GRADES


class ConfidenceInterval(NamedTuple):
    """A point estimate and its bootstrap interval."""

    #: The metric on the data as given.
    point: float
    #: Lower percentile of the bootstrap distribution.
    low: float
    #: Upper percentile of the bootstrap distribution.
    high: float


def bootstrap_distribution(
    y_true: npt.ArrayLike,
    y_pred: npt.ArrayLike,
    *,
    groups: npt.ArrayLike | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, npt.NDArray[np.float64]]:
    """Table 1's columns on bootstrap resamples of the discs (or of whole studies).

    Args:
        y_true: True grades, shape ``(N,)``.
        y_pred: Predicted grades, shape ``(N,)``.
        groups: Optional cluster id of each disc (e.g. study id), shape ``(N,)``; when given,
            whole clusters are drawn with replacement, otherwise single discs.
        n_resamples: Number of resamples ``R``.
        seed: Seed of the :func:`numpy.random.default_rng` generator.

    Returns:
        ``{column: values}`` for :data:`~lumbarssl.metrics.TABLE1_COLUMNS`, each of shape
        ``(R,)``; NaN where a resample leaves the column undefined (e.g. no severe disc drawn).

    Raises:
        ValueError: On invalid labels, a ``groups`` of another length, or ``n_resamples < 1``.
    """
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    t, p = _labels(y_true, y_pred)
    if groups is None:
        cluster = np.arange(t.size)
    else:
        group_array = np.asarray(groups)
        if group_array.shape != t.shape:
            raise ValueError(f"expected groups of shape (N,) = {t.shape}, got {group_array.shape}")
        cluster = np.unique(group_array, return_inverse=True)[1].reshape(-1)
    n_clusters = int(cluster.max()) + 1
    cell = t * _NUM_GRADES + p
    per_cluster = (
        np.bincount(cluster * _CELLS + cell, minlength=n_clusters * _CELLS)
        .reshape(n_clusters, _CELLS)
        .astype(np.float64)
    )
    rng = np.random.default_rng(seed)
    confusions = np.empty((n_resamples, _CELLS), dtype=np.float64)
    chunk = max(1, _CHUNK_ELEMENTS // n_clusters)
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        draws = rng.integers(0, n_clusters, size=(size, n_clusters))
        offsets = np.arange(size)[:, None] * n_clusters
        multiplicity = np.bincount((offsets + draws).ravel(), minlength=size * n_clusters).reshape(
            size, n_clusters
        )
        confusions[start : start + size] = multiplicity @ per_cluster
    return report_from_confusion(confusions.reshape(n_resamples, _NUM_GRADES, _NUM_GRADES))


def bootstrap_ci(
    y_true: npt.ArrayLike,
    y_pred: npt.ArrayLike,
    *,
    groups: npt.ArrayLike | None = None,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, ConfidenceInterval]:
    """Percentile-bootstrap intervals for every column of Table 1.

    The interval of a column is the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2``
    quantiles of its bootstrap distribution (:func:`bootstrap_distribution`). Resamples in
    which the column is undefined (a recall whose grade was not drawn, the S-N error without a
    severe disc) are left out of that column's quantiles; if every resample leaves it undefined
    the bounds are NaN. Percentile intervals need not be symmetric around the point.

    Args:
        y_true: True grades, shape ``(N,)``.
        y_pred: Predicted grades, shape ``(N,)``.
        groups: Optional study id of each disc, shape ``(N,)``, for a cluster bootstrap.
        n_resamples: Number of resamples.
        confidence: Coverage of the interval, in ``(0, 1)``.
        seed: Seed of the resampling.

    Returns:
        ``{column: ConfidenceInterval(point, low, high)}`` in the order of
        :data:`~lumbarssl.metrics.TABLE1_COLUMNS`; S-N Err is a fraction, not a percentage.

    Raises:
        ValueError: If ``confidence`` is outside ``(0, 1)``, or as
            :func:`bootstrap_distribution`.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    t, p = _labels(y_true, y_pred)
    confusion = np.zeros(_CELLS, dtype=np.float64)
    np.add.at(confusion, t * _NUM_GRADES + p, 1.0)
    point = report_from_confusion(confusion.reshape(_NUM_GRADES, _NUM_GRADES))
    samples = bootstrap_distribution(t, p, groups=groups, n_resamples=n_resamples, seed=seed)
    tail = (1.0 - confidence) / 2.0 * 100.0
    out: dict[str, ConfidenceInterval] = {}
    for column in TABLE1_COLUMNS:
        values = samples[column]
        if np.isnan(values).all():
            low = high = float("nan")
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                low, high = (float(q) for q in np.nanpercentile(values, [tail, 100.0 - tail]))
        out[column] = ConfidenceInterval(float(point[column]), low, high)
    return out
