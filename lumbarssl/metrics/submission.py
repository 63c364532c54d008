"""The RSNA 2024 submission CSV: one writer, one reader, and scoring a submission end to end.

A submission has the columns ``row_id,normal_mild,moderate,severe`` and one row per target,
``row_id = {study_id}_{condition}_{level}`` with the condition and level slugs of ``train.csv``
(:data:`~lumbarssl.layout.CONDITION_SLUGS`,
:data:`~lumbarssl.layout.LEVEL_SLUGS`), e.g. ``4003253_spinal_canal_stenosis_l1_l2``.
The competition asks for a row for every level of every condition, graded or not; only the
graded ones are scored.

:func:`study_rows` turns one study's predictions, for any subset of the five conditions (spinal
canal stenosis alone today, all 25 targets later), into :class:`SubmissionRow` records;
:func:`write_submission` checks them (finite, non-negative, summing to one, no duplicate row id)
and writes the file atomically; :func:`read_submission` reads one back (or any competition
file); :func:`read_solution` turns ``train.csv`` into the graded targets; and
:func:`score_submission` scores a submission against them with
:func:`~lumbarssl.metrics.rsna_score`.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Final, NamedTuple

import numpy as np

from lumbarssl._core.atomic import atomic_write
from lumbarssl.errors import DataError, InputError
from lumbarssl.layout import (
    CONDITION_SLUGS,
    CONDITIONS,
    LEVEL_SLUGS,
    LEVELS,
    SEVERITY_TO_LABEL,
)
from lumbarssl.metrics.rsna import RSNAScore, rsna_score

if TYPE_CHECKING:  # only in annotations, so the API docs show `npt.ArrayLike` unexpanded
    import numpy.typing as npt

__all__ = [
    "SUBMISSION_COLUMNS",
    "SubmissionRow",
    "make_row_id",
    "parse_row_id",
    "read_solution",
    "read_submission",
    "score_submission",
    "study_rows",
    "write_submission",
]

#: Header of a submission file, in order.
SUBMISSION_COLUMNS: Final[tuple[str, ...]] = ("row_id", "normal_mild", "moderate", "severe")
#: Largest tolerated distance of a written row's sum from one (our choice: float32 softmax
#: rows are within 1e-6; anything further is not a probability vector).
_SUM_ATOL: Final[float] = 1e-4
_STUDY_ID = re.compile(r"[^_,\s\"]+")
_TARGETS: Final[dict[str, tuple[str, str]]] = {
    f"{condition}_{level}": (condition, level)
    for condition in CONDITION_SLUGS
    for level in LEVEL_SLUGS
}


class SubmissionRow(NamedTuple):
    """One row of a submission: a target and its three grade probabilities."""

    #: Study id, as in ``train.csv``.
    study_id: str
    #: Condition slug, one of :data:`~lumbarssl.layout.CONDITION_SLUGS`.
    condition: str
    #: Level slug, one of :data:`~lumbarssl.layout.LEVEL_SLUGS`.
    level: str
    #: Probabilities of Normal/Mild, Moderate, Severe.
    probabilities: tuple[float, float, float]

    @property
    def row_id(self) -> str:
        """``{study_id}_{condition}_{level}``."""
        return f"{self.study_id}_{self.condition}_{self.level}"


def _condition_slug(condition: str) -> str:
    if condition in CONDITION_SLUGS:
        return condition
    if condition in CONDITIONS:
        return CONDITION_SLUGS[CONDITIONS.index(condition)]
    raise InputError(
        f"unknown condition {condition!r}; use one of {CONDITION_SLUGS} or {CONDITIONS}"
    )


def _level_slug(level: str) -> str:
    if level in LEVEL_SLUGS:
        return level
    if level in LEVELS:
        return LEVEL_SLUGS[LEVELS.index(level)]
    raise InputError(f"unknown level {level!r}; use one of {LEVEL_SLUGS} or {LEVELS}")


def _study_id(study_id: str | int) -> str:
    text = str(study_id)
    if not _STUDY_ID.fullmatch(text):
        raise InputError(
            f"study id {text!r} cannot start a row id: it must be non-empty, without '_', "
            "commas, quotes or spaces"
        )
    return text


def make_row_id(study_id: str | int, condition: str, level: str) -> str:
    """The submission row id of one target.

    Args:
        study_id: Study id (an integer in the RSNA data).
        condition: Condition slug (``"spinal_canal_stenosis"``) or name
            (``"Spinal Canal Stenosis"``).
        level: Level slug (``"l1_l2"``) or name (``"L1/L2"``).

    Returns:
        ``{study_id}_{condition slug}_{level slug}``.

    Raises:
        InputError: For an unknown condition or level, or a study id that contains ``_``.
    """
    return f"{_study_id(study_id)}_{_condition_slug(condition)}_{_level_slug(level)}"


def parse_row_id(row_id: str) -> tuple[str, str, str]:
    """Split a row id into study id, condition slug and level slug.

    Args:
        row_id: ``{study_id}_{condition}_{level}``.

    Returns:
        ``(study_id, condition, level)``.

    Raises:
        InputError: If the text after the first ``_`` is not one of the 25 targets.
    """
    study, _, target = row_id.partition("_")
    if not study or target not in _TARGETS:
        raise InputError(
            f"row id {row_id!r} is not '{{study_id}}_{{condition}}_{{level}}' with a condition "
            f"of {CONDITION_SLUGS} and a level of {LEVEL_SLUGS}"
        )
    condition, level = _TARGETS[target]
    return study, condition, level


def _check_probabilities(values: Sequence[float], where: str, atol: float) -> None:
    if len(values) != 3:
        raise InputError(f"{where}: expected 3 grade probabilities, got {len(values)}")
    if not all(math.isfinite(v) and v >= 0.0 for v in values):
        raise InputError(f"{where}: probabilities must be finite and non-negative, got {values}")
    if abs(math.fsum(values) - 1.0) > atol:
        raise InputError(
            f"{where}: probabilities sum to {math.fsum(values):.6g}, not 1 (tolerance {atol}); "
            "pass softmax outputs, not logits"
        )


def study_rows(
    study_id: str | int,
    probabilities: Mapping[str, npt.ArrayLike],
    *,
    levels: Sequence[str] = LEVEL_SLUGS,
    atol: float = _SUM_ATOL,
) -> list[SubmissionRow]:
    """The submission rows of one study, for the conditions it has predictions for.

    Args:
        study_id: Study id.
        probabilities: Condition (slug or name) to an array of shape ``(L, 3)``: one row of
            Normal/Mild, Moderate, Severe probabilities per level of ``levels``.
        levels: The levels of the arrays' rows (slugs or names); all five by default, as the
            competition expects a row for every level.
        atol: Largest tolerated distance of a row's sum from one.

    Returns:
        One row per (condition, level), in the order given (condition-major).

    Raises:
        InputError: For unknown conditions or levels, an array of the wrong shape, or
            probabilities that are not finite, negative, or do not sum to one.
    """
    study = _study_id(study_id)
    level_slugs = [_level_slug(level) for level in levels]
    rows: list[SubmissionRow] = []
    for condition, values in probabilities.items():
        slug = _condition_slug(condition)
        array = np.asarray(values, dtype=np.float64)
        if array.shape != (len(level_slugs), 3):
            raise InputError(
                f"study {study}, {slug}: expected probabilities of shape "
                f"({len(level_slugs)}, 3), one row per level of {tuple(level_slugs)}, got "
                f"{array.shape}"
            )
        for level, row in zip(level_slugs, array.tolist(), strict=True):
            _check_probabilities(row, f"study {study}, {slug}, {level}", atol)
            rows.append(SubmissionRow(study, slug, level, (row[0], row[1], row[2])))
    return rows


def write_submission(
    path: str | Path, rows: Iterable[SubmissionRow], *, atol: float = _SUM_ATOL
) -> int:
    """Check the rows and write them as a submission CSV, atomically.

    Floats are written with :func:`repr`, so :func:`read_submission` returns them exactly.

    Args:
        path: The CSV to create or replace.
        rows: The rows, e.g. the concatenated :func:`study_rows` of every study.
        atol: Largest tolerated distance of a row's sum from one.

    Returns:
        The number of rows written.

    Raises:
        InputError: For a duplicate row id, an invalid target, or probabilities that are not
            finite, negative, or do not sum to one (nothing is written then).
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(SUBMISSION_COLUMNS)
    seen: set[str] = set()
    for row in rows:
        row_id = make_row_id(row.study_id, row.condition, row.level)
        if row_id in seen:
            raise InputError(f"duplicate submission row {row_id!r}; each target once")
        seen.add(row_id)
        values = [float(v) for v in row.probabilities]
        _check_probabilities(values, row_id, atol)
        writer.writerow([row_id, *(repr(v) for v in values)])
    data = buffer.getvalue().encode("utf-8")

    def write(handle: BinaryIO) -> None:
        handle.write(data)

    atomic_write(Path(path), write)
    return len(seen)


def read_submission(path: str | Path) -> list[SubmissionRow]:
    """Read a submission CSV (this library's or any competition file).

    Columns may come in any order; the competition's checks apply: values numeric, finite
    and non-negative. Rows need not sum to one (the scorer normalises them).

    Args:
        path: The CSV.

    Returns:
        The rows, in file order.

    Raises:
        DataError: Naming the file and line, for a missing or extra column, a malformed row
            id, a value that is not a finite non-negative number, or a duplicate row id.
    """
    path = Path(path)
    rows: list[SubmissionRow] = []
    seen: dict[str, int] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        if sorted(header) != sorted(SUBMISSION_COLUMNS):
            raise DataError(
                f"{path}:1: expected the columns {','.join(SUBMISSION_COLUMNS)}, got "
                f"{','.join(header) or 'none'}"
            )
        for record in reader:
            line = reader.line_num
            row_id = record["row_id"] or ""
            try:
                study, condition, level = parse_row_id(row_id)
            except InputError as err:
                raise DataError(f"{path}:{line}: {err}") from None
            if row_id in seen:
                raise DataError(
                    f"{path}:{line}: duplicate row id {row_id!r} (first on line {seen[row_id]})"
                )
            seen[row_id] = line
            values: list[float] = []
            for column in SUBMISSION_COLUMNS[1:]:
                text = record[column]
                try:
                    value = float(text or "")
                except ValueError:
                    value = math.nan
                if not (math.isfinite(value) and value >= 0.0):
                    raise DataError(
                        f"{path}:{line}: {column} = {text!r} is not a finite non-negative number"
                    )
                values.append(value)
            rows.append(SubmissionRow(study, condition, level, (values[0], values[1], values[2])))
    return rows


def read_solution(train_csv: str | Path) -> dict[str, int]:
    """The graded targets of a ``train.csv``, keyed by submission row id.

    Args:
        train_csv: A ``train.csv`` of the RSNA layout (``study_id`` and one column per
            ``{condition}_{level}``; an empty cell is an ungraded target and is skipped).

    Returns:
        Row id to grade (0 Normal/Mild, 1 Moderate, 2 Severe), in file order.

    Raises:
        DataError: Naming the file and line, for a missing ``study_id`` column, an invalid
            study id, or a severity that is not one of ``Normal/Mild``, ``Moderate``,
            ``Severe``.
    """
    path = Path(train_csv)
    solution: dict[str, int] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        if "study_id" not in header:
            raise DataError(f"{path}:1: no study_id column; is this a train.csv?")
        targets = [column for column in header if column in _TARGETS]
        for record in reader:
            line = reader.line_num
            try:
                study = _study_id(record["study_id"] or "")
            except InputError as err:
                raise DataError(f"{path}:{line}: {err}") from None
            for column in targets:
                severity = (record[column] or "").strip()
                if not severity:
                    continue
                if severity not in SEVERITY_TO_LABEL:
                    raise DataError(
                        f"{path}:{line}: {column} = {severity!r}; expected one of "
                        f"{tuple(SEVERITY_TO_LABEL)} or an empty cell"
                    )
                solution[f"{study}_{column}"] = SEVERITY_TO_LABEL[severity]
    return solution


def score_submission(submission: Iterable[SubmissionRow], solution: Mapping[str, int]) -> RSNAScore:
    """Score a submission against the graded targets, as the competition did.

    Rows of the submission that the solution does not grade are ignored, as the competition
    ignored ungraded targets.

    Args:
        submission: Rows, e.g. from :func:`read_submission`.
        solution: Row id to true grade, e.g. from :func:`read_solution`.

    Returns:
        The :class:`~lumbarssl.metrics.RSNAScore`.

    Raises:
        InputError: If the solution is empty, the submission repeats a row id or lacks a row
            the solution grades (the message names the first missing row and the count).
        ValueError: As :func:`~lumbarssl.metrics.rsna_score`.
    """
    predicted: dict[str, tuple[float, float, float]] = {}
    for row in submission:
        row_id = row.row_id
        if row_id in predicted:
            raise InputError(f"duplicate submission row {row_id!r}; each target once")
        predicted[row_id] = row.probabilities
    if not solution:
        raise InputError("the solution grades no target: nothing to score")
    missing = [row_id for row_id in solution if row_id not in predicted]
    if missing:
        raise InputError(
            f"the submission has no row for {missing[0]!r} ({len(missing)} of "
            f"{len(solution)} graded targets missing); write every level of every condition"
        )
    parsed = [parse_row_id(row_id) for row_id in solution]
    return rsna_score(
        y_true=np.fromiter(solution.values(), dtype=np.int64, count=len(solution)),
        probabilities=np.asarray([predicted[row_id] for row_id in solution], dtype=np.float64),
        study_ids=np.asarray([study for study, _, _ in parsed]),
        conditions=np.asarray([condition for _, condition, _ in parsed]),
    )
