from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import sklearn.metrics as skm
from hypothesis import given
from hypothesis import strategies as st

from lumbarssl.metrics import (
    TABLE1_COLUMNS,
    bootstrap_ci,
    bootstrap_distribution,
    disc_report,
)


def _noisy(n: int, accuracy: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y_true = rng.choice(3, size=n, p=[0.6, 0.25, 0.15])
    wrong = rng.random(n) > accuracy
    y_pred = np.where(wrong, (y_true + rng.integers(1, 3, size=n)) % 3, y_true)
    return y_true, y_pred


def test_resamples_agree_with_sklearn_on_the_same_discs() -> None:
    y_true, y_pred = _noisy(200, 0.7, seed=1)
    samples = bootstrap_distribution(y_true, y_pred, n_resamples=5, seed=3)
    # Disc-level resampling draws each resample's disc indices from default_rng(seed) as one
    # (n_resamples, N) block; rebuild those resamples and score them with scikit-learn.
    draws = np.random.default_rng(3).integers(0, 200, size=(5, 200))
    for r, idx in enumerate(draws):
        t, p = y_true[idx], y_pred[idx]
        recall = skm.recall_score(t, p, labels=[0, 1, 2], average=None, zero_division=np.nan)
        expected = {
            "R(N)": recall[0],
            "R(M)": recall[1],
            "R(S)": recall[2],
            "Acc": skm.accuracy_score(t, p),
            "Bal Acc": skm.balanced_accuracy_score(t, p),
            "S-N Err": np.mean(p[t == 2] == 0),
        }
        for column in TABLE1_COLUMNS:
            assert samples[column][r] == pytest.approx(expected[column]), (r, column)


def test_accuracy_spread_matches_the_binomial_standard_error() -> None:
    y_true, y_pred = _noisy(400, 0.8, seed=2)
    acc = disc_report(y_true, y_pred)["Acc"]
    samples = bootstrap_distribution(y_true, y_pred, n_resamples=2000, seed=0)["Acc"]
    assert samples.mean() == pytest.approx(acc, abs=0.005)
    assert samples.std() == pytest.approx(math.sqrt(acc * (1 - acc) / 400), rel=0.1)


@given(
    n=st.integers(5, 60),
    accuracy=st.floats(0.0, 1.0),
    seed=st.integers(0, 10_000),
    clustered=st.booleans(),
)
def test_every_interval_contains_its_point_estimate(
    n: int, accuracy: float, seed: int, clustered: bool
) -> None:
    y_true, y_pred = _noisy(n, accuracy, seed)
    groups = np.arange(n) // 5 if clustered else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = disc_report(y_true, y_pred)
    intervals = bootstrap_ci(y_true, y_pred, groups=groups, n_resamples=200, seed=seed)
    assert tuple(intervals) == TABLE1_COLUMNS
    for column, (point, low, high) in intervals.items():
        assert point == pytest.approx(expected[column], nan_ok=True)
        if math.isnan(point):
            continue
        assert low <= point <= high, column
        assert low >= 0.0
        assert high <= 1.0


def test_study_bootstrap_is_wider_when_discs_of_a_study_are_correlated() -> None:
    # 60 studies of 5 discs; within a study every disc is right or every disc is wrong.
    rng = np.random.default_rng(0)
    studies = np.repeat(np.arange(60), 5)
    y_true = rng.choice(3, size=300)
    study_right = rng.random(60) < 0.6
    y_pred = np.where(study_right[studies], y_true, (y_true + 1) % 3)
    discs = bootstrap_ci(y_true, y_pred, n_resamples=1000, seed=0)["Acc"]
    clusters = bootstrap_ci(y_true, y_pred, groups=studies, n_resamples=1000, seed=0)["Acc"]
    assert discs.point == clusters.point
    disc_width = discs.high - discs.low
    cluster_width = clusters.high - clusters.low
    # Independent discs: width ~ 2 * 1.96 * sqrt(p(1-p)/300); whole studies: /60 instead.
    assert cluster_width > 1.8 * disc_width
    assert cluster_width == pytest.approx(2 * 1.96 * math.sqrt(0.24 / 60), rel=0.25)


def test_singleton_groups_equal_the_disc_bootstrap() -> None:
    y_true, y_pred = _noisy(50, 0.7, seed=4)
    ids = np.array([f"study-{i:03d}" for i in range(50)])  # sorted like the discs
    a = bootstrap_distribution(y_true, y_pred, n_resamples=100, seed=9)
    b = bootstrap_distribution(y_true, y_pred, groups=ids, n_resamples=100, seed=9)
    for column in TABLE1_COLUMNS:
        np.testing.assert_array_equal(a[column], b[column])


def test_undefined_columns_are_nan_aware() -> None:
    # One severe disc: many resamples miss it, the others still give an interval.
    y_true = np.array([0] * 30 + [1] * 10 + [2])
    y_pred = np.array([0] * 30 + [1] * 10 + [0])
    samples = bootstrap_distribution(y_true, y_pred, n_resamples=500, seed=0)
    missing = np.isnan(samples["S-N Err"])
    assert 0.2 < missing.mean() < 0.55  # P(no draw of the severe disc) = (40/41)^41 ~ 0.36
    np.testing.assert_array_equal(np.isnan(samples["R(S)"]), missing)
    assert not np.isnan(samples["Bal Acc"]).any()
    interval = bootstrap_ci(y_true, y_pred, n_resamples=500, seed=0)["S-N Err"]
    assert interval == (1.0, 1.0, 1.0)

    # No severe disc at all: the column is NaN throughout.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        none = bootstrap_ci([0, 1, 0], [0, 1, 1], n_resamples=50)["S-N Err"]
    assert all(math.isnan(v) for v in none)


def test_seed_and_confidence() -> None:
    y_true, y_pred = _noisy(100, 0.7, seed=5)
    assert bootstrap_ci(y_true, y_pred, seed=1) == bootstrap_ci(y_true, y_pred, seed=1)
    assert bootstrap_ci(y_true, y_pred, seed=1) != bootstrap_ci(y_true, y_pred, seed=2)
    narrow = bootstrap_ci(y_true, y_pred, confidence=0.5)["Acc"]
    wide = bootstrap_ci(y_true, y_pred, confidence=0.99)["Acc"]
    assert wide.low < narrow.low <= narrow.high < wide.high


def test_bootstrap_validates() -> None:
    with pytest.raises(ValueError, match=r"confidence must be in \(0, 1\), got 1.0"):
        bootstrap_ci([0], [0], confidence=1.0)
    with pytest.raises(ValueError, match="n_resamples must be >= 1, got 0"):
        bootstrap_ci([0], [0], n_resamples=0)
    with pytest.raises(ValueError, match=r"expected groups of shape \(N,\) = \(2,\)"):
        bootstrap_ci([0, 1], [0, 1], groups=[1, 2, 3])
