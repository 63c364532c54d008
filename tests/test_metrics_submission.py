from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from lumbarssl.data.constants import CONDITION_SLUGS, LEVEL_SLUGS, TRAIN_COLUMNS
from lumbarssl.errors import DataError, InputError
from lumbarssl.metrics import (
    SUBMISSION_COLUMNS,
    SubmissionRow,
    make_row_id,
    parse_row_id,
    read_solution,
    read_submission,
    rsna_spinal_score,
    score_submission,
    study_rows,
    write_submission,
)

_SPINAL = np.array(
    [
        [0.7, 0.2, 0.1],
        [0.6, 0.3, 0.1],
        [0.5, 0.3, 0.2],
        [0.2, 0.5, 0.3],
        [0.1, 0.3, 0.6],
    ]
)


def test_spinal_only_rows_and_file(tmp_path: Path) -> None:
    rows = study_rows(4003253, {"Spinal Canal Stenosis": _SPINAL})
    assert [r.row_id for r in rows] == [
        f"4003253_spinal_canal_stenosis_{level}" for level in LEVEL_SLUGS
    ]
    path = tmp_path / "out" / "submission.csv"
    assert write_submission(path, rows) == 5
    lines = path.read_text().splitlines()
    assert lines[0] == "row_id,normal_mild,moderate,severe"
    assert lines[1] == "4003253_spinal_canal_stenosis_l1_l2,0.7,0.2,0.1"
    assert read_submission(path) == rows
    assert not list(path.parent.glob(".*.tmp"))


def test_round_trip_scores_like_the_spinal_metric(tmp_path: Path) -> None:
    grades = {"l1_l2": 0, "l2_l3": 1, "l4_l5": 2}  # l3_l4 and l5_s1 ungraded
    solution = {f"7_spinal_canal_stenosis_{level}": g for level, g in grades.items()}
    path = tmp_path / "submission.csv"
    write_submission(path, study_rows("7", {"spinal_canal_stenosis": _SPINAL}))
    score = score_submission(read_submission(path), solution)
    picked = _SPINAL[[0, 1, 3]]
    expected = rsna_spinal_score(list(grades.values()), picked, ["7"] * 3)
    assert (score.spinal, score.any_severe_spinal, score.score) == pytest.approx(tuple(expected))
    assert math.isnan(score.foraminal)


def test_subset_of_levels_and_all_targets_parse() -> None:
    rows = study_rows(1, {"left_subarticular_stenosis": _SPINAL[:2]}, levels=["L4/L5", "l5_s1"])
    assert [r.row_id for r in rows] == [
        "1_left_subarticular_stenosis_l4_l5",
        "1_left_subarticular_stenosis_l5_s1",
    ]
    for column in TRAIN_COLUMNS[1:]:
        condition, level = parse_row_id(f"99_{column}")[1:]
        assert f"{condition}_{level}" == column
    assert make_row_id(5, "Right Neural Foraminal Narrowing", "L1/L2") == (
        "5_right_neural_foraminal_narrowing_l1_l2"
    )
    assert parse_row_id("5_right_neural_foraminal_narrowing_l1_l2") == (
        "5",
        "right_neural_foraminal_narrowing",
        "l1_l2",
    )
    assert len({make_row_id(1, c, lv) for c in CONDITION_SLUGS for lv in LEVEL_SLUGS}) == 25


def test_writer_validates_and_writes_nothing_on_error(tmp_path: Path) -> None:
    path = tmp_path / "submission.csv"
    good = SubmissionRow("1", "spinal_canal_stenosis", "l1_l2", (0.5, 0.25, 0.25))
    cases = [
        (SubmissionRow("1", "spinal_canal_stenosis", "l2_l3", (2.0, 1.0, 1.0)), "sum to 4"),
        (SubmissionRow("1", "spinal_canal_stenosis", "l2_l3", (1.5, -0.5, 0.0)), "non-negative"),
        (SubmissionRow("1", "spinal_canal_stenosis", "l2_l3", (math.nan, 0.5, 0.5)), "finite"),
        (good, "duplicate submission row '1_spinal_canal_stenosis_l1_l2'"),
        (SubmissionRow("1", "spinal_canal", "l2_l3", (1.0, 0.0, 0.0)), "unknown condition"),
        (SubmissionRow("1_2", "spinal_canal_stenosis", "l2_l3", (1.0, 0.0, 0.0)), "without '_'"),
    ]
    for bad, message in cases:
        with pytest.raises(InputError, match=message):
            write_submission(path, [good, bad])
        assert not path.exists()
    with pytest.raises(InputError, match=r"expected probabilities of shape \(5, 3\)"):
        study_rows(1, {"spinal_canal_stenosis": _SPINAL[:4]})
    with pytest.raises(InputError, match="unknown level"):
        study_rows(1, {"spinal_canal_stenosis": _SPINAL[:1]}, levels=["L6/S1"])


def test_reader_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "submission.csv"
    header = ",".join(SUBMISSION_COLUMNS)
    cases = [
        ("row_id,a,b,c\n", ":1: expected the columns"),
        (f"{header}\n1_spinal_canal_stenosis_l1_l2,1,0,0\n1_spinal_l1_l2,1,0,0\n", ":3: row id"),
        (f"{header}\n1_spinal_canal_stenosis_l1_l2,1,-1,0\n", ":2: moderate = '-1'"),
        (f"{header}\n1_spinal_canal_stenosis_l1_l2,x,0,0\n", ":2: normal_mild = 'x'"),
        (
            f"{header}\n1_spinal_canal_stenosis_l1_l2,1,0,0\n1_spinal_canal_stenosis_l1_l2,1,0,0\n",
            r":3: duplicate row id .* \(first on line 2\)",
        ),
    ]
    for text, message in cases:
        path.write_text(text)
        with pytest.raises(DataError, match=message):
            read_submission(path)
    # Column order is free and rows need not sum to one (the scorer normalises).
    path.write_text("severe,row_id,moderate,normal_mild\n2,1_spinal_canal_stenosis_l1_l2,1,1\n")
    assert read_submission(path)[0].probabilities == (1.0, 1.0, 2.0)


def test_read_solution_from_train_csv(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    header = ",".join(TRAIN_COLUMNS)
    cells = [""] * 25
    cells[0] = "Normal/Mild"  # spinal l1_l2
    cells[7] = "Severe"  # left foraminal l3_l4
    cells[24] = "Moderate"  # right subarticular l5_s1
    path.write_text(f"{header}\n4003253,{','.join(cells)}\n")
    assert read_solution(path) == {
        "4003253_spinal_canal_stenosis_l1_l2": 0,
        "4003253_left_neural_foraminal_narrowing_l3_l4": 2,
        "4003253_right_subarticular_stenosis_l5_s1": 1,
    }
    cells[3] = "Mild"
    path.write_text(f"{header}\n4003253,{','.join(cells)}\n")
    with pytest.raises(DataError, match=r"train\.csv:2: spinal_canal_stenosis_l4_l5 = 'Mild'"):
        read_solution(path)


def test_score_submission_needs_every_graded_row() -> None:
    rows = study_rows(1, {"spinal_canal_stenosis": _SPINAL})
    solution = {"1_spinal_canal_stenosis_l1_l2": 0, "2_spinal_canal_stenosis_l1_l2": 1}
    with pytest.raises(InputError, match=r"no row for '2_spinal_canal_stenosis_l1_l2' \(1 of 2"):
        score_submission(rows, solution)
    with pytest.raises(InputError, match="grades no target"):
        score_submission(rows, {})
    with pytest.raises(InputError, match="duplicate"):
        score_submission(rows + rows[:1], solution)
