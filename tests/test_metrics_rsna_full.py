"""The full RSNA 2024 score, against a re-implementation of the official Kaggle scorer.

``_official_score`` follows the competition's published metric step by step (solution rows
with one-hot grade columns and a ``sample_weight`` column; per condition group a
``sklearn.metrics.log_loss`` with ``sample_weight``; the any-severe-spinal label, weight and
prediction as per-study maxima; the unweighted average of the four losses), with dictionaries
in place of its pandas group-bys. It shares no code with :mod:`lumbarssl.metrics.rsna`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import sklearn.metrics

from lumbarssl.data.constants import CONDITION_SLUGS, LEVEL_SLUGS
from lumbarssl.metrics import (
    condition_group,
    read_submission,
    rsna_score,
    rsna_spinal_score,
    score_submission,
    study_rows,
    write_submission,
)

_TARGET_LEVELS = ("normal_mild", "moderate", "severe")


def _get_condition(full_location: str) -> str:
    for injury_condition in ("spinal", "foraminal", "subarticular"):
        if injury_condition in full_location:
            return injury_condition
    raise ValueError(f"condition not found in {full_location}")


def _official_score(
    solution: list[dict[str, object]], submission: dict[str, list[float]]
) -> tuple[list[float], float]:
    study = {str(r["row_id"]): str(r["row_id"]).split("_")[0] for r in solution}
    condition = {str(r["row_id"]): _get_condition(str(r["row_id"])) for r in solution}
    losses = []  # log_loss(y_true, y_pred, ...) positionally: sklearn renamed y_pred in 1.9
    for group in ("spinal", "foraminal", "subarticular"):
        rows = [r for r in solution if condition[str(r["row_id"])] == group]
        losses.append(
            sklearn.metrics.log_loss(
                [[r[c] for c in _TARGET_LEVELS] for r in rows],
                [submission[str(r["row_id"])] for r in rows],
                sample_weight=[r["sample_weight"] for r in rows],
            )
        )
    label: dict[str, float] = {}
    weight: dict[str, float] = {}
    prediction: dict[str, float] = {}
    for r in solution:
        row_id = str(r["row_id"])
        if condition[row_id] != "spinal":
            continue
        s = study[row_id]
        label[s] = max(label.get(s, 0.0), float(r["severe"]))  # type: ignore[arg-type]
        weight[s] = max(weight.get(s, 0.0), float(r["sample_weight"]))  # type: ignore[arg-type]
        prediction[s] = max(prediction.get(s, 0.0), submission[row_id][2])
    studies = sorted(label)
    losses.append(
        sklearn.metrics.log_loss(
            [label[s] for s in studies],
            [prediction[s] for s in studies],
            sample_weight=[weight[s] for s in studies],
            labels=[0, 1],
        )
    )
    return [float(v) for v in losses], float(np.average(losses, weights=[1, 1, 1, 1]))


def _random_competition(
    seed: int, n_studies: int = 12
) -> tuple[dict[str, int], dict[str, list[float]], dict[str, dict[str, np.ndarray]]]:
    """Graded targets (some missing), and per-study predictions for all 25 targets."""
    rng = np.random.default_rng(seed)
    solution: dict[str, int] = {}
    predictions: dict[str, dict[str, np.ndarray]] = {}
    submission: dict[str, list[float]] = {}
    for study in rng.choice(10**9, size=n_studies, replace=False):
        per_condition: dict[str, np.ndarray] = {}
        for condition in CONDITION_SLUGS:
            probs = rng.dirichlet([1.0, 1.0, 1.0], size=len(LEVEL_SLUGS))
            per_condition[condition] = probs
            for level, row in zip(LEVEL_SLUGS, probs, strict=True):
                row_id = f"{study}_{condition}_{level}"
                submission[row_id] = row.tolist()
                if rng.random() < 0.9:  # some targets are ungraded
                    solution[row_id] = int(rng.choice(3, p=[0.6, 0.25, 0.15]))
        predictions[str(study)] = per_condition
    return solution, submission, predictions


def _official_solution(solution: dict[str, int]) -> list[dict[str, object]]:
    return [
        {
            "row_id": row_id,
            **{c: float(grade == i) for i, c in enumerate(_TARGET_LEVELS)},
            "sample_weight": 2.0**grade,
        }
        for row_id, grade in solution.items()
    ]


@pytest.mark.parametrize("seed", range(5))
def test_matches_the_official_scorer_on_random_inputs(seed: int) -> None:
    solution, submission, _ = _random_competition(seed)
    terms, expected = _official_score(_official_solution(solution), submission)
    row_ids = list(solution)
    score = rsna_score(
        y_true=[solution[r] for r in row_ids],
        probabilities=[submission[r] for r in row_ids],
        study_ids=[r.split("_")[0] for r in row_ids],
        conditions=["_".join(r.split("_")[1:-2]) for r in row_ids],
    )
    assert [score.spinal, score.foraminal, score.subarticular, score.any_severe_spinal] == (
        pytest.approx(terms, rel=1e-12)
    )
    assert score.score == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_write_read_score_round_trip_matches_the_official_scorer(seed: int, tmp_path: Path) -> None:
    solution, submission, predictions = _random_competition(seed)
    rows = [row for study, p in predictions.items() for row in study_rows(study, p)]
    assert len(rows) == 25 * len(predictions)
    path = tmp_path / "submission.csv"
    assert write_submission(path, rows) == len(rows)
    read = read_submission(path)
    assert read == rows
    _, expected = _official_score(_official_solution(solution), submission)
    assert score_submission(read, solution).score == pytest.approx(expected, rel=1e-12)


def test_hand_computed_tiny_case() -> None:
    rows = [
        ("spinal_canal_stenosis", 2, [0.2, 0.3, 0.5]),
        ("spinal_canal_stenosis", 0, [0.5, 0.25, 0.25]),
        ("left_neural_foraminal_narrowing", 1, [0.25, 0.5, 0.25]),
        ("right_neural_foraminal_narrowing", 0, [0.8, 0.1, 0.1]),
        ("left_subarticular_stenosis", 2, [0.25, 0.25, 0.5]),
    ]
    score = rsna_score(
        y_true=[r[1] for r in rows],
        probabilities=[r[2] for r in rows],
        study_ids=["1"] * len(rows),
        conditions=[r[0] for r in rows],
    )
    ln2 = math.log(2)
    spinal = (4 * ln2 + 1 * ln2) / 5  # weights 4 (Severe) and 1 (Normal/Mild)
    foraminal = (2 * ln2 - math.log(0.8)) / 3  # left and right pool into one group
    subarticular = ln2
    any_severe = ln2  # label 1, prediction max(0.5, 0.25), weight 4
    assert score.spinal == pytest.approx(spinal)
    assert score.foraminal == pytest.approx(foraminal)
    assert score.subarticular == pytest.approx(subarticular)
    assert score.any_severe_spinal == pytest.approx(any_severe)
    assert score.score == pytest.approx((spinal + foraminal + subarticular + any_severe) / 4)


def test_spinal_rows_alone_give_the_spinal_score() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 40)
    probs = rng.dirichlet([1, 1, 1], 40)
    studies = np.repeat(np.arange(8), 5)
    full = rsna_score(y, probs, studies, ["Spinal Canal Stenosis"] * 40)
    spinal = rsna_spinal_score(y, probs, studies)
    assert math.isnan(full.foraminal)
    assert math.isnan(full.subarticular)
    assert (full.spinal, full.any_severe_spinal, full.score) == pytest.approx(tuple(spinal))
    # Without spinal rows there is no any-severe term either.
    no_spinal = rsna_score(y, probs, studies, ["right_subarticular_stenosis"] * 40)
    assert math.isnan(no_spinal.any_severe_spinal)
    assert no_spinal.score == pytest.approx(no_spinal.subarticular)


def test_condition_groups_and_validation() -> None:
    assert condition_group("Left Neural Foraminal Narrowing") == "foraminal"
    assert condition_group("123_right_subarticular_stenosis_l4_l5") == "subarticular"
    assert [condition_group(c) for c in CONDITION_SLUGS] == [
        "spinal",
        "foraminal",
        "foraminal",
        "subarticular",
        "subarticular",
    ]
    with pytest.raises(ValueError, match="none of the RSNA conditions"):
        condition_group("disc_herniation")
    with pytest.raises(ValueError, match=r"conditions of shape \(N,\) = \(2,\)"):
        rsna_score([0, 1], np.ones((2, 3)), [1, 1], ["spinal_canal_stenosis"])
    with pytest.raises(ValueError, match="none of the RSNA conditions"):
        rsna_score([0], np.ones((1, 3)), [1], ["knee"])
