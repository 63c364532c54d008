"""The one series-type check: description first, then the RSNA CSV, then the acquisition."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from lumbarssl.data.series_type import SeriesHeader, classify_series, read_series_header
from lumbarssl.errors import InputError

SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)  # rows along y, columns along -z: normal along x
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # normal along z


def header(
    description: str = "",
    orientation: tuple[float, ...] | None = None,
    te: float | None = None,
    tr: float | None = None,
) -> SeriesHeader:
    return SeriesHeader(Path("x.dcm"), "1.2.3", description, orientation, te, tr)


@pytest.mark.parametrize(
    ("description", "name"),
    [
        ("Sagittal T2/STIR", "Sagittal T2/STIR"),
        ("Sagittal T1", "Sagittal T1"),
        ("Axial T2", "Axial T2"),
        ("SAG T2 FSE", "Sagittal T2/STIR"),
        ("t1_tse_sag_384", "Sagittal T1"),
        ("T2W_TSE_SAG", "Sagittal T2/STIR"),
        ("sag stir", "Sagittal T2/STIR"),
        ("t2_tse_tra", "Axial T2"),
    ],
)
def test_descriptions_decide_plane_and_contrast(description: str, name: str) -> None:
    decided = classify_series(header(description))
    assert decided.name == name
    assert (decided.plane_source, decided.contrast_source) == ("SeriesDescription",) * 2


def test_the_csv_is_consulted_when_the_header_says_nothing() -> None:
    csv = {"1.2.3": "Sagittal T1", "99": "Sagittal T2/STIR"}
    assert classify_series(header(), series_csv=csv).name == "Sagittal T1"
    assert classify_series(header(), series_csv=csv, series_id="99").is_sagittal_t2
    # The file's own description comes first.
    assert classify_series(header("Axial T2"), series_csv=csv).name == "Axial T2"


@pytest.mark.parametrize(
    ("orientation", "te", "tr", "name"),
    [
        (SAGITTAL, 100.0, 3500.0, "Sagittal T2/STIR"),  # long TR, long TE
        (SAGITTAL, 10.0, 500.0, "Sagittal T1"),  # short TR, short TE
        (AXIAL, 90.0, 4000.0, "Axial T2"),
        (SAGITTAL, 40.0, 1200.0, "Sagittal unknown contrast"),  # intermediate: undecided
        (None, None, None, "unknown plane unknown contrast"),
    ],
)
def test_the_acquisition_decides_when_descriptions_do_not(
    orientation: tuple[float, ...] | None, te: float | None, tr: float | None, name: str
) -> None:
    assert classify_series(header("localizer", orientation, te, tr)).name == name


def test_a_partial_description_is_completed_from_the_acquisition() -> None:
    decided = classify_series(header("SAG FSE", AXIAL, 95.0, 3000.0))
    assert decided.name == "Sagittal T2/STIR"
    assert decided.describe() == (
        "Sagittal T2/STIR (from EchoTime/RepetitionTime, SeriesDescription)"
    )


def test_read_series_header_reads_the_tags(tmp_path: Path) -> None:
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = UID("1.2.840.10008.5.1.4.1.1.4")
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = uid = generate_uid()
    ds.SeriesDescription = "Sagittal T1"
    ds.ImageOrientationPatient = list(SAGITTAL)
    ds.EchoTime = "12"
    ds.RepetitionTime = "600"
    path = tmp_path / "a.dcm"
    ds.save_as(path, enforce_file_format=True)
    read = read_series_header(path)
    assert (read.series_uid, read.description, read.echo_time, read.repetition_time) == (
        uid,
        "Sagittal T1",
        12.0,
        600.0,
    )
    assert read.orientation == SAGITTAL
    (tmp_path / "b.dcm").write_bytes(b"not dicom at all")
    with pytest.raises(InputError, match=r"b\.dcm: not a readable DICOM file"):
        read_series_header(tmp_path / "b.dcm")
