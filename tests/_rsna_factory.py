"""Tiny hand-built RSNA-layout directories with real DICOM files, one switch per quirk.

Every slice has a known content, so tests can compute what the reader must return without
using the code under test:

* real-valued background ``BACKGROUND + BACKGROUND_STEP * k`` on the slice with spatial index
  ``k`` (spatial order = increasing position along the slice normal), so a ROI or localizer
  channel tells which slice it came from;
* ``MARKER`` at the pixel of each annotated coordinate on the annotated slice;
* ``0`` at the bottom-right pixel and ``MARKER`` at the bottom-left one, so every slice has
  minimum 0 and maximum ``MARKER`` (before ``offset``), and min-max normalisation maps the
  background of slice ``k`` to ``(BACKGROUND + BACKGROUND_STEP * k) / MARKER``.

Stored values are ``(real - intercept) / slope``; ``offset`` shifts all real values (negative
values test signed pixels).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
    generate_uid,
)

from lumbarssl.data.constants import (
    COORDINATE_COLUMNS,
    COORDINATES_CSV,
    IMAGES_DIR,
    LEVELS,
    SAGITTAL_T1,
    SAGITTAL_T2,
    SERIES_COLUMNS,
    SERIES_CSV,
    SPINAL_CANAL,
    TRAIN_COLUMNS,
    TRAIN_CSV,
)

BACKGROUND = 1000.0
BACKGROUND_STEP = 100.0
MARKER = 4000.0
SLICE_GAP_MM = 4.0
#: Sagittal ImageOrientationPatient: rows run anterior→posterior, columns head→feet.
SAGITTAL_ORIENTATION = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)

QUIRKS = (
    "instances_against_space",
    "instances_offset",
    "rescale",
    "signed",
    "odd_shape",
    "near_border",
    "two_t2_series",
    "t1_labels",
    "truncated",
    "html",
    "missing_instance",
    "empty_severity",
    "rle",
    "no_geometry",
)


def half_up(value: float) -> int:
    """Nearest integer with halves rounded up (the convention, for non-negative values)."""
    return math.floor(value + 0.5)


@dataclass(frozen=True)
class Coordinate:
    """One spinal canal coordinate row: on the slice with spatial index ``slice_index``."""

    series_id: int
    slice_index: int
    level: str
    x: float
    y: float
    instance_override: int | None = None
    condition: str = SPINAL_CANAL


@dataclass
class Series:
    """One series and how its files are written."""

    series_id: int
    description: str = SAGITTAL_T2
    n_slices: int = 5
    shape: tuple[int, int] = (64, 64)
    first_instance: int = 1
    instances_against_space: bool = False
    slope: float = 1.0
    intercept: float = 0.0
    offset: float = 0.0
    signed: bool = False
    odd_shapes: dict[int, tuple[int, int]] = field(default_factory=dict)
    pixel_spacing: tuple[float, float] = (0.5, 0.625)
    geometry: bool = True
    transfer_syntax: UID = ExplicitVRLittleEndian
    #: spatial index -> "truncated" | "html" | "missing"
    broken: dict[int, str] = field(default_factory=dict)

    def instance(self, slice_index: int) -> int:
        """InstanceNumber of the slice with this spatial index."""
        k = self.n_slices - 1 - slice_index if self.instances_against_space else slice_index
        return self.first_instance + k

    def slice_shape(self, slice_index: int) -> tuple[int, int]:
        return self.odd_shapes.get(slice_index, self.shape)

    def position(self, slice_index: int) -> tuple[float, float, float]:
        normal = np.cross(SAGITTAL_ORIENTATION[:3], SAGITTAL_ORIENTATION[3:])
        origin = np.array([10.0, -80.0, 60.0])
        x, y, z = origin + slice_index * SLICE_GAP_MM * normal
        return float(x), float(y), float(z)


@dataclass
class Study:
    """One study: its series, its coordinate rows and its grades (``""`` = empty cell)."""

    study_id: int
    series: list[Series]
    coordinates: list[Coordinate]
    grades: dict[str, str]
    in_train_csv: bool = True

    def series_by_id(self, series_id: int) -> Series:
        return next(s for s in self.series if s.series_id == series_id)


def expected_slice(study: Study, series: Series, slice_index: int) -> np.ndarray:
    """The real-valued pixels the reader must return for one slice (float64)."""
    height, width = series.slice_shape(slice_index)
    image = np.full((height, width), BACKGROUND + BACKGROUND_STEP * slice_index)
    for c in study.coordinates:
        if c.series_id == series.series_id and c.slice_index == slice_index:
            row, col = half_up(c.y), half_up(c.x)
            if 0 <= row < height and 0 <= col < width:
                image[row, col] = MARKER
    image[height - 1, width - 1] = 0.0
    image[height - 1, 0] = MARKER
    return image + series.offset


def build_dataset(study: Study, series: Series, slice_index: int) -> Dataset:
    """The pydicom dataset of one slice, as :func:`write_series` writes it."""
    real = expected_slice(study, series, slice_index)
    stored = np.rint((real - series.intercept) / series.slope)
    dtype = np.int16 if series.signed else np.uint16
    assert np.array_equal(stored * series.slope + series.intercept, real), "not exact"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.StudyInstanceUID = f"1.2.826.0.1.3680043.8.498.{study.study_id}"
    ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.8.498.{study.study_id}.{series.series_id}"
    ds.SeriesDescription = series.description
    ds.InstanceNumber = series.instance(slice_index)
    height, width = real.shape
    ds.Rows, ds.Columns = height, width
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if series.signed else 0
    ds.PixelSpacing = list(series.pixel_spacing)
    ds.SliceThickness = SLICE_GAP_MM
    if series.geometry:
        ds.ImagePositionPatient = list(series.position(slice_index))
        ds.ImageOrientationPatient = list(SAGITTAL_ORIENTATION)
    if series.slope != 1.0 or series.intercept != 0.0:
        ds.RescaleSlope = series.slope
        ds.RescaleIntercept = series.intercept
    ds.PixelData = stored.astype(dtype).tobytes()
    if series.transfer_syntax == RLELossless:
        ds.compress(RLELossless)
    elif series.transfer_syntax == JPEGLSLossless:
        # Encapsulated bytes that only a JPEG-LS decoder would try to read.
        ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7 not really JPEG-LS"])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    return ds


def write_series(images_dir: Path, study: Study, series: Series) -> None:
    """Write one series' files under ``images_dir/<study>/<series>/<instance>.dcm``."""
    folder = images_dir / str(study.study_id) / str(series.series_id)
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(series.n_slices):
        path = folder / f"{series.instance(k)}.dcm"
        kind = series.broken.get(k)
        if kind == "missing":
            continue
        if kind == "html":
            path.write_text("<!DOCTYPE html><html><body>Access denied</body></html>\n")
            continue
        pydicom.dcmwrite(path, build_dataset(study, series, k), enforce_file_format=True)
        if kind == "truncated":
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 2])


def write_rsna_dir(root: Path, studies: Iterable[Study]) -> Path:
    """Write the three CSV files and every series of ``studies`` under ``root``."""
    studies = list(studies)
    root.mkdir(parents=True, exist_ok=True)
    with (root / TRAIN_CSV).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(TRAIN_COLUMNS)
        for study in studies:
            if not study.in_train_csv:
                continue
            spinal = [study.grades.get(level, "") for level in LEVELS]
            writer.writerow([study.study_id, *spinal, *(["Normal/Mild"] * 20)])
    with (root / SERIES_CSV).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(SERIES_COLUMNS)
        for study in studies:
            for series in study.series:
                writer.writerow([study.study_id, series.series_id, series.description])
    with (root / COORDINATES_CSV).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COORDINATE_COLUMNS)
        for study in studies:
            for c in study.coordinates:
                series = study.series_by_id(c.series_id)
                instance = c.instance_override or series.instance(c.slice_index)
                writer.writerow(
                    [study.study_id, c.series_id, instance, c.condition, c.level, c.x, c.y]
                )
    for study in studies:
        for series in study.series:
            write_series(root / IMAGES_DIR, study, series)
    return root


def five_levels(series_id: int, slice_index: int, *, x: float = 30.25) -> list[Coordinate]:
    """One coordinate per level on one slice, spread down the image (rows 8.5 ... 56.5)."""
    return [
        Coordinate(series_id, slice_index, level, x + i, 8.5 + 12.0 * i)
        for i, level in enumerate(LEVELS)
    ]


GRADES = {"L1/L2": "Normal/Mild", "L2/L3": "Moderate", "L3/L4": "Severe"}
GRADES |= {"L4/L5": "Normal/Mild", "L5/S1": "Normal/Mild"}


def plain_study(study_id: int, series: Series | None = None) -> Study:
    """A clean study: one T2 series (5 slices by default), the five levels on its middle slice.

    ``series`` must have id ``study_id * 10 + 1`` when given.
    """
    series = series or Series(study_id * 10 + 1)
    coordinates = five_levels(series.series_id, series.n_slices // 2)
    return Study(study_id, [series], coordinates, dict(GRADES))


def quirk_study(quirk: str, study_id: int) -> Study:
    """A study that carries exactly one quirk of :data:`QUIRKS`."""
    sid = study_id * 10 + 1
    if quirk == "instances_against_space":
        # Annotated off-centre so that instance and spatial neighbours differ.
        series = Series(sid, instances_against_space=True, n_slices=7)
        return Study(study_id, [series], five_levels(sid, 1), dict(GRADES))
    variants = {
        "instances_offset": Series(sid, first_instance=101),
        "rescale": Series(sid, slope=2.0, intercept=-1000.0),
        "signed": Series(sid, signed=True, offset=-3000.0),
        # The neighbour of the annotated slice is wider than the rest.
        "odd_shape": Series(sid, odd_shapes={1: (64, 80)}),
        "truncated": Series(sid, broken={2: "truncated"}),
        "html": Series(sid, broken={2: "html"}),
        "rle": Series(sid, transfer_syntax=RLELossless),
        "no_geometry": Series(sid, geometry=False),
    }
    if quirk in variants:
        return plain_study(study_id, variants[quirk])
    if quirk == "near_border":
        study = plain_study(study_id)
        study.coordinates[0] = Coordinate(sid, 2, LEVELS[0], 5.0, 5.0)
        study.coordinates[4] = Coordinate(sid, 2, LEVELS[4], 58.0, 58.5)
        return study
    if quirk == "two_t2_series":
        first, second = Series(sid, n_slices=5), Series(sid + 1, n_slices=6)
        coordinates = five_levels(sid + 1, 3, x=20.0)
        return Study(study_id, [first, second], coordinates, dict(GRADES))
    if quirk == "t1_labels":
        t1, t2 = Series(sid, description=SAGITTAL_T1), Series(sid + 1)
        coordinates = five_levels(sid, 2)[:2] + five_levels(sid + 1, 2)[2:]
        return Study(study_id, [t1, t2], coordinates, dict(GRADES))
    if quirk == "missing_instance":
        study = plain_study(study_id)
        study.coordinates[1] = Coordinate(sid, 2, LEVELS[1], 30.0, 20.0, instance_override=99)
        return study
    if quirk == "empty_severity":
        study = plain_study(study_id)
        study.grades["L2/L3"] = ""
        return study
    raise ValueError(f"unknown quirk {quirk!r}; known: {QUIRKS}")


@dataclass
class Fixture:
    """An RSNA-layout directory and the specs it was written from."""

    root: Path
    studies: list[Study]
    quirk_of: dict[str, Study]

    def study(self, study_id: int) -> Study:
        return next(s for s in self.studies if s.study_id == study_id)


def make_rsna_dir(
    root: Path,
    *,
    n_plain: int = 2,
    quirks: Iterable[str] = (),
    first_id: int = 1000,
    extra: Iterable[Study] = (),
) -> Fixture:
    """Write ``n_plain`` clean studies, one study per quirk and ``extra`` under ``root``."""
    studies = [plain_study(first_id + i) for i in range(n_plain)]
    quirk_of: dict[str, Study] = {}
    for j, quirk in enumerate(quirks):
        study = quirk_study(quirk, first_id + n_plain + j)
        studies.append(study)
        quirk_of[quirk] = study
    studies.extend(extra)
    write_rsna_dir(root, studies)
    return Fixture(root, studies, quirk_of)
