"""The one series-type check: which of Sagittal T2/STIR, Sagittal T1, Axial T2 a series is.

The paper grades spinal canal stenosis on the Sagittal T2/STIR series (Sec. 3.1); a study as a
PACS exports it holds several series, and a Sagittal T1 series looks plausible enough to be
graded without a word. The series type is decided from, in this order:

1. the DICOM ``SeriesDescription`` (``"Sagittal T2/STIR"``, ``"SAG T2 FSE"``, ``"t1_tse_sag"``,
   ...): plane and contrast by keyword;
2. the RSNA ``train_series_descriptions.csv`` description of the series, when given;
3. the acquisition itself: the plane from ``ImageOrientationPatient`` (the slice normal along
   the patient's left-right axis is sagittal, along the head-foot axis axial) and the contrast
   from ``RepetitionTime``/``EchoTime`` (T2: long TR and long TE; T1: short TR and short TE).

A source that decides only the plane or only the contrast leaves the other to the next one.
The decision records which source gave each part, so a refusal can say why.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Final, Literal

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from lumbarssl.errors import InputError
from lumbarssl.layout import AXIAL_T2, SAGITTAL_T1, SAGITTAL_T2

__all__ = [
    "SeriesHeader",
    "SeriesType",
    "classify_series",
    "read_series_header",
]

Plane = Literal["sagittal", "axial", "coronal"]
Contrast = Literal["T1", "T2"]

#: Smallest |component| of the unit slice normal along an axis for the plane it names.
PLANE_MIN_COSINE: Final = 0.8
#: T2 weighting: repetition time (ms) at least this and echo time (ms) at least ``T2_MIN_TE``.
T2_MIN_TR: Final = 1500.0
T2_MIN_TE: Final = 60.0
#: T1 weighting: repetition time (ms) at most this and echo time (ms) at most ``T1_MAX_TE``.
T1_MAX_TR: Final = 1000.0
T1_MAX_TE: Final = 30.0

_TAGS: Final = (
    "SeriesInstanceUID",
    "SeriesDescription",
    "ImageOrientationPatient",
    "EchoTime",
    "RepetitionTime",
)
_SAGITTAL_WORDS = re.compile(r"(^|[^a-z])(sag|sagittal|sagital)([^a-z]|$)")
_AXIAL_WORDS = re.compile(r"(^|[^a-z])(ax|axial|tra|transverse|transversal)([^a-z]|$)")
_CORONAL_WORDS = re.compile(r"(^|[^a-z])(cor|coronal)([^a-z]|$)")
_T2_WORDS = re.compile(r"(^|[^a-z0-9])(t2|t2w|stir|tirm)([^a-z0-9]|$)")
_T1_WORDS = re.compile(r"(^|[^a-z0-9])(t1|t1w)([^a-z0-9]|$)")


@dataclasses.dataclass(frozen=True)
class SeriesHeader:
    """What one slice's header says about its series.

    Attributes:
        path: The file read.
        series_uid: SeriesInstanceUID (``""`` if absent).
        description: SeriesDescription (``""`` if absent).
        orientation: ImageOrientationPatient, six cosines, or ``None``.
        echo_time: EchoTime in ms, or ``None``.
        repetition_time: RepetitionTime in ms, or ``None``.
    """

    path: Path
    series_uid: str
    description: str
    orientation: tuple[float, ...] | None
    echo_time: float | None
    repetition_time: float | None


@dataclasses.dataclass(frozen=True)
class SeriesType:
    """The decided type of a series and where each part of the decision came from.

    Attributes:
        plane: ``"sagittal"``, ``"axial"``, ``"coronal"`` or ``None`` (undecided).
        contrast: ``"T1"``, ``"T2"`` or ``None`` (undecided).
        plane_source: What decided the plane (``"SeriesDescription"``, ``"series CSV"``,
            ``"ImageOrientationPatient"``) or ``None``.
        contrast_source: What decided the contrast (``"SeriesDescription"``, ``"series CSV"``,
            ``"EchoTime/RepetitionTime"``) or ``None``.
    """

    plane: Plane | None
    contrast: Contrast | None
    plane_source: str | None
    contrast_source: str | None

    @property
    def is_sagittal_t2(self) -> bool:
        """Whether the series is the one the paper grades (Sagittal T2/STIR)."""
        return self.plane == "sagittal" and self.contrast == "T2"

    @property
    def name(self) -> str:
        """The RSNA description (``"Sagittal T2/STIR"``, ...) or a plain one for others."""
        if self.is_sagittal_t2:
            return SAGITTAL_T2
        if self.plane == "sagittal" and self.contrast == "T1":
            return SAGITTAL_T1
        if self.plane == "axial" and self.contrast == "T2":
            return AXIAL_T2
        plane = self.plane.capitalize() if self.plane else "unknown plane"
        return f"{plane} {self.contrast or 'unknown contrast'}"

    def describe(self) -> str:
        """One clause saying what the series is and why, for messages."""
        why = sorted({s for s in (self.plane_source, self.contrast_source) if s})
        return f"{self.name} (from {', '.join(why) if why else 'no usable header'})"


def _words(text: str) -> tuple[Plane | None, Contrast | None]:
    lowered = text.lower().replace("_", " ")
    plane: Plane | None = None
    if _SAGITTAL_WORDS.search(lowered):
        plane = "sagittal"
    elif _AXIAL_WORDS.search(lowered):
        plane = "axial"
    elif _CORONAL_WORDS.search(lowered):
        plane = "coronal"
    contrast: Contrast | None = None
    t2, t1 = bool(_T2_WORDS.search(lowered)), bool(_T1_WORDS.search(lowered))
    if t2 != t1:
        contrast = "T2" if t2 else "T1"
    return plane, contrast


def _plane_of(orientation: tuple[float, ...] | None) -> Plane | None:
    if orientation is None or len(orientation) != 6:
        return None
    normal = np.cross(np.asarray(orientation[:3]), np.asarray(orientation[3:]))
    norm = float(np.linalg.norm(normal))
    if not np.isfinite(norm) or norm < 0.5:
        return None
    axis = np.abs(normal / norm)
    # Patient axes: x left-right (sagittal normal), y front-back (coronal), z head-foot (axial).
    for index, plane in ((0, "sagittal"), (2, "axial"), (1, "coronal")):
        if axis[index] >= PLANE_MIN_COSINE:
            return plane  # type: ignore[return-value]
    return None


def _contrast_of(echo_time: float | None, repetition_time: float | None) -> Contrast | None:
    if echo_time is None or repetition_time is None:
        return None
    if repetition_time >= T2_MIN_TR and echo_time >= T2_MIN_TE:
        return "T2"
    if repetition_time <= T1_MAX_TR and echo_time <= T1_MAX_TE:
        return "T1"
    return None


def classify_series(
    header: SeriesHeader,
    *,
    series_csv: Mapping[str, str] | None = None,
    series_id: str | None = None,
) -> SeriesType:
    """Decide the plane and contrast of a series (see the module docstring for the order).

    Args:
        header: One slice's header (:func:`read_series_header`).
        series_csv: RSNA series id -> series description (``train_series_descriptions.csv``),
            or ``None``.
        series_id: The series' id in ``series_csv`` (its directory name in the RSNA layout);
            the header's SeriesInstanceUID when ``None``.

    Returns:
        The decision; parts no source decides stay ``None``.
    """
    plane: Plane | None = None
    contrast: Contrast | None = None
    plane_source: str | None = None
    contrast_source: str | None = None
    sources: list[tuple[str, Plane | None, Contrast | None]] = [
        ("SeriesDescription", *_words(header.description))
    ]
    if series_csv is not None:
        key = series_id if series_id is not None else header.series_uid
        if key in series_csv:
            sources.append(("series CSV", *_words(series_csv[key])))
    sources.append(("ImageOrientationPatient", _plane_of(header.orientation), None))
    sources.append(
        ("EchoTime/RepetitionTime", None, _contrast_of(header.echo_time, header.repetition_time))
    )
    for source, p, c in sources:
        if plane is None and p is not None:
            plane, plane_source = p, source
        if contrast is None and c is not None:
            contrast, contrast_source = c, source
    return SeriesType(plane, contrast, plane_source, contrast_source)


def _float(value: object) -> float | None:
    if value is None or value == "":
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def read_series_header(path: str | Path) -> SeriesHeader:
    """Read the series-level tags of one DICOM file (no pixel data).

    Args:
        path: A ``.dcm`` file.

    Returns:
        Its :class:`SeriesHeader`; missing or malformed tags are empty/``None``.

    Raises:
        InputError: If the file is not readable DICOM (the message names it).
    """
    path = Path(path)
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(_TAGS))
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError) as exc:
        raise InputError(
            f"{path}: not a readable DICOM file ({type(exc).__name__}: {exc}); remove it or "
            "point at the series directory"
        ) from exc
    orientation: tuple[float, ...] | None = None
    raw = ds.get("ImageOrientationPatient")
    if raw is not None:
        try:
            values = tuple(float(v) for v in raw)
        except (TypeError, ValueError):
            values = ()
        orientation = values if len(values) == 6 else None
    return SeriesHeader(
        path=path,
        series_uid=str(ds.get("SeriesInstanceUID", "") or ""),
        description=str(ds.get("SeriesDescription", "") or ""),
        orientation=orientation,
        echo_time=_float(ds.get("EchoTime")),
        repetition_time=_float(ds.get("RepetitionTime")),
    )
