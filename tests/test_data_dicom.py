from __future__ import annotations

import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from _rsna_factory import (
    BACKGROUND,
    BACKGROUND_STEP,
    Series,
    Study,
    build_dataset,
    expected_slice,
    plain_study,
    quirk_study,
    write_series,
)
from pydicom.data import get_testdata_file
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import JPEGLSLossless, RLELossless

from lumbarssl.data.dicom import (
    DicomReadError,
    MissingDecoderError,
    SeriesGeometryError,
    open_series,
    read_header,
    read_series,
    read_series_geometry,
    read_slice,
)


def _write(tmp_path: Path, study: Study, series: Series | None = None) -> Path:
    series = series or study.series[0]
    write_series(tmp_path, study, series)
    return tmp_path / str(study.study_id) / str(series.series_id)


def _quirk(tmp_path: Path, quirk: str) -> tuple[Study, Series, Path]:
    study = quirk_study(quirk, 1)
    return study, study.series[0], _write(tmp_path, study)


def _backgrounds(pixels: tuple[np.ndarray, ...]) -> list[float]:
    return [float(p[1, 1]) for p in pixels]


def test_instances_numbered_against_space_are_ordered_by_position(tmp_path: Path) -> None:
    _, _, folder = _quirk(tmp_path, "instances_against_space")
    geometry = read_series_geometry(folder)
    assert geometry.ordered_by == "position"
    # Instance numbers run 7, 6, ..., 1 along the slice normal.
    assert [h.instance_number for h in geometry.slices] == [7, 6, 5, 4, 3, 2, 1]
    assert dict(geometry.instance_to_index) == {7 - k: k for k in range(7)}
    # Positions increase along the normal of ImageOrientationPatient.
    normal = np.cross((0.0, 1.0, 0.0), (0.0, 0.0, -1.0))
    distances = [float(np.dot(h.position, normal)) for h in geometry.slices]  # type: ignore[arg-type]
    assert distances == sorted(distances)
    series_pixels = read_series(folder)
    assert _backgrounds(series_pixels.pixels) == [
        BACKGROUND + BACKGROUND_STEP * k for k in range(7)
    ]


def test_instance_numbers_not_starting_at_one(tmp_path: Path) -> None:
    study, series, folder = _quirk(tmp_path, "instances_offset")
    dicom_series = read_series(folder)
    assert dict(dicom_series.instance_to_index) == {101 + k: k for k in range(5)}
    np.testing.assert_array_equal(dicom_series.slice_for(103), expected_slice(study, series, 2))


def test_rescale_slope_and_intercept_are_applied(tmp_path: Path) -> None:
    study, series, folder = _quirk(tmp_path, "rescale")
    path = folder / "3.dcm"
    stored = pydicom.dcmread(path).pixel_array
    real = read_slice(path)
    assert real.dtype == np.float32
    np.testing.assert_array_equal(real, expected_slice(study, series, 2))
    np.testing.assert_array_equal(real, stored.astype(np.float64) * 2.0 - 1000.0)
    assert not np.array_equal(real, stored)


def test_signed_pixels_stay_negative(tmp_path: Path) -> None:
    study, series, folder = _quirk(tmp_path, "signed")
    pixels = read_slice(folder / "3.dcm")
    assert pixels.min() == -3000.0
    np.testing.assert_array_equal(pixels, expected_slice(study, series, 2))


def test_odd_shaped_slice_in_a_series(tmp_path: Path) -> None:
    study, series, folder = _quirk(tmp_path, "odd_shape")
    dicom_series = read_series(folder)
    assert [p.shape for p in dicom_series.pixels] == [
        (64, 64),
        (64, 80),
        (64, 64),
        (64, 64),
        (64, 64),
    ]
    assert dicom_series.geometry.slices[1].columns == 80
    for k, pixels in enumerate(dicom_series.pixels):
        np.testing.assert_array_equal(pixels, expected_slice(study, series, k))


def test_header_geometry_and_spacing(tmp_path: Path) -> None:
    _, series, folder = _quirk(tmp_path, "instances_offset")
    header = read_header(folder / "102.dcm")
    assert (header.instance_number, header.rows, header.columns) == (102, 64, 64)
    assert header.pixel_spacing == (0.5, 0.625)
    assert header.position == pytest.approx(series.position(1))
    assert header.orientation == (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)


def test_missing_geometry_falls_back_to_instance_number(tmp_path: Path) -> None:
    _, _, folder = _quirk(tmp_path, "no_geometry")
    geometry = read_series_geometry(folder)
    assert geometry.ordered_by == "instance_number"
    assert [h.instance_number for h in geometry.slices] == [1, 2, 3, 4, 5]


def test_coincident_positions_fall_back_to_instance_number(tmp_path: Path) -> None:
    study = plain_study(1, Series(11, instances_against_space=True))
    folder = _write(tmp_path, study)
    path = folder / "2.dcm"
    ds = pydicom.dcmread(path)
    ds.ImagePositionPatient = pydicom.dcmread(folder / "1.dcm").ImagePositionPatient
    ds.save_as(path)
    assert read_series_geometry(folder).ordered_by == "instance_number"


def test_repeated_instance_number_is_a_geometry_error(tmp_path: Path) -> None:
    folder = _write(tmp_path, plain_study(1))
    shutil.copy(folder / "2.dcm", folder / "copy.dcm")
    with pytest.raises(SeriesGeometryError, match=r"repeated InstanceNumber \[2\]"):
        read_series_geometry(folder)


def test_empty_series_directory_is_a_geometry_error(tmp_path: Path) -> None:
    with pytest.raises(SeriesGeometryError, match=r"no readable \.dcm file"):
        read_series_geometry(tmp_path)


def test_rle_compressed_series_reads_like_the_uncompressed_one(tmp_path: Path) -> None:
    study, series, folder = _quirk(tmp_path, "rle")
    assert pydicom.dcmread(folder / "3.dcm").file_meta.TransferSyntaxUID == RLELossless
    np.testing.assert_array_equal(read_slice(folder / "3.dcm"), expected_slice(study, series, 2))


@pytest.mark.skipif(
    get_decoder(JPEGLSLossless).is_available, reason="a JPEG-LS decoder is installed here"
)
def test_missing_decoder_names_file_syntax_and_extra(tmp_path: Path) -> None:
    study = plain_study(1, Series(11, transfer_syntax=JPEGLSLossless))
    folder = _write(tmp_path, study)
    path = folder / "3.dcm"
    with pytest.raises(MissingDecoderError) as info:
        read_slice(path)
    message = str(info.value)
    assert str(path) in message
    assert "JPEG-LS Lossless" in message
    assert str(JPEGLSLossless) in message
    assert 'pip install "lumbarssl[dicom]"' in message
    assert isinstance(info.value, DicomReadError)
    assert read_header(path).instance_number == 3  # geometry still reads


def test_truncated_file_raises_naming_it(tmp_path: Path) -> None:
    _, _, folder = _quirk(tmp_path, "truncated")
    path = folder / "3.dcm"
    assert read_header(path).rows == 64  # the header survived; the pixel data did not
    with pytest.raises(DicomReadError, match=re.escape(str(path))) as info:
        read_slice(path)
    assert isinstance(info.value, ValueError)


def test_file_truncated_inside_its_header_raises_naming_it(tmp_path: Path) -> None:
    folder = _write(tmp_path, plain_study(1))
    path = folder / "3.dcm"
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(DicomReadError, match=re.escape(str(path))):
        read_header(path)


def test_html_page_saved_as_dcm_raises_naming_it(tmp_path: Path) -> None:
    _, _, folder = _quirk(tmp_path, "html")
    path = folder / "3.dcm"
    with pytest.raises(DicomReadError, match=rf"{re.escape(str(path))}: not a DICOM file"):
        read_slice(path)
    with pytest.raises(DicomReadError, match="not a DICOM file"):
        read_series_geometry(folder)
    geometry = read_series_geometry(folder, on_error="skip")
    assert [h.instance_number for h in geometry.slices] == [1, 2, 4, 5]
    assert [e.path for e in geometry.unreadable] == [path]


def test_missing_pixel_data_raises_naming_the_file(tmp_path: Path) -> None:
    study = plain_study(1)
    ds = build_dataset(study, study.series[0], 0)
    del ds.PixelData
    path = tmp_path / "1.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert read_header(path).instance_number == 1
    with pytest.raises(DicomReadError, match=rf"{re.escape(str(path))}: no pixel data"):
        read_slice(path)


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    study = plain_study(1)
    ds = build_dataset(study, study.series[0], 0)
    ds.PhotometricInterpretation = "MONOCHROME1"
    path = tmp_path / "1.dcm"
    ds.save_as(path, enforce_file_format=True)
    stored = expected_slice(study, study.series[0], 0)
    np.testing.assert_array_equal(read_slice(path), stored.max() + stored.min() - stored)


def test_missing_file_is_a_file_not_found_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_slice(tmp_path / "absent.dcm")


def test_dicom_read_error_survives_pickling(tmp_path: Path) -> None:
    error = MissingDecoderError(tmp_path / "a.dcm", "no decoder")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is MissingDecoderError
    assert (copy.path, copy.reason, str(copy)) == (error.path, error.reason, str(error))


def test_index_of_unknown_instance_names_the_series(tmp_path: Path) -> None:
    folder = _write(tmp_path, plain_study(1))
    with pytest.raises(KeyError, match="no readable instance 99"):
        read_series_geometry(folder).index_of(99)


@pytest.mark.parametrize(
    "quirk", ["instances_against_space", "rescale", "signed", "odd_shape", "rle", "no_geometry"]
)
def test_open_series_decodes_every_slice_as_read_slice(quirk: str, tmp_path: Path) -> None:
    _, _, folder = _quirk(tmp_path, quirk)
    series = open_series(folder)
    assert len(series) == len(series.geometry) == len(list(folder.glob("*.dcm")))
    for index, header in enumerate(series.geometry.slices):
        first, again = series.decode(index), series.decode(index)
        expected = read_slice(header.path)  # pydicom reading the whole file
        assert first.dtype == expected.dtype == np.float32
        np.testing.assert_array_equal(first, expected)
        np.testing.assert_array_equal(again, expected)


def test_a_file_pydicom_must_parse_decodes_as_read_slice_every_time(tmp_path: Path) -> None:
    source = get_testdata_file("MR_small_bigendian.dcm", download=False)
    if source is None:
        pytest.skip("MR_small_bigendian.dcm is not bundled with this pydicom")
    path = tmp_path / "1.dcm"
    shutil.copyfile(str(source), path)
    series = open_series(tmp_path)
    expected = read_slice(path)
    for _ in range(2):  # the pixel data is read again: the series keeps headers only
        np.testing.assert_array_equal(series.decode(0), expected)


def test_decode_rejects_an_index_outside_the_series(tmp_path: Path) -> None:
    series = open_series(_write(tmp_path, plain_study(1)))
    with pytest.raises(IndexError, match=r"slice index must be in \[0, 4\], got 5"):
        series.decode(5)


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom on the invalid IS value
def test_a_non_numeric_number_of_frames_is_a_read_error_naming_the_file(tmp_path: Path) -> None:
    source = get_testdata_file("badVR.dcm", download=False)  # NumberOfFrames "1A"
    if source is None:
        pytest.skip("badVR.dcm is not bundled with this pydicom")
    path = tmp_path / "1.dcm"
    shutil.copyfile(str(source), path)
    with pytest.raises(DicomReadError, match=rf"{re.escape(str(path))}: NumberOfFrames is not"):
        read_slice(path)
