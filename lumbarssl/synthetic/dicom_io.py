"""Writing MR Image Storage DICOM files, one series at a time, quickly.

``pydicom.dcmwrite`` re-encodes every element of every file, which costs more than rendering the
image. The slices of a series share all but five elements, so :class:`SeriesWriter` encodes the
shared ones once with pydicom's own element encoder and, per slice, encodes only SOPInstanceUID,
InstanceNumber, ImagePositionPatient, SliceLocation and PixelData and splices them in tag order.
The result is byte for byte what ``pydicom.dcmwrite(path, dataset, enforce_file_format=True)``
writes for the same dataset (the tests check this).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset, validate_file_meta
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID, ExplicitVRLittleEndian, MRImageStorage
from pydicom.valuerep import format_number_as_ds

__all__ = ["AXIAL_ORIENTATION", "SAGITTAL_ORIENTATION", "SeriesWriter", "format_ds", "mr_template"]

#: Rows run posterior (+Y), columns run inferior (-Z): the usual sagittal display, anterior left.
SAGITTAL_ORIENTATION: tuple[float, ...] = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
#: Rows run to the patient's left (+X), columns posterior (+Y): axial, anterior at the top.
AXIAL_ORIENTATION: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)

_PREAMBLE = b"\x00" * 128 + b"DICM"
# Elements that differ between the instances of a series, in tag order.
_SOP_INSTANCE_UID = Tag(0x0008, 0x0018)
_INSTANCE_NUMBER = Tag(0x0020, 0x0013)
_IMAGE_POSITION = Tag(0x0020, 0x0032)
_SLICE_LOCATION = Tag(0x0020, 0x1041)
_PIXEL_DATA = Tag(0x7FE0, 0x0010)
_DYNAMIC = (_SOP_INSTANCE_UID, _INSTANCE_NUMBER, _IMAGE_POSITION, _SLICE_LOCATION, _PIXEL_DATA)
_MEDIA_SOP_INSTANCE_UID = Tag(0x0002, 0x0003)
_GROUP_LENGTH = Tag(0x0002, 0x0000)


def format_ds(value: float) -> str:
    """A decimal string (VR DS) of at most 16 characters for ``value``."""
    return str(format_number_as_ds(float(value)))


def mr_template(
    *,
    study_uid: str,
    series_uid: str,
    frame_uid: str,
    study_id: int,
    series_number: int,
    description: str,
    rows: int,
    columns: int,
    pixel_spacing: float,
    slice_thickness: float,
    slice_spacing: float,
    orientation: Sequence[float],
    rescale: tuple[float, float],
    window: tuple[float, float],
    echo_time: float,
    repetition_time: float,
    study_date: str,
) -> Dataset:
    """A complete MR image dataset without the per-instance elements.

    Args:
        study_uid: StudyInstanceUID.
        series_uid: SeriesInstanceUID.
        frame_uid: FrameOfReferenceUID.
        study_id: The study's integer id, used as PatientID.
        series_number: SeriesNumber.
        description: SeriesDescription.
        rows: Rows.
        columns: Columns.
        pixel_spacing: Row and column spacing (mm).
        slice_thickness: SliceThickness (mm).
        slice_spacing: SpacingBetweenSlices (mm).
        orientation: ImageOrientationPatient (six direction cosines).
        rescale: ``(RescaleSlope, RescaleIntercept)``; omitted when ``(1, 0)``.
        window: ``(WindowCenter, WindowWidth)`` in rescaled units.
        echo_time: EchoTime (ms).
        repetition_time: RepetitionTime (ms).
        study_date: StudyDate, ``YYYYMMDD``.

    Returns:
        The dataset, with ``file_meta`` for Explicit VR Little Endian.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = UID("1.2")  # replaced per instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    validate_file_meta(meta, enforce_standard=True)

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.SOPClassUID = MRImageStorage
    ds.StudyDate = study_date
    ds.SeriesDate = study_date
    ds.StudyTime = "090000"
    ds.AccessionNumber = ""
    ds.Modality = "MR"
    ds.Manufacturer = "lumbarssl"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "LUMBAR SPINE (SYNTHETIC)"
    ds.SeriesDescription = description
    ds.ManufacturerModelName = "synthetic phantom"
    ds.PatientName = f"Synthetic^{study_id}"
    ds.PatientID = str(study_id)
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.BodyPartExamined = "LSPINE"
    ds.ScanningSequence = "SE"
    ds.SequenceVariant = "SK"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "2D"
    ds.SliceThickness = format_ds(slice_thickness)
    ds.RepetitionTime = format_ds(repetition_time)
    ds.EchoTime = format_ds(echo_time)
    ds.MagneticFieldStrength = "1.5"
    ds.SpacingBetweenSlices = format_ds(slice_spacing)
    ds.EchoTrainLength = "16"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = str(series_number)
    ds.ImageOrientationPatient = [format_ds(v) for v in orientation]
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.PixelSpacing = [format_ds(pixel_spacing), format_ds(pixel_spacing)]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.WindowCenter = format_ds(window[0])
    ds.WindowWidth = format_ds(window[1])
    slope, intercept = rescale
    if (slope, intercept) != (1.0, 0.0):
        ds.RescaleIntercept = format_ds(intercept)
        ds.RescaleSlope = format_ds(slope)
        ds.RescaleType = "US"
    return ds


def instance_dataset(
    template: Dataset,
    *,
    sop_instance_uid: str,
    instance_number: int,
    position: Sequence[float],
    slice_location: float,
    pixels: NDArray[np.uint16],
) -> Dataset:
    """The full dataset of one instance: ``template`` plus the per-instance elements.

    Slower than :meth:`SeriesWriter.write`; the reference it is tested against.
    """
    ds = Dataset(template)
    ds.file_meta = FileMetaDataset(template.file_meta)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    for tag, element in _dynamic_elements(
        sop_instance_uid, instance_number, position, slice_location, pixels
    ).items():
        ds[tag] = element
    return ds


class SeriesWriter:
    """Writes the instances of one series, encoding what they share once.

    Args:
        template: The series' dataset from :func:`mr_template` (no per-instance elements).

    Raises:
        ValueError: If ``template`` already holds a per-instance element.
    """

    def __init__(self, template: Dataset) -> None:
        present = [tag for tag in _DYNAMIC if tag in template]
        if present:
            raise ValueError(f"template must not hold per-instance elements, found {present}")
        self._meta_chunks = [
            _encode(element)
            for element in template.file_meta
            if element.tag not in (_GROUP_LENGTH, _MEDIA_SOP_INSTANCE_UID)
        ]
        self._meta_split = sum(
            1
            for e in template.file_meta
            if e.tag < _MEDIA_SOP_INSTANCE_UID and e.tag != _GROUP_LENGTH
        )
        # Static chunks between consecutive per-instance tags.
        self._chunks: list[bytes] = [b"" for _ in range(len(_DYNAMIC) + 1)]
        for element in template:
            slot = sum(1 for tag in _DYNAMIC if tag < element.tag)
            self._chunks[slot] += _encode(element)

    def encode(
        self,
        *,
        sop_instance_uid: str,
        instance_number: int,
        position: Sequence[float],
        slice_location: float,
        pixels: NDArray[np.uint16],
    ) -> bytes:
        """Encode one instance as the bytes of a DICOM file (preamble included)."""
        media_uid = _encode(DataElement(_MEDIA_SOP_INSTANCE_UID, "UI", sop_instance_uid))
        split = self._meta_split
        meta = [*self._meta_chunks[:split], media_uid, *self._meta_chunks[split:]]
        meta_length = sum(len(chunk) for chunk in meta)
        group_length = _encode(DataElement(_GROUP_LENGTH, "UL", meta_length))
        dynamic = _dynamic_elements(
            sop_instance_uid, instance_number, position, slice_location, pixels
        )
        parts = [_PREAMBLE, group_length, *meta, self._chunks[0]]
        for tag, chunk in zip(_DYNAMIC, self._chunks[1:], strict=True):
            parts.append(_encode(dynamic[tag]))
            parts.append(chunk)
        return b"".join(parts)

    def write(
        self,
        path: Path,
        *,
        sop_instance_uid: str,
        instance_number: int,
        position: Sequence[float],
        slice_location: float,
        pixels: NDArray[np.uint16],
    ) -> None:
        """Write one instance to ``path``."""
        path.write_bytes(
            self.encode(
                sop_instance_uid=sop_instance_uid,
                instance_number=instance_number,
                position=position,
                slice_location=slice_location,
                pixels=pixels,
            )
        )


def _dynamic_elements(
    sop_instance_uid: str,
    instance_number: int,
    position: Sequence[float],
    slice_location: float,
    pixels: NDArray[np.uint16],
) -> dict[BaseTag, DataElement]:
    if pixels.dtype != np.uint16 or pixels.ndim != 2:
        raise ValueError(f"pixels must be a 2-D uint16 array, got {pixels.dtype} {pixels.shape}")
    data = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    return {
        _SOP_INSTANCE_UID: DataElement(_SOP_INSTANCE_UID, "UI", sop_instance_uid),
        _INSTANCE_NUMBER: DataElement(_INSTANCE_NUMBER, "IS", str(instance_number)),
        _IMAGE_POSITION: DataElement(_IMAGE_POSITION, "DS", [format_ds(v) for v in position]),
        _SLICE_LOCATION: DataElement(_SLICE_LOCATION, "DS", format_ds(slice_location)),
        _PIXEL_DATA: DataElement(_PIXEL_DATA, "OW", data),
    }


def _encode(element: DataElement) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write_data_element(fp, element)
    return bytes(fp.getvalue())
