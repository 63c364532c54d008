"""The direct read of DICOM elements against pydicom's own reading of the same files.

:mod:`lumbarssl.data._tagscan` only locates elements; whatever it returns must be exactly what
pydicom reads, and for any file it cannot walk it must decline (``None``) so that pydicom is
used. The references are pydicom's reader (the same public functions with the direct read
switched off) and pydicom's bundled test files, which cover many encodings and structures.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from _rsna_factory import build_dataset, plain_study
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

import lumbarssl.data.dicom as dicom_module
from lumbarssl.data._tagscan import TagScan, scan_tags
from lumbarssl.data.dicom import DicomReadError, open_series, read_header, read_slice

#: pydicom's bundled files (never downloaded): explicit and implicit VR, big endian, deflate,
#: RLE and JPEG 2000, sequences (nested, private, UN), padding, truncations, no file meta.
PYDICOM_FILES = (
    "MR_small.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_expb.dcm",
    "MR_small_padded.dcm",
    "MR_small_RLE.dcm",
    "MR_truncated.dcm",
    "CT_small.dcm",
    "rtplan.dcm",
    "rtplan_truncated.dcm",
    "rtdose_1frame.dcm",
    "nested_priv_SQ.dcm",
    "priv_SQ.dcm",
    "UN_sequence.dcm",
    "image_dfl.dcm",
    "no_meta.dcm",
    "ExplVR_LitEndNoMeta.dcm",
    "meta_missing_tsyntax.dcm",
    "badVR.dcm",
    "empty_charset_LEI.dcm",
    "liver_1frame.dcm",
    "JPEG2000.dcm",
    "SC_rgb_small_odd.dcm",
    "test-SR.dcm",
)
GEOMETRY = (0x00200013, 0x00200032, 0x00200037, 0x00280010, 0x00280011, 0x00280030)


def _pydicom_file(name: str, tmp_path: Path) -> Path:
    source = get_testdata_file(name, download=False)
    if source is None:
        pytest.skip(f"{name} is not bundled with this pydicom")
    # A numeric name, as in the RSNA layout: files without InstanceNumber still get a header.
    path = tmp_path / "series" / "7.dcm"
    path.parent.mkdir(parents=True)
    shutil.copyfile(str(source), path)
    return path


def _outcome(read: object, path: Path) -> object:
    """What ``read(path)`` gives: a value, or the type and message of its DicomReadError."""
    try:
        return read(path)  # type: ignore[operator]
    except DicomReadError as exc:
        return type(exc), str(exc)


def _decode_first(path: Path) -> np.ndarray:
    return open_series(path.parent).decode(0)


def _without_direct_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dicom_module, "scan_tags", lambda path, tags: None)


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom on its deliberately odd files
@pytest.mark.parametrize("name", PYDICOM_FILES)
def test_headers_and_pixels_equal_pydicom_reading(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _pydicom_file(name, tmp_path)
    header, pixels = _outcome(read_header, path), _outcome(_decode_first, path)
    with monkeypatch.context() as patch:
        _without_direct_read(patch)
        expected_header = _outcome(read_header, path)
    assert header == expected_header
    if isinstance(header, tuple):
        return  # no header: the series has no slice to decode
    expected_pixels = _outcome(read_slice, path)  # pydicom only, always
    if isinstance(expected_pixels, tuple):
        assert pixels == expected_pixels
    else:
        assert isinstance(pixels, np.ndarray)
        assert isinstance(expected_pixels, np.ndarray)
        assert pixels.dtype == expected_pixels.dtype
        np.testing.assert_array_equal(pixels, expected_pixels)


@pytest.mark.parametrize(
    ("name", "walked"),
    [("MR_small.dcm", True),
     ("MR_small_implicit.dcm", True),
     ("rtplan.dcm", True),
     ("nested_priv_SQ.dcm", True),
     ("MR_small_RLE.dcm", True),
     ("MR_small_bigendian.dcm", False),  # big endian
     ("image_dfl.dcm", False),  # deflated dataset
     ("no_meta.dcm", False),  # no DICM preamble
     ("meta_missing_tsyntax.dcm", False)],  # no transfer syntax
)  # fmt: skip
def test_files_outside_the_walk_are_left_to_pydicom(
    name: str, walked: bool, tmp_path: Path
) -> None:
    assert (scan_tags(_pydicom_file(name, tmp_path), GEOMETRY) is not None) == walked


def test_compressed_pixel_data_is_not_located(tmp_path: Path) -> None:
    scan = scan_tags(_pydicom_file("MR_small_RLE.dcm", tmp_path), GEOMETRY)
    assert scan is not None
    assert scan.pixel_data is None  # encapsulated frames: pydicom reads them
    native = scan_tags(_pydicom_file("MR_small.dcm", tmp_path / "n"), GEOMETRY)
    assert native is not None
    assert native.pixel_data is not None
    assert native.pixel_data.value is None  # left on disk until decoded


def _item(instance: int, nested: Sequence | None = None) -> Dataset:
    item = Dataset()
    item.InstanceNumber = instance  # same tag as the top-level one, inside a sequence
    item.ReferencedSOPInstanceUID = "1.2.3"
    if nested is not None:
        item.ReferencedImageSequence = nested
    return item


def _write_with_sequences(path: Path, syntax: UID, *, undefined: bool, padding: int) -> None:
    study = plain_study(1)
    ds = build_dataset(study, study.series[0], 2)
    inner = Sequence([_item(77), _item(78)])
    ds.SourceImageSequence = Sequence([_item(99, inner), _item(98)])
    if padding:  # a long private element before the geometry: more than the first read
        ds.add_new(0x00191010, "OB", bytes(range(256)) * (padding // 256))
    if undefined:
        for element in (ds["SourceImageSequence"], ds.SourceImageSequence[0][0x00081140]):
            element.is_undefined_length = True
            for item in element.value:
                item.is_undefined_length_sequence_item = True
    ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(path, enforce_file_format=True, implicit_vr=syntax == ImplicitVRLittleEndian)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
@pytest.mark.parametrize("undefined", [False, True])
@pytest.mark.parametrize("padding", [0, 40_960])
def test_sequences_are_skipped_and_long_headers_read_whole(
    syntax: UID, undefined: bool, padding: int, tmp_path: Path
) -> None:
    path = tmp_path / "3.dcm"
    _write_with_sequences(path, syntax, undefined=undefined, padding=padding)
    if undefined:
        assert b"\xfe\xff\xdd\xe0" in path.read_bytes()  # a sequence delimitation item
    scan = scan_tags(path, GEOMETRY)
    assert isinstance(scan, TagScan)
    reference = pydicom.dcmread(path, stop_before_pixels=True)
    for tag in GEOMETRY:
        assert scan.elements[tag].value == reference.get_item(tag).value, hex(tag)
    assert int(reference.InstanceNumber) == 3  # not the 99, 98, 77, 78 of the items
    np.testing.assert_array_equal(_decode_first(path), read_slice(path))


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom on values cut short
def test_a_file_cut_anywhere_reads_as_pydicom_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = tmp_path / "whole.dcm"
    _write_with_sequences(whole, ExplicitVRLittleEndian, undefined=True, padding=0)
    data = whole.read_bytes()
    full = scan_tags(whole, GEOMETRY)
    assert full is not None
    assert full.pixel_data is not None
    cut = tmp_path / "3.dcm"
    for length in [*range(0, full.pixel_data.value_tell + 1, 23), len(data) - 1]:
        cut.write_bytes(data[:length])
        header = _outcome(read_header, cut)
        with monkeypatch.context() as patch:
            _without_direct_read(patch)
            assert header == _outcome(read_header, cut), length
    # Cut inside the pixel data: the header is whole.
    assert header == dataclasses.replace(read_header(whole), path=cut)


def test_unreadable_paths_are_left_to_pydicom(tmp_path: Path) -> None:
    assert scan_tags(tmp_path / "absent.dcm", GEOMETRY) is None
    html = tmp_path / "page.dcm"
    html.write_text("<!DOCTYPE html><html><body>Access denied</body></html>\n")
    assert scan_tags(html, GEOMETRY) is None
    with pytest.raises(DicomReadError, match=re.escape(f"{html}: not a DICOM file")):
        read_header(html)
