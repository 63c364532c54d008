from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from lumbarssl.metrics import RSNA_SAMPLE_WEIGHTS, rsna_spinal_score


def test_sample_weights_are_the_competitions() -> None:
    assert RSNA_SAMPLE_WEIGHTS == (1.0, 2.0, 4.0)


def test_hand_computed_two_studies() -> None:
    # Study A: levels Normal, Severe. Study B: levels Normal, Moderate.
    y_true = [0, 2, 0, 1]
    probs = [
        [0.5, 0.25, 0.25],
        [0.2, 0.3, 0.5],
        [0.8, 0.1, 0.1],
        [0.25, 0.5, 0.25],
    ]
    studies = ["A", "A", "B", "B"]
    score = rsna_spinal_score(y_true, probs, studies)
    # Weighted log loss: weights 1, 4, 1, 2 on -log p(true grade).
    spinal = 1 * -math.log(0.5) + 4 * -math.log(0.5) + 1 * -math.log(0.8) + 2 * -math.log(0.5)
    spinal /= 1 + 4 + 1 + 2
    # any_severe: A label 1, p = max(0.25, 0.5) = 0.5, weight 4;
    #             B label 0, p = max(0.1, 0.25) = 0.25, weight max(1, 2) = 2.
    any_severe = (4 * -math.log(0.5) + 2 * -math.log(1 - 0.25)) / (4 + 2)
    assert score.spinal == pytest.approx(spinal)
    assert score.any_severe_spinal == pytest.approx(any_severe)
    assert score.score == pytest.approx((spinal + any_severe) / 2)


def test_rows_are_normalised_before_scoring() -> None:
    y_true = [0, 1, 2]
    probs = np.array([[2.0, 1.0, 1.0], [1.0, 1.0, 2.0], [0.0, 3.0, 1.0]])
    scaled = probs * np.array([[10.0], [0.5], [3.0]])
    assert rsna_spinal_score(y_true, probs, [1, 1, 2]) == pytest.approx(
        rsna_spinal_score(y_true, scaled, [1, 1, 2])
    )
    score = rsna_spinal_score(y_true, probs, [1, 1, 2])
    expected = (-math.log(0.5) - 2 * math.log(0.25) - 4 * math.log(0.25)) / 7
    assert score.spinal == pytest.approx(expected)


def test_zero_probability_is_clipped_not_infinite() -> None:
    score = rsna_spinal_score([2], [[1.0, 0.0, 0.0]], [7])
    assert math.isfinite(score.spinal)
    assert score.spinal == pytest.approx(-math.log(np.finfo(np.float64).eps), rel=1e-6)


@given(
    probs=hnp.arrays(np.float64, (6, 3), elements=st.floats(0.01, 1.0)),
    y_true=st.lists(st.integers(0, 2), min_size=6, max_size=6),
)
def test_matches_a_definition_written_out(probs: np.ndarray, y_true: list[int]) -> None:
    studies = [0, 0, 0, 1, 1, 2]
    p = probs / probs.sum(axis=1, keepdims=True)
    w = [RSNA_SAMPLE_WEIGHTS[t] for t in y_true]
    spinal = sum(wi * -math.log(p[i, t]) for i, (wi, t) in enumerate(zip(w, y_true, strict=True)))
    spinal /= sum(w)
    num = den = 0.0
    for study in (0, 1, 2):
        rows = [i for i, s in enumerate(studies) if s == study]
        label = any(y_true[i] == 2 for i in rows)
        prob = max(p[i, 2] for i in rows)
        weight = max(w[i] for i in rows)
        num += weight * -math.log(prob if label else 1 - prob)
        den += weight
    score = rsna_spinal_score(y_true, probs, studies)
    assert score.spinal == pytest.approx(spinal)
    assert score.any_severe_spinal == pytest.approx(num / den)


def test_confident_correct_predictions_score_better() -> None:
    y_true = [0, 1, 2, 0, 0]
    studies = [1, 1, 1, 2, 2]
    onehot = np.eye(3)[y_true]
    sharp = rsna_spinal_score(y_true, 0.9 * onehot + 0.1 / 3, studies)
    flat = rsna_spinal_score(y_true, np.full((5, 3), 1 / 3), studies)
    assert sharp.score < flat.score
    assert flat.spinal == pytest.approx(math.log(3))


def test_rsna_validates() -> None:
    with pytest.raises(ValueError, match=r"probabilities of shape \(N, 3\) = \(2, 3\)"):
        rsna_spinal_score([0, 1], [[1.0, 0.0, 0.0]], [1, 1])
    with pytest.raises(ValueError, match=r"study_ids of shape \(N,\) = \(2,\)"):
        rsna_spinal_score([0, 1], np.ones((2, 3)), [1])
    with pytest.raises(ValueError, match="non-negative"):
        rsna_spinal_score([0], [[-0.1, 0.6, 0.5]], [1])
    with pytest.raises(ValueError, match="sum to zero"):
        rsna_spinal_score([0], [[0.0, 0.0, 0.0]], [1])
    with pytest.raises(ValueError, match=r"y_true labels must be in \[0, 3\)"):
        rsna_spinal_score([5], [[1.0, 0.0, 0.0]], [1])
