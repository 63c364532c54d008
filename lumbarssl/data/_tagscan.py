"""A few top-level elements of a DICOM file, found without building a pydicom Dataset.

Ordering a series needs six elements of every file (InstanceNumber, ImagePositionPatient,
ImageOrientationPatient, Rows, Columns, PixelSpacing), and decoding a slice needs a dozen
more of group 0028 and the pixel data. :func:`pydicom.dcmread` builds a full
:class:`~pydicom.dataset.Dataset` to get them, which costs about half of reading and decoding
the whole file; walking the element headers and keeping the wanted elements costs a tenth of
it. The walk only locates elements: it returns them as pydicom
:class:`~pydicom.dataelem.RawDataElement` objects, exactly as pydicom's own reader would,
and pydicom converts and decodes them.

The walk covers the common encodings only: little endian with explicit or implicit VR,
sequences of defined or undefined length. For anything else (no ``DICM`` preamble, big
endian, deflate, a private transfer syntax, a VR that contradicts the syntax, a file that ends
inside its header, ...) :func:`scan_tags` returns ``None`` and the caller reads the file with
pydicom, so the result never depends on which reader handled a file.
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydicom.dataelem import RawDataElement
from pydicom.tag import BaseTag
from pydicom.uid import UID

__all__ = ["NotRegularFile", "TagScan", "describe_mode", "open_regular", "scan_tags"]

#: Bytes read first; enough for the whole header of most MR files. A header that does not
#: fit is read again with the rest of the file.
_FIRST_READ = 16 * 1024
_PREAMBLE = 128
_MAGIC = b"DICM"
_TRANSFER_SYNTAX = 0x00020010
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_ITEM_GROUP = 0xFFFE
_META_GROUP = 0x0002
#: The walk stops at the pixel data group: nothing needed comes after it.
_PIXEL_GROUP_START = 0x7FE00000
_PIXEL_DATA = 0x7FE00010
_UNDEFINED = 0xFFFFFFFF
#: VRs of PS3.5 Table 7.1-1; explicit VR elements with any other VR are not walked.
_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL "
    b"UN UR US UT UV".split()
)
#: VRs with a reserved field and a 4-byte length (PS3.5 Section 7.1.2).
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
_TAG = struct.Struct("<HH")
_UINT16 = struct.Struct("<H")
_UINT32 = struct.Struct("<I")


#: Opening never blocks: a FIFO (named pipe) would wait for a writer forever.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def describe_mode(mode: int) -> str:
    """What a file of this ``st_mode`` is, for a message: ``"a FIFO (named pipe)"`` ...

    Args:
        mode: ``st_mode`` of a ``stat`` result.

    Returns:
        A noun phrase.
    """
    if stat.S_ISREG(mode):
        return "a regular file"
    return next((name for test, name in _KINDS if test(mode)), "a special file")


class NotRegularFile(Exception):
    """The path names something other than a regular file, which is never read.

    Deliberately not an :class:`OSError`, so that callers falling back to another reader on
    an ``OSError`` do not open it again (and block on a FIFO).

    Args:
        path: The path.
        kind: What it is, e.g. ``"a FIFO (named pipe)"``.

    Attributes:
        path: The ``path`` argument.
        kind: The ``kind`` argument.
    """

    def __init__(self, path: Path, kind: str) -> None:
        super().__init__(f"{path}: {kind}, not a regular file")
        self.path = path
        self.kind = kind


def open_regular(path: Path) -> BinaryIO:
    """Open a file for reading if, and only if, it is a regular file; never block.

    The file is opened without blocking and checked with ``fstat`` on the open descriptor, so
    a FIFO, a device or a socket named like a slice is neither waited on nor read, and a file
    swapped between a check and the open cannot slip through.

    Args:
        path: The file.

    Returns:
        The file opened for binary reading (buffered).

    Raises:
        NotRegularFile: If ``path`` is a FIFO, a directory, a device or a socket.
        OSError: If it cannot be opened (absent, no permission).
    """
    fd = os.open(path, _OPEN_FLAGS)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(path, describe_mode(mode))
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


@dataclass(frozen=True)
class TagScan:
    """What :func:`scan_tags` found in a file.

    Attributes:
        transfer_syntax: The file's TransferSyntaxUID.
        elements: The wanted top-level elements present, by tag, as pydicom reads them.
        pixel_data: The PixelData element with its value left on disk (``value`` is
            ``None``; ``value_tell`` is its offset in the file), or ``None`` if the file has no
            PixelData of defined length (none, or encapsulated compressed frames).
    """

    transfer_syntax: UID
    elements: dict[int, RawDataElement]
    pixel_data: RawDataElement | None


class _Unsupported(Exception):
    """The file needs pydicom: an encoding or a structure this walk does not cover."""


class _Truncated(Exception):
    """The bytes read so far end inside the header."""


def _element(data: bytes, pos: int, implicit: bool) -> tuple[int, bytes | None, int, int]:
    """Header of the element at ``pos``: (tag, VR or None, value length, value offset)."""
    if pos + 8 > len(data):
        raise _Truncated
    group, number = _TAG.unpack_from(data, pos)
    tag = group << 16 | number
    if implicit or group == _ITEM_GROUP:  # items and delimiters never carry a VR
        return tag, None, _UINT32.unpack_from(data, pos + 4)[0], pos + 8
    vr = data[pos + 4 : pos + 6]
    if vr not in _VRS:
        raise _Unsupported
    if vr in _LONG_VRS:
        if pos + 12 > len(data):
            raise _Truncated
        return tag, vr, _UINT32.unpack_from(data, pos + 8)[0], pos + 12
    return tag, vr, _UINT16.unpack_from(data, pos + 6)[0], pos + 8


def _raw(
    tag: int, vr: bytes | None, length: int, value: bytes | None, offset: int, implicit: bool
) -> RawDataElement:
    """The element as pydicom's reader yields it (little endian, raw value)."""
    text_vr = None if vr is None else vr.decode("ascii")
    return RawDataElement(BaseTag(tag), text_vr, length, value, offset, implicit, True)


def _skip_sequence(data: bytes, pos: int, implicit: bool) -> int:
    """Skip the items of an undefined-length sequence; return the offset past its delimiter."""
    while True:
        tag, _, length, pos = _element(data, pos, implicit)
        if tag == _SEQUENCE_END:
            return pos
        if tag != _ITEM:
            raise _Unsupported
        if length != _UNDEFINED:
            pos += length
            continue
        while True:  # the elements of an undefined-length item
            tag, vr, length, pos = _element(data, pos, implicit)
            if tag == _ITEM_END:
                break
            if length == _UNDEFINED:
                if not (implicit or vr in (b"SQ", b"UN")):
                    raise _Unsupported
                # An undefined-length UN holds an implicit VR sequence (PS3.5 Section 6.2.2).
                pos = _skip_sequence(data, pos, implicit or vr == b"UN")
            else:
                pos += length


def _walk(data: bytes, complete: bool, tags: Collection[int]) -> TagScan:
    """Find ``tags`` among the top-level elements of a DICOM file's bytes.

    Args:
        data: The file's first bytes, or the whole file when ``complete``.
        complete: Whether ``data`` is the whole file, so that its end ends the dataset.
        tags: Wanted tags, all below the pixel data group.

    Raises:
        _Unsupported: If the file needs pydicom.
        _Truncated: If ``data`` ends inside the header.
    """
    if data[_PREAMBLE : _PREAMBLE + 4] != _MAGIC:
        raise _Unsupported
    pos = _PREAMBLE + 4
    syntax = ""
    while pos + 2 <= len(data) and _UINT16.unpack_from(data, pos)[0] == _META_GROUP:
        tag, _, length, pos = _element(data, pos, implicit=False)  # the file meta is explicit
        if length == _UNDEFINED:
            raise _Unsupported
        if tag == _TRANSFER_SYNTAX:
            syntax = data[pos : pos + length].rstrip(b"\x00 ").decode("ascii", "replace")
        pos += length
    uid = UID(syntax)
    # Private syntaxes, big endian and deflated datasets are left to pydicom.
    if not uid.is_transfer_syntax or uid.is_deflated or not uid.is_little_endian:
        raise _Unsupported
    implicit = uid.is_implicit_VR
    if pos + 6 <= len(data):
        # pydicom reads a dataset whose first VR contradicts the syntax the other way.
        looks_explicit = all(0x41 <= byte <= 0x5A for byte in data[pos + 4 : pos + 6])
        if looks_explicit == implicit:
            raise _Unsupported
    found: dict[int, RawDataElement] = {}
    while True:
        if pos == len(data) and complete:
            return TagScan(uid, found, None)  # a dataset without pixel data
        tag, vr, length, pos = _element(data, pos, implicit)
        if tag >= _PIXEL_GROUP_START:
            # Encapsulated (compressed) frames and float pixel data are left to pydicom.
            pixels = None
            if tag == _PIXEL_DATA and length != _UNDEFINED:
                pixels = _raw(tag, vr, length, None, pos, implicit)
            return TagScan(uid, found, pixels)
        if length == _UNDEFINED:
            if not (implicit or vr in (b"SQ", b"UN")):
                raise _Unsupported
            pos = _skip_sequence(data, pos, implicit or vr == b"UN")
            continue
        if pos + length > len(data):
            raise _Truncated
        if tag in tags:
            # As pydicom's reader: an empty element has no value.
            value = data[pos : pos + length] if length else None
            found[tag] = _raw(tag, vr, length, value, pos, implicit)
        pos += length


def scan_tags(path: Path, tags: Collection[int]) -> TagScan | None:
    """Find some top-level elements of a DICOM file, and its pixel data, without pydicom.

    Args:
        path: The file.
        tags: Wanted tags (as ``0xGGGGEEEE`` ints), all below the pixel data group 7FE0.
            Absent ones are absent from the result.

    Returns:
        What was found, or ``None`` if the file must be read by pydicom (see the module
        docstring); ``None`` also for an unreadable file, so that pydicom's error is the one
        reported.

    Raises:
        NotRegularFile: If ``path`` is not a regular file (a FIFO, a device ...); it is not
            read, and must not be handed to pydicom either.
    """
    try:
        with open_regular(path) as handle:
            data = handle.read(_FIRST_READ)
            complete = len(data) < _FIRST_READ
            try:
                return _walk(data, complete, tags)
            except _Truncated:
                if complete:
                    return None
                data += handle.read()
        return _walk(data, True, tags)
    except (OSError, _Unsupported, _Truncated, struct.error, UnicodeDecodeError):
        return None
