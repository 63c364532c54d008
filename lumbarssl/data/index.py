"""One record per intervertebral disc from the three CSV files of the RSNA 2024 layout.

:func:`read_index` joins ``train_label_coordinates.csv`` (where each disc is),
``train.csv`` (its grade) and ``train_series_descriptions.csv`` (which sequence the coordinate
is on) into :class:`DiscRecord` objects for spinal canal stenosis on Sagittal T2/STIR series,
the paper's input (Sec. 3.1). Every row it cannot use is returned as a
:class:`~lumbarssl.data.skips.Skip` naming the file, the line and the reason.
"""

from __future__ import annotations

import codecs
import csv
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from lumbarssl.data.constants import (
    CONDITION_SLUGS,
    CONDITIONS,
    COORDINATES_CSV,
    LEVEL_SLUGS,
    LEVELS,
    MISSING_LABEL,
    SAGITTAL_T2,
    SERIES_COLUMNS,
    SERIES_CSV,
    SERIES_DESCRIPTIONS,
    SEVERITY_TO_LABEL,
    SPINAL_CANAL,
    TRAIN_CSV,
)
from lumbarssl.data.skips import OnError, RSNADataError, Skip, SkipReason
from lumbarssl.errors import MissingFileError

__all__ = ["DiscIndex", "DiscRecord", "read_index"]

_SPINAL_SLUG = CONDITION_SLUGS[CONDITIONS.index(SPINAL_CANAL)]
_LABEL_COLUMNS = tuple(f"{_SPINAL_SLUG}_{slug}" for slug in LEVEL_SLUGS)
_COORDINATE_COLUMNS = ("study_id", "series_id", "instance_number", "condition", "level", "x", "y")


@dataclass(frozen=True)
class DiscRecord:
    """One annotated intervertebral disc: where it is and how it is graded.

    Attributes:
        study_id: The RSNA study (one patient examination).
        series_id: The Sagittal T2/STIR series the coordinate was placed on.
        instance_number: The DICOM InstanceNumber of the annotated slice.
        level: ``"L1/L2"`` ... ``"L5/S1"`` (:data:`~lumbarssl.data.constants.LEVELS`).
        x: Column of the disc centre in pixels of the annotated slice.
        y: Row of the disc centre in pixels of the annotated slice.
        severity: ``"Normal/Mild"``, ``"Moderate"``, ``"Severe"`` or ``""`` when not graded.
        label: 0, 1, 2 for the three severities, -1
            (:data:`~lumbarssl.data.constants.MISSING_LABEL`) when not graded. Unlabeled discs
            serve contrastive pretraining only, never supervised training or metrics.
    """

    study_id: int
    series_id: int
    instance_number: int
    level: str
    x: float
    y: float
    severity: str
    label: int

    @property
    def level_id(self) -> int:
        """The level as an index 0-4 into :data:`~lumbarssl.data.constants.LEVELS`."""
        return LEVELS.index(self.level)

    @property
    def is_labeled(self) -> bool:
        """Whether the disc has a severity grade."""
        return self.label != MISSING_LABEL


@dataclass(frozen=True)
class DiscIndex:
    """The usable discs of an RSNA directory and every row that was set aside.

    Attributes:
        discs: One record per usable disc, in the order of ``train_label_coordinates.csv``.
        skips: Every CSV row or cell not used, with its reason, in reading order.
    """

    discs: tuple[DiscRecord, ...]
    skips: tuple[Skip, ...]


class _Recorder:
    """Collects skips, or raises on errors in ``"raise"`` mode."""

    def __init__(self, on_error: OnError) -> None:
        self.on_error = on_error
        self.skips: list[Skip] = []

    def __call__(self, skip: Skip) -> None:
        if self.on_error == "raise" and skip.reason.is_error:
            raise RSNADataError.from_skip(skip)
        self.skips.append(skip)


_Record = TypeVar("_Record", bound=DiscRecord)


def _graded_record(
    kind: type[_Record],
    study: int,
    series: int,
    instance: int,
    level: str,
    x: float,
    y: float,
    severity: str,
) -> _Record:
    """A ``kind`` record whose label follows from ``severity`` (``""``: unlabeled)."""
    return kind(
        study_id=study,
        series_id=series,
        instance_number=instance,
        level=level,
        x=x,
        y=y,
        severity=severity,
        label=SEVERITY_TO_LABEL.get(severity, MISSING_LABEL),
    )


def _missing_coordinate(
    what: str, study: int, severity: str, path: str, line: int, level: str
) -> Skip:
    """The skip of a graded ``what`` (a level, or condition and level) with no coordinate."""
    return Skip(
        SkipReason.MISSING_COORDINATE,
        f"{what} of study {study} is graded {severity!r} but has no coordinate",
        path,
        line,
        study,
        level=level,
    )


#: Values quoted in a skip's detail are cut to this many characters.
_SHOW = 40
#: The range of a 64-bit signed integer, which ids and instance numbers must fit (they are
#: stored as ``int64`` in the cache and in the journal of ``prepare``).
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
#: Plain decimal integers only: no ``_`` separators, no non-ASCII digits, at most 19 digits.
_INTEGER = re.compile(r"[+-]?[0-9]{1,19}")
_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
_UTF32_BOMS = (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)
_REENCODE = "re-save it as UTF-8 (e.g. iconv -f LATIN1 -t UTF-8 or a spreadsheet's 'CSV UTF-8')"


def _encoding_error(path: Path, exc: UnicodeDecodeError) -> RSNADataError:
    """The one-line error for a CSV that is not UTF-8, naming the file and the first bad line."""
    with path.open("rb") as handle:  # only on this error path: find the line for the message
        head = handle.read(4)
        if head.startswith(_UTF32_BOMS):
            return RSNADataError(f"{path}: the file is UTF-32 encoded, not UTF-8; {_REENCODE}")
        if head.startswith(_UTF16_BOMS):
            return RSNADataError(f"{path}: the file is UTF-16 encoded, not UTF-8; {_REENCODE}")
        handle.seek(0)
        for number, raw in enumerate(handle, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as line_exc:
                byte = raw[line_exc.start : line_exc.start + 1].hex()
                return RSNADataError(
                    f"{path}:{number}: not UTF-8 text (byte 0x{byte} at column "
                    f"{line_exc.start + 1}; Latin-1 or another 8-bit encoding?); {_REENCODE}"
                )
    return RSNADataError(f"{path}: not UTF-8 text ({exc.reason}); {_REENCODE}")


def _header(path: Path, reader: Iterator[list[str]], required: Sequence[str]) -> list[str]:
    """The stripped column names of a CSV file, checked for required and repeated names."""
    try:
        header = [name.strip() for name in next(reader, [])]  # csv: <= 131,072 chars a field
    except csv.Error as exc:
        raise RSNADataError(f"{path}:1: unreadable header ({exc}); fix the first line") from exc
    seen: dict[str, int] = {}
    for position, name in enumerate(header, start=1):
        if name in seen:
            raise RSNADataError(
                f"{path}:1: column {_show(name)} appears twice (columns {seen[name]} and "
                f"{position}); remove or rename one of them"
            )
        seen[name] = position
    for name in required:
        if name not in seen:
            raise RSNADataError(
                f"{path}:1: missing column {name!r} (header has {', '.join(header) or 'none'})"
            )
    return header


def _rows(
    path: Path, required: Sequence[str], record: Callable[[Skip], None]
) -> Iterator[tuple[int, dict[str, str] | None]]:
    """Yield ``(line, row)`` for each data row; ``row`` is ``None`` when its width is wrong.

    A row the ``csv`` module cannot read (a field longer than 131,072 characters) is passed to
    ``record`` as a ``malformed_row`` and reading goes on with the next line.

    Raises:
        RSNADataError: If the file lacks a required column or repeats a column name (always,
            whatever ``on_error``), or is not UTF-8 text.
        MissingFileError: If the file does not exist.
    """
    if not path.is_file():
        raise MissingFileError(f"{path}: file not found (expected part of the RSNA layout)")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        try:
            header = _header(path, reader, required)
            while True:
                try:
                    fields = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    detail = f"unreadable row ({exc}); a field may be cut or miss a quote"
                    record(Skip(SkipReason.MALFORMED_ROW, detail, str(path), reader.line_num))
                    continue
                if not fields or all(not f.strip() for f in fields):
                    continue
                if len(fields) != len(header):
                    yield reader.line_num, None
                else:
                    yield reader.line_num, dict(zip(header, fields, strict=True))
        except UnicodeDecodeError as exc:
            raise _encoding_error(path, exc) from None


def _show(text: str) -> str:
    """``repr`` of a CSV value for a message, cut to a readable length."""
    if len(text) <= _SHOW:
        return repr(text)
    return f"{text[:_SHOW]!r}... ({len(text)} characters)"


def _parse_int(text: str) -> int | None:
    """A decimal integer that fits in 64 bits, or ``None``."""
    text = text.strip()
    if not _INTEGER.fullmatch(text):
        return None
    value = int(text)
    return value if _INT64_MIN <= value <= _INT64_MAX else None


def _parse_float(text: str) -> float | None:
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _read_labels(
    path: Path, record: _Recorder
) -> tuple[dict[tuple[int, str], str], dict[int, int]]:
    """Map (study, level) to severity text ('' when not graded) and study to its line."""
    severities: dict[tuple[int, str], str] = {}
    lines: dict[int, int] = {}
    for line, row in _rows(path, ("study_id", *_LABEL_COLUMNS), record):
        if row is None:
            record(Skip(SkipReason.MALFORMED_ROW, "wrong number of fields", str(path), line))
            continue
        study = _parse_int(row["study_id"])
        if study is None:
            detail = f"study_id {_show(row['study_id'])} is not an integer in the 64-bit range"
            record(Skip(SkipReason.UNPARSABLE_NUMBER, detail, str(path), line))
            continue
        if study in lines:
            detail = f"study {study} already listed at line {lines[study]}"
            record(Skip(SkipReason.DUPLICATE_ROW, detail, str(path), line, study))
            continue
        lines[study] = line
        for level, column in zip(LEVELS, _LABEL_COLUMNS, strict=True):
            severity = row[column].strip()
            if severity and severity not in SEVERITY_TO_LABEL:
                detail = (
                    f"severity {_show(severity)} in column {column} is not one of "
                    f"{', '.join(SEVERITY_TO_LABEL)}; the disc is kept unlabeled"
                )
                reason = SkipReason.UNKNOWN_SEVERITY
                record(Skip(reason, detail, str(path), line, study, level=level))
                severity = ""
            severities[study, level] = severity
    return severities, lines


def _read_series(path: Path, record: _Recorder) -> dict[tuple[int, int], str]:
    """Map (study, series) to its description."""
    descriptions: dict[tuple[int, int], str] = {}
    first_line: dict[tuple[int, int], int] = {}
    for line, row in _rows(path, SERIES_COLUMNS, record):
        if row is None:
            record(Skip(SkipReason.MALFORMED_ROW, "wrong number of fields", str(path), line))
            continue
        study, series = _parse_int(row["study_id"]), _parse_int(row["series_id"])
        if study is None or series is None:
            detail = (
                f"study_id {_show(row['study_id'])} or series_id {_show(row['series_id'])} "
                "is not an integer in the 64-bit range"
            )
            record(Skip(SkipReason.UNPARSABLE_NUMBER, detail, str(path), line))
            continue
        if (study, series) in descriptions:
            detail = f"series {series} already listed at line {first_line[study, series]}"
            record(Skip(SkipReason.DUPLICATE_ROW, detail, str(path), line, study, series))
            continue
        description = row["series_description"].strip()
        if description not in SERIES_DESCRIPTIONS:
            known = ", ".join(SERIES_DESCRIPTIONS)
            detail = f"series description {_show(description)} is not one of {known}"
            reason = SkipReason.UNKNOWN_SERIES_DESCRIPTION
            record(Skip(reason, detail, str(path), line, study, series))
        descriptions[study, series] = description
        first_line[study, series] = line
    return descriptions


def _coordinate_problem(
    study: int,
    series: int,
    level: str,
    description: str | None,
    seen_rows: dict[tuple[int, int, str], int],
    seen_discs: dict[tuple[int, str], DiscRecord],
) -> tuple[SkipReason, str] | None:
    """Why a parsed spinal canal coordinate row cannot become a disc, or ``None``."""
    if level not in LEVELS:
        return SkipReason.UNKNOWN_LEVEL, f"level {_show(level)} is not one of {', '.join(LEVELS)}"
    if (study, series, level) in seen_rows:
        first = seen_rows[study, series, level]
        return SkipReason.DUPLICATE_ROW, f"{level} of series {series} already given at line {first}"
    if description is None:
        return SkipReason.SERIES_NOT_LISTED, f"series {series} is not in {SERIES_CSV}"
    if description != SAGITTAL_T2:
        detail = f"series {series} is {_show(description)}, not {SAGITTAL_T2!r}"
        return SkipReason.NOT_SAGITTAL_T2, detail
    if (study, level) in seen_discs:
        kept = seen_discs[study, level].series_id
        return SkipReason.DUPLICATE_DISC, f"{level} is already annotated on series {kept}"
    return None


def read_index(data_dir: str | Path, *, on_error: OnError = "skip") -> DiscIndex:
    """Read the spinal canal stenosis discs of an RSNA 2024 directory.

    A disc is a ``Spinal Canal Stenosis`` row of ``train_label_coordinates.csv`` on a series
    that ``train_series_descriptions.csv`` calls ``Sagittal T2/STIR``; its grade comes from the
    matching ``spinal_canal_stenosis_<level>`` cell of ``train.csv`` (empty cell, or a study
    absent from ``train.csv``: label -1). Rows of the other conditions are ignored.

    Errors (recorded, or raised in ``"raise"`` mode): a row with the wrong number of fields,
    a number that does not parse (or is not finite), an unknown condition, level, severity or
    series description, a repeated row, a coordinate on a series that is not listed.
    Exclusions (always recorded, never raised): a coordinate on a series that is not
    Sagittal T2/STIR, a second coordinate for the same study and level on another T2 series
    (the first in file order is kept), a graded disc without any coordinate. An unknown
    severity only drops the grade: the disc stays in the index with label -1.

    Args:
        data_dir: The directory holding ``train.csv``, ``train_label_coordinates.csv`` and
            ``train_series_descriptions.csv``.
        on_error: ``"skip"`` records each bad row and goes on; ``"raise"`` raises on the first.

    Returns:
        The discs and the skipped rows.

    Raises:
        RSNADataError: If a file lacks a required column (in both modes; the message names the
            file and the column), or on the first bad row in ``"raise"`` mode (the message
            names the file and the line).
        FileNotFoundError: If one of the three CSV files is missing.
        ValueError: If ``on_error`` is neither ``"skip"`` nor ``"raise"``.
    """
    if on_error not in ("skip", "raise"):
        raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
    root = Path(data_dir)
    record = _Recorder(on_error)
    severities, label_lines = _read_labels(root / TRAIN_CSV, record)
    descriptions = _read_series(root / SERIES_CSV, record)

    path = root / COORDINATES_CSV
    discs: list[DiscRecord] = []
    seen_rows: dict[tuple[int, int, str], int] = {}
    seen_discs: dict[tuple[int, str], DiscRecord] = {}
    annotated: set[tuple[int, str]] = set()
    for line, row in _rows(path, _COORDINATE_COLUMNS, record):
        if row is None:
            record(Skip(SkipReason.MALFORMED_ROW, "wrong number of fields", str(path), line))
            continue
        condition, level = row["condition"].strip(), row["level"].strip()
        if condition not in CONDITIONS:
            detail = f"condition {_show(condition)} is not one of {', '.join(CONDITIONS)}"
            record(Skip(SkipReason.UNKNOWN_CONDITION, detail, str(path), line))
            continue
        if condition != SPINAL_CANAL:
            continue
        study, series, instance = (_parse_int(row[c]) for c in _COORDINATE_COLUMNS[:3])
        x, y = _parse_float(row["x"]), _parse_float(row["y"])
        if study is None or series is None or instance is None or x is None or y is None:
            kinds = ("a 64-bit integer",) * 3 + ("a finite number",) * 2
            bad = ", ".join(
                f"{column}={_show(row[column])} is not {kind}"
                for column, value, kind in zip(
                    ("study_id", "series_id", "instance_number", "x", "y"),
                    (study, series, instance, x, y),
                    kinds,
                    strict=True,
                )
                if value is None
            )
            detail = f"unusable number: {bad}"
            record(Skip(SkipReason.UNPARSABLE_NUMBER, detail, str(path), line, study, series))
            continue
        if level in LEVELS:
            annotated.add((study, level))
        problem = _coordinate_problem(
            study, series, level, descriptions.get((study, series)), seen_rows, seen_discs
        )
        if level in LEVELS:
            seen_rows.setdefault((study, series, level), line)
        if problem is not None:
            reason, detail = problem
            known_level = level if level in LEVELS else None
            record(Skip(reason, detail, str(path), line, study, series, instance, known_level))
            continue
        severity = severities.get((study, level), "")
        disc = _graded_record(DiscRecord, study, series, instance, level, x, y, severity)
        seen_discs[study, level] = disc
        discs.append(disc)

    train_path = str(root / TRAIN_CSV)
    for (study, level), severity in severities.items():
        if severity and (study, level) not in annotated:
            record(
                _missing_coordinate(level, study, severity, train_path, label_lines[study], level)
            )
    return DiscIndex(discs=tuple(discs), skips=tuple(record.skips))
