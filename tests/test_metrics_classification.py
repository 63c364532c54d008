from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sklearn.exceptions import UndefinedMetricWarning

from lumbarssl.metrics import (
    TABLE1_COLUMNS,
    accuracy,
    balanced_accuracy,
    confusion_matrix,
    disc_report,
    per_class_recall,
    report_from_confusion,
    severe_to_normal_error,
)

NORMAL, MODERATE, SEVERE = 0, 1, 2


@st.composite
def _pairs(draw: st.DrawFn, min_size: int = 1) -> tuple[list[int], list[int]]:
    n = draw(st.integers(min_size, 40))
    grade = st.integers(0, 2)
    return (
        draw(st.lists(grade, min_size=n, max_size=n)),
        draw(st.lists(grade, min_size=n, max_size=n)),
    )


def _reference_row(y_true: list[int], y_pred: list[int]) -> dict[str, float]:
    """Table 1 written straight from the definitions, with plain loops."""
    recalls = []
    for grade in (NORMAL, MODERATE, SEVERE):
        mine = [p for t, p in zip(y_true, y_pred, strict=True) if t == grade]
        recalls.append(sum(p == grade for p in mine) / len(mine) if mine else math.nan)
    defined = [r for r in recalls if not math.isnan(r)]
    severe = [p for t, p in zip(y_true, y_pred, strict=True) if t == SEVERE]
    return {
        "R(N)": recalls[0],
        "R(M)": recalls[1],
        "R(S)": recalls[2],
        "Acc": sum(t == p for t, p in zip(y_true, y_pred, strict=True)) / len(y_true),
        "Bal Acc": sum(defined) / len(defined),
        "S-N Err": sum(p == NORMAL for p in severe) / len(severe) if severe else math.nan,
    }


def _assert_rows_equal(got: dict[str, float], expected: dict[str, float]) -> None:
    assert list(got) == list(expected)
    for key in expected:
        assert got[key] == pytest.approx(expected[key], nan_ok=True), key


def test_table1_columns_are_the_papers() -> None:
    assert TABLE1_COLUMNS == ("R(N)", "R(M)", "R(S)", "Acc", "Bal Acc", "S-N Err")


def test_hand_computed_report() -> None:
    y_true = [0, 0, 0, 0, 1, 1, 2, 2, 2, 2]
    y_pred = [0, 0, 0, 1, 1, 2, 0, 1, 2, 2]
    report = disc_report(y_true, y_pred)
    assert tuple(report) == TABLE1_COLUMNS
    expected = [3 / 4, 1 / 2, 2 / 4, 6 / 10, (3 / 4 + 1 / 2 + 2 / 4) / 3, 1 / 4]
    assert list(report.values()) == pytest.approx(expected)
    np.testing.assert_array_equal(
        confusion_matrix(y_true, y_pred), [[3, 1, 0], [0, 1, 1], [1, 1, 2]]
    )


def test_paper_severe_to_normal_count() -> None:
    # 94 severe discs, 2 called Normal/Mild, the rest Moderate or Severe: 2.13 % (Sec. 5.2).
    y_true = [SEVERE] * 94
    y_pred = [NORMAL] * 2 + [MODERATE] * 20 + [SEVERE] * 72
    assert severe_to_normal_error(y_true, y_pred) == pytest.approx(0.0213, abs=5e-5)


@given(_pairs())
def test_report_matches_loop_reference(pair: tuple[list[int], list[int]]) -> None:
    y_true, y_pred = pair
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = disc_report(np.asarray(y_true), np.asarray(y_pred))
    _assert_rows_equal(report, _reference_row(y_true, y_pred))


@given(_pairs())
def test_vectorised_report_matches_sklearn_report(pair: tuple[list[int], list[int]]) -> None:
    y_true, y_pred = pair
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = disc_report(y_true, y_pred)
    got = report_from_confusion(confusion_matrix(y_true, y_pred))
    _assert_rows_equal({k: float(v) for k, v in got.items()}, expected)


@given(st.lists(st.integers(0, 2), min_size=1, max_size=40))
def test_perfect_prediction(y: list[int]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = disc_report(y, y)
    assert report["Acc"] == 1.0
    assert report["Bal Acc"] == 1.0
    if SEVERE in y:
        assert report["S-N Err"] == 0.0
    for column, grade in (("R(N)", NORMAL), ("R(M)", MODERATE), ("R(S)", SEVERE)):
        assert report[column] == (1.0 if grade in y else pytest.approx(math.nan, nan_ok=True))


@given(_pairs(), st.data())
def test_severe_to_normal_ignores_moderate_predictions(
    pair: tuple[list[int], list[int]], data: st.DataObject
) -> None:
    y_true, y_pred = pair
    y_true = [*y_true, SEVERE]
    y_pred = [*y_pred, MODERATE]
    base = severe_to_normal_error(y_true, y_pred)
    # Swapping any severe disc's prediction between Moderate and Severe changes nothing.
    swapped = [
        (data.draw(st.sampled_from([MODERATE, SEVERE])) if t == SEVERE and p != NORMAL else p)
        for t, p in zip(y_true, y_pred, strict=True)
    ]
    assert severe_to_normal_error(y_true, swapped) == base
    # Turning the last (Moderate) prediction into Normal/Mild adds one error.
    n_severe = y_true.count(SEVERE)
    worse = [*y_pred[:-1], NORMAL]
    assert severe_to_normal_error(y_true, worse) == pytest.approx(base + 1 / n_severe)


def test_undefined_metrics_are_nan_with_a_warning() -> None:
    with pytest.warns(UndefinedMetricWarning, match="no disc is truly Severe"):
        assert math.isnan(severe_to_normal_error([0, 1], [0, 2]))
    with pytest.warns(UndefinedMetricWarning, match=r"\['Severe'\]"):
        recall = per_class_recall([0, 1], [0, 2])
    np.testing.assert_array_equal(recall, [1.0, 0.0, np.nan])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert balanced_accuracy([0, 1], [0, 2]) == pytest.approx(0.5)
    assert accuracy([0, 1], [0, 2]) == pytest.approx(0.5)


def test_inputs_are_validated() -> None:
    with pytest.raises(ValueError, match=r"y_pred labels must be in \[0, 3\).*got \[3\]"):
        accuracy([0, 1], [0, 3])
    with pytest.raises(ValueError, match="differ in length"):
        accuracy([0, 1], [0])
    with pytest.raises(ValueError, match="integer grade labels in y_true"):
        accuracy([0.0, 1.0], [0, 1])
    with pytest.raises(ValueError, match="empty"):
        disc_report([], [])
    with pytest.raises(ValueError, match=r"expected y_true of shape \(N,\)"):
        accuracy([[0, 1]], [[0, 1]])
    with pytest.raises(ValueError, match=r"expected confusion of shape \(\.\.\., 3, 3\)"):
        report_from_confusion(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="non-negative"):
        report_from_confusion(-np.ones((3, 3)))


def test_report_from_confusion_is_vectorised() -> None:
    stack = np.stack([np.eye(3) * 5, np.ones((3, 3))])
    got = report_from_confusion(stack)
    np.testing.assert_allclose(got["Acc"], [1.0, 1 / 3])
    np.testing.assert_allclose(got["S-N Err"], [0.0, 1 / 3])
    assert all(v.shape == (2,) for v in got.values())
