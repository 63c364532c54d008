"""Why a coordinate row or a CSV line was not used: the fixed vocabulary of skip reasons.

Reading the RSNA layout (:mod:`lumbarssl.data.index`) and preparing the ROI cache
(:mod:`lumbarssl.data.prepare`) never drop data silently: every row they cannot use becomes a
:class:`Skip` with one :class:`SkipReason`, written to ``skipped.csv``. In ``on_error="raise"``
mode the *errors* among them (malformed input, unreadable files) raise :class:`RSNADataError`
instead, while *exclusions* (data that is valid but not the paper's input, such as spinal canal
coordinates on a Sagittal T1 series) are recorded in both modes.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Literal

from lumbarssl.errors import DataError

__all__ = ["OnError", "RSNADataError", "Skip", "SkipReason"]

#: What to do with a malformed row or an unreadable file: record it and go on, or raise.
OnError = Literal["skip", "raise"]


class SkipReason(str, Enum):
    """The reason codes of ``skipped.csv`` (documented in ``docs/data_format.rst``)."""

    # Errors in the CSV files.
    MALFORMED_ROW = "malformed_row"
    UNPARSABLE_NUMBER = "unparsable_number"
    UNKNOWN_CONDITION = "unknown_condition"
    UNKNOWN_LEVEL = "unknown_level"
    UNKNOWN_SEVERITY = "unknown_severity"
    UNKNOWN_SERIES_DESCRIPTION = "unknown_series_description"
    DUPLICATE_ROW = "duplicate_row"
    SERIES_NOT_LISTED = "series_not_listed"
    # Valid data that is not the paper's input.
    NOT_SAGITTAL_T2 = "not_sagittal_t2"
    DUPLICATE_DISC = "duplicate_disc"
    MISSING_COORDINATE = "missing_coordinate"
    # (PrepareConfig(conditions="all")) Valid rows of the other conditions that are not used.
    WRONG_SEQUENCE = "wrong_sequence"
    AMBIGUOUS_AXIAL_LEVEL = "ambiguous_axial_level"
    AXIAL_LEVEL_MISMATCH = "axial_level_mismatch"
    # Errors in the image files.
    MISSING_FILE = "missing_file"
    CORRUPT_FILE = "corrupt_file"
    NOT_REGULAR_FILE = "not_regular_file"
    PIXEL_SIZE_MISMATCH = "pixel_size_mismatch"
    UNSUPPORTED_TRANSFER_SYNTAX = "unsupported_transfer_syntax"
    OUTSIDE_IMAGE = "outside_image"
    BAD_GEOMETRY = "bad_geometry"
    INTERNAL_ERROR = "internal_error"

    @property
    def is_error(self) -> bool:
        """Whether ``on_error="raise"`` raises for this reason (exclusions never raise)."""
        return self not in _EXCLUSIONS


_EXCLUSIONS = frozenset(
    {
        SkipReason.NOT_SAGITTAL_T2,
        SkipReason.DUPLICATE_DISC,
        SkipReason.MISSING_COORDINATE,
        SkipReason.WRONG_SEQUENCE,
        SkipReason.AMBIGUOUS_AXIAL_LEVEL,
        SkipReason.AXIAL_LEVEL_MISMATCH,
    }
)


@dataclass(frozen=True)
class Skip:
    """One row, line or file that was not used, and why.

    Attributes:
        reason: The reason code.
        detail: A human-readable explanation naming the offending value.
        file: The CSV or DICOM file concerned (as given, usually an absolute path).
        line: The 1-based line of ``file`` for CSV problems, ``None`` for image files.
        study_id: The study, when known.
        series_id: The series, when known.
        instance_number: The instance, when known.
        level: The intervertebral level (``"L1/L2"`` ...), when known.
    """

    reason: SkipReason
    detail: str
    file: str
    line: int | None = None
    study_id: int | None = None
    series_id: int | None = None
    instance_number: int | None = None
    level: str | None = None

    def describe(self) -> str:
        """Return ``"FILE:LINE: reason: detail"`` (``FILE: ...`` without a line)."""
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.reason.value}: {self.detail}"


class RSNADataError(DataError):
    """Malformed RSNA input: a missing CSV column, or a bad row or file in ``"raise"`` mode.

    The message names the file and, for CSV files, the 1-based line.

    Args:
        message: The full message.
        skip: The problem as it would have been recorded in ``on_error="skip"`` mode, if the
            error concerns one row or file.

    Attributes:
        skip: The ``skip`` argument.
    """

    def __init__(self, message: str, skip: Skip | None = None) -> None:
        super().__init__(message)
        self.skip = skip

    @classmethod
    def from_skip(cls, skip: Skip) -> RSNADataError:
        """Build the error raised instead of recording ``skip``.

        Args:
            skip: The problem.

        Returns:
            The error, whose message is ``skip.describe()``.
        """
        return cls(skip.describe(), skip)

    def __reduce__(self) -> tuple[type[RSNADataError], tuple[str, Skip | None]]:
        # Keeps the exception picklable across worker processes despite the custom __init__.
        return (type(self), (str(self), self.skip))
