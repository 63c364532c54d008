"""Reading a DICOM series: slices in spatial order, with their geometry and real-valued pixels.

Sagittal series are often numbered against space (InstanceNumber 1 on the patient's left in one
scanner, on the right in another), so slices are ordered by where they are: the
ImagePositionPatient of each slice projected on the slice normal, the cross product of the two
direction cosines in ImageOrientationPatient. InstanceNumber orders the series only when that
geometry is missing, inconsistent or places two slices at the same position.

Ordering a series needs six elements of each file; :func:`open_series` reads just those, straight
from the file where the encoding allows (pydicom's full parse costs about half of reading and
decoding the file), and pydicom parses a file only when its pixels are decoded.

Pixels come back as float32 with RescaleSlope/RescaleIntercept applied, signed data
(PixelRepresentation 1) kept signed, and MONOCHROME1 inverted so that bright means high signal.
Compressed transfer syntaxes decode when pydicom has a decoder for them: JPEG-LS and others
need the ``dicom`` extra (``pip install "lumbarssl[dicom]"``).
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Literal

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.utils import pixel_array
from pydicom.uid import UID

from lumbarssl.data._tagscan import (
    NotRegularFile,
    TagScan,
    describe_mode,
    open_regular,
    scan_tags,
)
from lumbarssl.data.skips import OnError
from lumbarssl.errors import DataError, MissingDependencyError

__all__ = [
    "DicomReadError",
    "DicomSeries",
    "LazySeries",
    "MissingDecoderError",
    "NotRegularFileError",
    "PixelSizeMismatchError",
    "SeriesGeometry",
    "SeriesGeometryError",
    "SliceHeader",
    "UnsupportedTransferSyntaxError",
    "open_series",
    "read_header",
    "read_series",
    "read_series_geometry",
    "read_slice",
]

#: Slices whose positions along the normal differ by less than this (mm) count as coincident.
_POSITION_TOLERANCE_MM = 1e-3
#: Direction cosines of two slices this close count as the same orientation.
_ORIENTATION_TOLERANCE = 1e-3
#: More pixels than any MR slice has (16384 x 16384): a header claiming more is refused before
#: a decoder allocates the image.
_MAX_PIXELS = 2**28
#: Elements longer than this many bytes are read from disk only when used. Only the pixel data
#: of an image is that long, so a slice whose pixels are never needed is never read past its
#: header, and one whose pixels are needed is not parsed a second time.
_DEFER_BYTES = 4096
_INSTALL_HINT = 'pip install "lumbarssl[dicom]"'
_INSTANCE_NUMBER = 0x00200013
_POSITION = 0x00200032
_ORIENTATION = 0x00200037
_PIXEL_SPACING = 0x00280030
_ROWS = 0x00280010
_COLUMNS = 0x00280011
_PIXEL_DATA = 0x7FE00010
_BITS_ALLOCATED = 0x00280100
_GEOMETRY_TAGS = frozenset(
    {_INSTANCE_NUMBER, _POSITION, _ORIENTATION, _PIXEL_SPACING, _ROWS, _COLUMNS}
)
#: What decoding a slice reads besides the pixel data: the Image Pixel module (PS3.3
#: C.7.6.3: SamplesPerPixel ... PixelRepresentation), NumberOfFrames, RescaleIntercept/Slope.
_DECODE_TAGS = frozenset(
    {
        0x00280002,
        0x00280004,
        0x00280006,
        0x00280008,
        _ROWS,
        _COLUMNS,
        _BITS_ALLOCATED,
        0x00280101,
        0x00280102,
        0x00280103,
        0x00281052,
        0x00281053,
    }
)


class DicomReadError(DataError):
    """A DICOM file that cannot be read: truncated, not DICOM, no pixel data, undecodable.

    Args:
        path: The file.
        reason: What is wrong with it.

    Attributes:
        path: The ``path`` argument.
        reason: The ``reason`` argument.
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason

    def __reduce__(self) -> tuple[type[DicomReadError], tuple[str, str]]:
        # Keeps the exception picklable across worker processes despite the custom __init__.
        return (type(self), (str(self.path), self.reason))


class NotRegularFileError(DicomReadError):
    """A ``*.dcm`` path that is a FIFO, a device, a socket or a directory.

    It is never read: opening a FIFO for reading would block the run forever.
    """


class PixelSizeMismatchError(DicomReadError):
    """Uncompressed pixel data whose length disagrees with Rows x Columns x BitsAllocated.

    pydicom only warns when the data is longer than the header says, and decodes the image
    sheared (one column too few) or cut; such a slice is refused instead.
    """


class UnsupportedTransferSyntaxError(DicomReadError):
    """Pixel data in a transfer syntax lumbarssl cannot decode (unknown or private)."""


class MissingDecoderError(MissingDependencyError, UnsupportedTransferSyntaxError):
    """Compressed pixel data whose transfer syntax no installed package can decode."""


class SeriesGeometryError(DataError):
    """A series whose slices cannot be put in order or matched to instance numbers."""


@dataclass(frozen=True)
class SliceHeader:
    """Geometry of one DICOM slice, read without decoding its pixels.

    Attributes:
        path: The file.
        instance_number: InstanceNumber (the file name's stem when the tag is absent).
        rows: Image height in pixels.
        columns: Image width in pixels.
        pixel_spacing: PixelSpacing ``(row spacing, column spacing)`` in mm, i.e. the distance
            between rows and between columns; ``None`` if absent.
        position: ImagePositionPatient in mm; ``None`` if absent.
        orientation: ImageOrientationPatient (row then column direction cosines); ``None`` if
            absent.
    """

    path: Path
    instance_number: int
    rows: int
    columns: int
    pixel_spacing: tuple[float, float] | None
    position: tuple[float, float, float] | None
    orientation: tuple[float, float, float, float, float, float] | None

    @property
    def normal(self) -> np.ndarray | None:
        """Unit slice normal (row cosine cross column cosine), shape (3,), or ``None``."""
        if self.orientation is None:
            return None
        normal = np.cross(self.orientation[:3], self.orientation[3:])
        norm = float(np.linalg.norm(normal))
        return normal / norm if norm > 0.5 else None  # near 0 = degenerate cosines


@dataclass(frozen=True)
class SeriesGeometry:
    """The slices of one series in spatial order.

    Attributes:
        series_dir: The series directory.
        slices: One header per readable slice, in spatial order.
        ordered_by: ``"position"`` if ordered along the slice normal, ``"instance_number"`` if
            the geometry could not be used.
        unreadable: Errors of files left out because their header could not be read (only
            with ``on_error="skip"``).
    """

    series_dir: Path
    slices: tuple[SliceHeader, ...]
    ordered_by: Literal["position", "instance_number"]
    unreadable: tuple[DicomReadError, ...] = ()
    instance_to_index: Mapping[int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        mapping = {s.instance_number: i for i, s in enumerate(self.slices)}
        if len(mapping) != len(self.slices):
            numbers = [s.instance_number for s in self.slices]
            repeated = sorted({n for n in numbers if numbers.count(n) > 1})
            raise SeriesGeometryError(f"{self.series_dir}: repeated InstanceNumber {repeated}")
        object.__setattr__(self, "instance_to_index", mapping)

    def __len__(self) -> int:
        return len(self.slices)

    def index_of(self, instance_number: int) -> int:
        """Spatial index of a slice.

        Args:
            instance_number: The slice's InstanceNumber.

        Returns:
            Its position 0..len-1 in spatial order.

        Raises:
            KeyError: If the series has no such readable instance (the message names the
                series directory).
        """
        try:
            return self.instance_to_index[instance_number]
        except KeyError:
            raise KeyError(f"{self.series_dir}: no readable instance {instance_number}") from None


@dataclass(frozen=True)
class DicomSeries:
    """A whole series: geometry and decoded pixels, in spatial order.

    Attributes:
        geometry: Headers in spatial order and the instance → index map.
        pixels: One float32 array per slice, shape (H_i, W_i); shapes may differ between
            slices.
    """

    geometry: SeriesGeometry
    pixels: tuple[np.ndarray, ...]

    def __len__(self) -> int:
        return len(self.pixels)

    @property
    def instance_to_index(self) -> Mapping[int, int]:
        """Map from InstanceNumber to spatial index."""
        return self.geometry.instance_to_index

    def slice_for(self, instance_number: int) -> np.ndarray:
        """Pixels of the slice with this InstanceNumber, shape (H, W)."""
        return self.pixels[self.geometry.index_of(instance_number)]


def _not_regular(path: Path, exc: NotRegularFile) -> NotRegularFileError:
    return NotRegularFileError(
        path, f"{exc.kind}, not a regular file; it was not read (replace it by the DICOM file)"
    )


def _dcmread(path: Path, *, stop_before_pixels: bool = False, defer: bool = False) -> Dataset:
    # pydicom opens the path itself: check first that it is a regular file (a FIFO would
    # block). The walk of _tagscan checks on the open descriptor; this only runs when pydicom
    # must parse the file.
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise
    except OSError as exc:  # a symbolic link loop, a path too long ...
        raise DicomReadError(path, f"cannot be read ({exc.strerror})") from exc
    if not stat.S_ISREG(mode):
        raise _not_regular(path, NotRegularFile(path, describe_mode(mode)))
    try:
        return pydicom.dcmread(
            path,
            force=False,
            stop_before_pixels=stop_before_pixels,
            defer_size=_DEFER_BYTES if defer else None,
        )
    except FileNotFoundError:
        raise
    except InvalidDicomError as exc:
        raise DicomReadError(path, "not a DICOM file (no DICM preamble)") from exc
    except Exception as exc:  # pydicom raises many types on truncated or garbled data
        raise DicomReadError(path, f"unreadable DICOM ({type(exc).__name__}: {exc})") from exc


def _numbers(value: object) -> tuple[float, ...] | None:
    """Values of a DS/IS element, parsed from its raw text when it is still raw.

    pydicom's conversion of decimal strings is several times slower than reading the header;
    the raw bytes are ASCII numbers separated by backslashes.
    """
    if value is None:
        return None
    if isinstance(value, bytes):
        parts: list[str] = value.decode("ascii", errors="replace").strip(" \x00").split("\\")
    elif isinstance(value, str | int | float):
        parts = [str(value)]
    elif isinstance(value, Iterable):  # a multi-valued element pydicom already converted
        parts = [str(v) for v in value]
    else:
        return None
    try:
        numbers = tuple(float(part) for part in parts)
    except ValueError:
        return None
    return numbers if all(math.isfinite(v) for v in numbers) else None


def _unsigned(value: object, little_endian: bool) -> int | None:
    """Value of a US element (Rows, Columns), from its raw bytes when still raw."""
    if value is None:
        return None
    if isinstance(value, bytes):
        if len(value) != 2:
            return None
        return int.from_bytes(value, "little" if little_endian else "big")
    return value if isinstance(value, int) else None  # already converted by pydicom


def _header(path: Path, values: Mapping[int, object], *, little_endian: bool = True) -> SliceHeader:
    """The header of one file from the (raw) values of its geometry elements."""
    instance = _numbers(values.get(_INSTANCE_NUMBER))
    if instance is not None and len(instance) == 1 and float(instance[0]).is_integer():
        instance_number = int(instance[0])
    elif path.stem.isdigit():
        instance_number = int(path.stem)
    else:
        raise DicomReadError(path, "no valid InstanceNumber and the file name is not a number")
    rows = _unsigned(values.get(_ROWS), little_endian)
    columns = _unsigned(values.get(_COLUMNS), little_endian)
    if rows is None or columns is None:
        raise DicomReadError(path, "no Rows/Columns: not an image")
    spacing = _numbers(values.get(_PIXEL_SPACING))
    position = _numbers(values.get(_POSITION))
    orientation = _numbers(values.get(_ORIENTATION))
    return SliceHeader(
        path=path,
        instance_number=instance_number,
        rows=rows,
        columns=columns,
        pixel_spacing=None if spacing is None or len(spacing) != 2 else (spacing[0], spacing[1]),
        position=None if position is None or len(position) != 3 else _three(position),
        orientation=None if orientation is None or len(orientation) != 6 else _six(orientation),
    )


def _dataset_values(ds: Dataset) -> dict[int, object]:
    """The geometry elements of a parsed file, raw as read (pydicom converts on access)."""
    values: dict[int, object] = {}
    for tag in _GEOMETRY_TAGS:
        element = ds.get_item(tag)
        if element is not None and element.value is not None:
            values[tag] = element.value
    return values


def _read_header(path: Path) -> tuple[SliceHeader, TagScan | Dataset]:
    """The header of one file, and what was read of it, for decoding it later.

    The elements are found straight in the file (:func:`scan_tags`); a file in an encoding
    that walk does not cover is parsed by pydicom instead, its pixel data left on disk until
    used, and that dataset is returned so that it need not be parsed again.
    """
    try:
        scan = scan_tags(path, _GEOMETRY_TAGS | _DECODE_TAGS)
    except NotRegularFile as exc:
        raise _not_regular(path, exc) from None
    if scan is not None:
        values = {
            tag: raw.value
            for tag, raw in scan.elements.items()
            if tag in _GEOMETRY_TAGS and raw.value is not None
        }
        return _header(path, values), scan
    ds = _dcmread(path, defer=True)
    little_endian = ds.original_encoding[1] is not False
    return _header(path, _dataset_values(ds), little_endian=little_endian), ds


def _scanned_dataset(path: Path, scan: TagScan) -> Dataset:
    """A dataset of the elements decoding needs, as pydicom would have read them."""
    pixel_data = scan.pixel_data
    assert pixel_data is not None  # checked by the caller
    try:
        handle = open_regular(path)
    except NotRegularFile as exc:
        raise _not_regular(path, exc) from None
    with handle:
        if pixel_data.value_tell + pixel_data.length > os.fstat(handle.fileno()).st_size:
            raise DicomReadError(path, "truncated inside its pixel data")  # pydicom says more
        handle.seek(pixel_data.value_tell)
        value = handle.read(pixel_data.length)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = scan.transfer_syntax
    for raw in scan.elements.values():
        if raw.tag in _DECODE_TAGS:
            ds[raw.tag] = raw
    ds[pixel_data.tag] = pixel_data._replace(value=value)
    return ds


def _three(values: tuple[float, ...]) -> tuple[float, float, float]:
    a, b, c = values
    return a, b, c


def _six(values: tuple[float, ...]) -> tuple[float, float, float, float, float, float]:
    a, b, c, d, e, f = values
    return a, b, c, d, e, f


def read_header(path: str | Path) -> SliceHeader:
    """Read the geometry of one DICOM file without reading its pixel data.

    The six elements are read straight from the file when its encoding allows (little
    endian, not deflated), otherwise by pydicom; the header is the same either way.

    Args:
        path: The ``.dcm`` file.

    Returns:
        Its header.

    Raises:
        DicomReadError: If the file is not DICOM, is truncated inside its header, or is not an
            image. The message names the file.
        FileNotFoundError: If the file does not exist.
    """
    return _read_header(Path(path))[0]


def _value(path: Path, ds: Dataset, keyword: str, default: object) -> object:
    """An element's value as pydicom converts it; ``default`` when it is absent.

    Raises:
        DicomReadError: If the element cannot be converted (a garbled VR or value: pydicom
            raises ``NotImplementedError``, ``ValueError`` ... on first access).
    """
    try:
        return ds.get(keyword, default)
    except Exception as exc:
        raise DicomReadError(path, f"unreadable {keyword} ({type(exc).__name__}: {exc})") from exc


def _number(path: Path, ds: Dataset, keyword: str, default: float) -> float:
    """A numeric element's value; ``default`` when it is absent, empty or zero."""
    value = _value(path, ds, keyword, default)
    try:
        return float(value or default)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:  # e.g. "1A" in an IS element
        raise DicomReadError(path, f"{keyword} is not a number ({exc})") from exc


def _raw_unsigned(ds: Dataset, tag: int, little_endian: bool) -> int | None:
    """A US element's value without pydicom converting the element (``None`` if unusable)."""
    # pydicom types get_item as returning a converted element; an unconverted one stays raw.
    element: object = ds.get_item(tag, keep_deferred=True)
    if element is None:
        return None
    value = getattr(element, "value", None)
    if isinstance(element, RawDataElement):
        return _unsigned(value, little_endian)
    return value if isinstance(value, int) else None


def _check_pixel_size(path: Path, ds: Dataset, compressed: bool) -> None:
    """Refuse pixel data whose size disagrees with the header, before anything decodes it.

    Only the element's declared length is used (no pixel is read here): for uncompressed
    data it must be Rows x Columns x BitsAllocated / 8 (SamplesPerPixel and NumberOfFrames
    are 1, checked before), plus one padding byte when that is odd. A file cut inside its
    pixel data keeps the declared length and is reported by the decoder as truncated.
    """
    # From the raw elements: pydicom's conversion costs more than the rest of the check.
    little_endian = ds.original_encoding[1] is not False
    values = [_raw_unsigned(ds, tag, little_endian) for tag in (_ROWS, _COLUMNS, _BITS_ALLOCATED)]
    rows, columns, bits = values
    if rows is None or columns is None or bits is None:
        return  # absent or garbled: the decoder reports it
    if rows * columns > _MAX_PIXELS:
        raise DicomReadError(
            path, f"Rows x Columns = {rows} x {columns} is more than {_MAX_PIXELS} pixels"
        )
    if compressed:
        return
    # pydicom types get_item as returning a converted element; an unconverted one stays raw.
    element: object = ds.get_item(_PIXEL_DATA, keep_deferred=True)
    if isinstance(element, RawDataElement):
        declared = element.length
    else:
        declared = len(getattr(element, "value", None) or b"")
    expected = (rows * columns * bits + 7) // 8
    if declared in (expected, expected + expected % 2):
        return
    raise PixelSizeMismatchError(
        path,
        f"pixel data holds {declared} bytes but Rows x Columns x BitsAllocated / 8 = "
        f"{rows} x {columns} x {bits} / 8 = {expected}: the header does not describe the "
        "pixels (decoding would shear or cut the image)",
    )


def _pixels(path: Path, ds: Dataset) -> np.ndarray:
    if "PixelData" not in ds:
        raise DicomReadError(path, "no pixel data (PixelData element missing)")
    if (samples := _number(path, ds, "SamplesPerPixel", 1)) != 1:
        raise DicomReadError(path, f"{samples:g} samples per pixel; expected grayscale")
    if (frames := _number(path, ds, "NumberOfFrames", 1)) != 1:
        raise DicomReadError(path, f"{frames:g} frames; expected one slice per file")
    found = _value(path, ds.file_meta, "TransferSyntaxUID", None)
    syntax = None if found is None else UID(str(found))
    if syntax is not None and not syntax.is_transfer_syntax:
        raise UnsupportedTransferSyntaxError(
            path, f"TransferSyntaxUID {str(syntax)[:64]!r} is not a known transfer syntax"
        )
    _check_pixel_size(path, ds, syntax is not None and syntax.is_compressed)
    if syntax is not None and syntax.is_compressed:
        try:
            available = get_decoder(syntax).is_available
        except NotImplementedError:
            available = False
        if not available:
            raise MissingDecoderError(
                path,
                f"no decoder installed for transfer syntax {syntax.name} ({syntax}); "
                f"install one with: {_INSTALL_HINT}",
            )
    try:
        # With a deferred read this is where the pixel data is read from the file. Unlike
        # ds.pixel_array, this keeps no copy of the array in the dataset.
        raw = pixel_array(ds)
    except Exception as exc:  # decoders raise ValueError, RuntimeError, OSError ... on bad data
        raise DicomReadError(
            path, f"cannot decode pixel data ({type(exc).__name__}: {exc})"
        ) from exc
    pixels = np.asarray(raw, dtype=np.float32)
    if pixels.ndim != 2:
        raise DicomReadError(path, f"pixel data has shape {pixels.shape}; expected (rows, cols)")
    slope = _number(path, ds, "RescaleSlope", 1.0)
    intercept = _number(path, ds, "RescaleIntercept", 0.0)
    if slope != 1.0:
        pixels *= np.float32(slope)
    if intercept != 0.0:
        pixels += np.float32(intercept)
    if str(_value(path, ds, "PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        pixels = pixels.max() + pixels.min() - pixels
    return pixels


def read_slice(path: str | Path) -> np.ndarray:
    """Decode one DICOM slice to real-valued pixels.

    Args:
        path: The ``.dcm`` file.

    Returns:
        float32 array of shape (H, W): stored values * RescaleSlope + RescaleIntercept, signed
        when PixelRepresentation is 1, inverted for MONOCHROME1.

    Raises:
        MissingDecoderError: If the pixel data is compressed with a transfer syntax no
            installed decoder handles; the message names the file, the syntax and
            ``pip install "lumbarssl[dicom]"``.
        DicomReadError: If the file is not DICOM, truncated, has no pixel data or more than one
            frame or sample per pixel. The message names the file.
        FileNotFoundError: If the file does not exist.
    """
    path = Path(path)
    return _pixels(path, _dcmread(path, stop_before_pixels=False))


def _spatial_order(
    headers: Sequence[SliceHeader],
) -> tuple[list[SliceHeader], Literal["position", "instance_number"]]:
    by_instance = sorted(headers, key=lambda h: h.instance_number)
    normal = headers[0].normal if headers else None
    reference = headers[0].orientation
    if normal is None or reference is None:
        return by_instance, "instance_number"
    nx, ny, nz = (float(v) for v in normal)
    keyed: list[tuple[float, int, SliceHeader]] = []
    for header in headers:
        if header.position is None or header.orientation is None:
            return by_instance, "instance_number"
        if max(abs(a - b) for a, b in zip(header.orientation, reference, strict=True)) > (
            _ORIENTATION_TOLERANCE
        ):
            return by_instance, "instance_number"
        x, y, z = header.position
        keyed.append((x * nx + y * ny + z * nz, header.instance_number, header))
    keyed.sort(key=lambda item: item[:2])  # distance along the normal, then InstanceNumber
    distances = [distance for distance, _, _ in keyed]
    if any(b - a < _POSITION_TOLERANCE_MM for a, b in pairwise(distances)):
        return by_instance, "instance_number"
    return [header for _, _, header in keyed], "position"


class LazySeries:
    """A series whose headers are read and ordered, and whose pixels are decoded on demand.

    Made by :func:`open_series` (not meant to be built directly), which locates the elements
    each file needs without parsing the whole header. :meth:`decode` then reads one slice's
    pixel data and decodes it with pydicom. The series keeps no pixels.

    Args:
        geometry: The ordered headers.
        sources: Per slice of ``geometry``, what :func:`open_series` read of its file: the
            elements it found, or the file as parsed by pydicom with its pixel data deferred.

    Attributes:
        geometry: Headers in spatial order and the instance → index map.

    Raises:
        ValueError: If ``sources`` and ``geometry`` differ in length.
    """

    def __init__(self, geometry: SeriesGeometry, sources: Sequence[TagScan | Dataset]) -> None:
        if len(sources) != len(geometry):
            raise ValueError(
                f"got {len(sources)} sources for the {len(geometry)} slices of "
                f"{geometry.series_dir}"
            )
        self.geometry = geometry
        self._sources = tuple(sources)

    def __len__(self) -> int:
        return len(self.geometry)

    def decode(self, index: int) -> np.ndarray:
        """Decode the pixels of one slice, as :func:`read_slice` does.

        Each call reads the pixel data from the file and decodes it again (the series keeps
        headers only); callers that need a slice twice keep the result.

        Args:
            index: Spatial index of the slice, 0..len-1.

        Returns:
            float32 array of shape (H, W).

        Raises:
            IndexError: If ``index`` is out of range.
            MissingDecoderError: If no installed decoder handles the transfer syntax.
            DicomReadError: If the pixel data is missing, truncated or undecodable.
        """
        if not 0 <= index < len(self._sources):
            raise IndexError(f"slice index must be in [0, {len(self) - 1}], got {index}")
        path = self.geometry.slices[index].path
        source = self._sources[index]
        if isinstance(source, TagScan):
            if source.pixel_data is not None:
                try:
                    return _pixels(path, _scanned_dataset(path, source))
                except (NotRegularFileError, PixelSizeMismatchError):
                    raise  # pydicom would say the same (or block on a FIFO)
                except (DicomReadError, OSError):
                    pass  # pydicom reading the whole file gives the reference error
            return _pixels(path, _dcmread(path))
        # pydicom types get_item as returning a converted element; a deferred one stays raw.
        unread: object = source.get_item(_PIXEL_DATA, keep_deferred=True)
        try:
            return _pixels(path, source)
        finally:
            if isinstance(unread, RawDataElement) and unread.value is None:
                # Reading the pixels stored them in the dataset; put the deferred element back
                # so that the series holds headers only, however many slices are decoded.
                source[_PIXEL_DATA] = unread


def open_series(series_dir: str | Path, *, on_error: OnError = "raise") -> LazySeries:
    """Read the header of every ``*.dcm`` file of a series once and order the slices in space.

    Slices are sorted by the projection of ImagePositionPatient on the slice normal (ties and
    equal positions broken by InstanceNumber). If any slice lacks position or orientation,
    orientations differ between slices, or two slices coincide, the series is ordered by
    InstanceNumber instead and :attr:`SeriesGeometry.ordered_by` says so. Pixel data is not
    read until :meth:`LazySeries.decode` asks for it.

    Args:
        series_dir: Directory of one series (``train_images/<study>/<series>``).
        on_error: ``"raise"`` on the first unreadable file; ``"skip"`` leaves such files out
            of the order and lists them in :attr:`SeriesGeometry.unreadable`.

    Returns:
        The ordered series.

    Raises:
        DicomReadError: If a header cannot be read (``on_error="raise"``).
        SeriesGeometryError: If the directory holds no readable ``.dcm`` file or two files
            share an InstanceNumber.
    """
    series_dir = Path(series_dir)
    headers: list[SliceHeader] = []
    sources: dict[int, TagScan | Dataset] = {}  # id(header) -> what was read of its file
    unreadable: list[DicomReadError] = []
    for path in sorted(series_dir.glob("*.dcm")):
        try:
            try:
                header, source = _read_header(path)
            except FileNotFoundError as exc:  # a dangling symbolic link, a file just deleted
                if on_error == "raise":
                    raise
                raise DicomReadError(path, "no such file (a dangling symbolic link?)") from exc
        except DicomReadError as exc:
            if on_error == "raise":
                raise
            unreadable.append(exc)
            continue
        headers.append(header)
        sources[id(header)] = source
    if not headers:
        raise SeriesGeometryError(f"{series_dir}: no readable .dcm file")
    ordered, ordered_by = _spatial_order(headers)
    geometry = SeriesGeometry(series_dir, tuple(ordered), ordered_by, tuple(unreadable))
    return LazySeries(geometry, [sources[id(h)] for h in ordered])


def read_series_geometry(series_dir: str | Path, *, on_error: OnError = "raise") -> SeriesGeometry:
    """Read the headers of every ``*.dcm`` file of a series and order them in space.

    The geometry of :func:`open_series`, without keeping the parsed files.

    Args:
        series_dir: Directory of one series (``train_images/<study>/<series>``).
        on_error: ``"raise"`` on the first unreadable file; ``"skip"`` leaves such files out
            of the order and lists them in :attr:`SeriesGeometry.unreadable`.

    Returns:
        The ordered geometry.

    Raises:
        DicomReadError: If a header cannot be read (``on_error="raise"``).
        SeriesGeometryError: If the directory holds no readable ``.dcm`` file or two files
            share an InstanceNumber.
    """
    return open_series(series_dir, on_error=on_error).geometry


def read_series(series_dir: str | Path) -> DicomSeries:
    """Read a whole series: every file parsed once and decoded once, in spatial order.

    Args:
        series_dir: Directory of one series (``train_images/<study>/<series>``).

    Returns:
        The series.

    Raises:
        DicomReadError: If a file cannot be read or decoded (the message names it).
        SeriesGeometryError: If the series is empty or repeats an InstanceNumber.
    """
    series = open_series(series_dir)
    return DicomSeries(series.geometry, tuple(series.decode(i) for i in range(len(series))))
