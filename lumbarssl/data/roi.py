"""From a decoded slice to the network inputs: the disc ROI and the 2.5D localizer stack.

The ROI recipe is the paper's (Sec. 3.1, 4.1): the slice's intensities are min-max normalised
to [0, 1] over the whole slice, the slice is padded with a constant, a fixed-size crop is cut
centred on the disc coordinate and the crop is rescaled to uint8 [0, 255].

**Centre convention.** A float coordinate ``(x, y)`` (column, row) is rounded to the pixel
``(round(y), round(x))`` with :func:`round_coordinate`, which rounds halves away from zero
(2.5 → 3, 3.5 → 4, -0.5 → -1), unlike Python's and NumPy's round-half-to-even. That pixel lands
at ROI pixel ``(H // 2, W // 2)``: for the default 96x96 ROI, at (48, 48), with 48 rows above it
and 47 below.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final

import numpy as np
from PIL import Image

from lumbarssl import paper
from lumbarssl.errors import DataError

__all__ = [
    "LOCALIZER_SIZE",
    "ROI_SIZE",
    "crop_centered",
    "extract_roi",
    "intensity_range",
    "is_inside",
    "localizer_channel",
    "localizer_input",
    "normalize_slice",
    "round_coordinate",
    "to_uint8",
]

#: Side of the square disc ROI in pixels (paper Sec. 4.1: 96x96); re-exported from
#: :data:`lumbarssl.paper.ROI_SIZE`.
ROI_SIZE: Final = paper.ROI_SIZE
#: Side of the square 2.5D localizer input in pixels (paper Sec. 4.5: 256x256); re-exported
#: from :data:`lumbarssl.paper.LOCALIZER_SIZE`.
LOCALIZER_SIZE: Final = paper.LOCALIZER_SIZE
_UINT8_MAX = 255


def round_coordinate(value: float) -> int:
    """Round a pixel coordinate to the nearest integer, halves away from zero.

    Args:
        value: A finite coordinate in pixels.

    Returns:
        The nearest integer; ``x.5`` goes to the integer farther from zero.

    Raises:
        ValueError: If ``value`` is not finite.
    """
    if not math.isfinite(value):
        raise ValueError(f"coordinate must be finite, got {value}")
    magnitude = abs(value)
    whole = math.floor(magnitude)
    # magnitude - whole is exact in floating point, so the tie test is exact too.
    rounded = whole + 1 if magnitude - whole >= 0.5 else whole
    return rounded if value >= 0 else -rounded


def is_inside(shape: tuple[int, int], x: float, y: float) -> bool:
    """Whether the pixel ``(round(y), round(x))`` lies in an image of this shape.

    Args:
        shape: Image shape ``(H, W)``.
        x: Column in pixels.
        y: Row in pixels.

    Returns:
        ``True`` if the coordinates are finite and the rounded pixel is in the image.
    """
    if not (math.isfinite(x) and math.isfinite(y)):
        return False
    row, col = round_coordinate(y), round_coordinate(x)
    return 0 <= row < shape[0] and 0 <= col < shape[1]


def intensity_range(image: np.ndarray) -> tuple[float, float]:
    """Minimum and maximum of a slice: the range that min-max normalisation maps to [0, 1].

    Args:
        image: Array of shape (H, W), any real dtype.

    Returns:
        ``(low, high)``.

    Raises:
        ValueError: If ``image`` is not 2-D or is empty.
        lumbarssl.errors.DataError: If it holds a non-finite value (a ``ValueError`` too).
    """
    if image.ndim != 2 or image.size == 0:
        raise ValueError(f"expected a non-empty 2-D slice (H, W), got shape {image.shape}")
    low, high = float(image.min()), float(image.max())
    if not (math.isfinite(low) and math.isfinite(high)):
        raise DataError(
            "slice holds non-finite values (after RescaleSlope/RescaleIntercept); "
            "check the series' rescale tags"
        )
    return low, high


def normalize_slice(
    image: np.ndarray, value_range: tuple[float, float] | None = None
) -> np.ndarray:
    """Min-max normalise a slice (or a crop of it) to [0, 1].

    Args:
        image: Array of shape (H, W), any real dtype.
        value_range: ``(low, high)`` mapped to 0 and 1; the slice's own
            (:func:`intensity_range`) when ``None``. Pass the whole slice's range to normalise
            a crop exactly as the slice would be.

    Returns:
        float32 array of shape (H, W); all zeros when ``low == high``.

    Raises:
        ValueError: If ``image`` is not 2-D or, without ``value_range``, not finite.
    """
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D slice (H, W), got shape {image.shape}")
    pixels = np.asarray(image, dtype=np.float32)
    low, high = value_range if value_range is not None else intensity_range(pixels)
    if high == low:
        return np.zeros(pixels.shape, dtype=np.float32)
    # The span is computed with the same float32 subtraction as each pixel, so the maximum
    # maps to exactly (high - low) / (high - low) = 1 and the minimum to exactly 0.
    span = np.float32(high) - np.float32(low)
    normalized: np.ndarray = (pixels - np.float32(low)) / span
    return normalized


def to_uint8(normalized: np.ndarray) -> np.ndarray:
    """Rescale values in [0, 1] to uint8 [0, 255], rounding to nearest.

    Args:
        normalized: Array of any shape with values in [0, 1] (clipped otherwise).

    Returns:
        uint8 array of the same shape.
    """
    scaled: np.ndarray = np.rint(np.clip(normalized, 0.0, 1.0) * _UINT8_MAX)
    return scaled.astype(np.uint8)


def _size_pair(size: int | tuple[int, int]) -> tuple[int, int]:
    height, width = (size, size) if isinstance(size, int) else size
    if height < 1 or width < 1:
        raise ValueError(f"ROI size must be positive, got {size}")
    return int(height), int(width)


def crop_centered(
    image: np.ndarray,
    x: float,
    y: float,
    size: int | tuple[int, int] = ROI_SIZE,
    *,
    pad_value: float = 0.0,
) -> np.ndarray:
    """Cut a fixed-size crop so that pixel ``(round(y), round(x))`` lands at its centre.

    Equivalent to padding ``image`` on every side with ``pad_value`` and slicing, without
    allocating the padded image. Centre pixel: ``(H // 2, W // 2)`` of the crop.

    Args:
        image: Array of shape (H_img, W_img).
        x: Column of the centre in pixels.
        y: Row of the centre in pixels.
        size: Crop side, or ``(H, W)``.
        pad_value: Value of crop pixels that fall outside ``image``.

    Returns:
        Array of shape (H, W) and the dtype of ``image``.

    Raises:
        ValueError: If ``image`` is not 2-D, ``size`` is not positive or ``x``/``y`` are not
            finite.
    """
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D slice (H, W), got shape {image.shape}")
    height, width = _size_pair(size)
    top = round_coordinate(y) - height // 2
    left = round_coordinate(x) - width // 2
    crop = np.full((height, width), pad_value, dtype=image.dtype)
    src_top, src_left = max(top, 0), max(left, 0)
    src_bottom = min(top + height, image.shape[0])
    src_right = min(left + width, image.shape[1])
    if src_top < src_bottom and src_left < src_right:
        crop[src_top - top : src_bottom - top, src_left - left : src_right - left] = image[
            src_top:src_bottom, src_left:src_right
        ]
    return crop


def extract_roi(
    image: np.ndarray,
    x: float,
    y: float,
    size: int | tuple[int, int] = ROI_SIZE,
    *,
    pad_value: float = 0.0,
    value_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """Extract the paper's disc ROI from one slice (Sec. 3.1, 4.1).

    The slice is min-max normalised to [0, 1] (:func:`normalize_slice`), padded with
    ``pad_value``, cropped around ``(x, y)`` (:func:`crop_centered`; the pixel
    ``(round(y), round(x))`` lands at ``(H // 2, W // 2)``, halves rounded away from zero) and
    rescaled to uint8 (:func:`to_uint8`).

    Args:
        image: The slice, shape (H_img, W_img), real-valued (e.g. from
            :func:`~lumbarssl.data.dicom.read_slice`).
        x: Column of the disc centre in pixels.
        y: Row of the disc centre in pixels.
        size: ROI side (paper: 96), or ``(H, W)``.
        pad_value: Padding in normalised units, in [0, 1]; 0 is the slice's darkest value.
        value_range: The slice's ``(min, max)`` if already known (:func:`intensity_range`);
            computed from ``image`` when ``None``.

    Returns:
        uint8 array of shape (H, W).

    Raises:
        ValueError: If ``pad_value`` is outside [0, 1], ``size`` is not positive, the slice is
            not 2-D or not finite, or ``x``/``y`` are not finite.
    """
    if not 0.0 <= pad_value <= 1.0:
        raise ValueError(f"pad_value must be in [0, 1] (normalised units), got {pad_value}")
    pixels = np.asarray(image, dtype=np.float32)
    if value_range is None:
        value_range = intensity_range(pixels)
    # Only the crop is normalised; the result equals normalising the whole slice first.
    crop = crop_centered(pixels, x, y, size, pad_value=np.nan)
    outside = np.isnan(crop)
    normalized = normalize_slice(crop, value_range)
    normalized[outside] = pad_value
    return to_uint8(normalized)


def _resize(pixels: np.ndarray, size: int) -> np.ndarray:
    if pixels.shape == (size, size):
        return pixels
    # PIL's bilinear filter widens its support when shrinking, i.e. it antialiases.
    image = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.float32))
    resized = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


def localizer_channel(
    image: np.ndarray,
    size: int = LOCALIZER_SIZE,
    *,
    value_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """One channel of the 2.5D localizer input: a slice normalised, resized and made uint8.

    The slice is min-max normalised on its own (as for ROIs), resized to ``size x size``
    (bilinear, antialiased; the aspect ratio is not kept) and rescaled to uint8.
    :func:`localizer_input` stacks three of them; a series whose slices serve several stacks
    can compute each channel once.

    Args:
        image: The slice, shape (H, W), real-valued.
        size: Output side (paper Sec. 4.5: 256).
        value_range: The slice's ``(min, max)`` if already known (:func:`intensity_range`);
            computed from ``image`` when ``None``.

    Returns:
        uint8 array of shape (size, size).

    Raises:
        ValueError: If ``size`` < 1, or the slice is not 2-D, empty or not finite.
    """
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    pixels = np.asarray(image, dtype=np.float32)
    if value_range is None:
        value_range = intensity_range(pixels)
    # Resampling weights are non-negative and sum to one, so resizing first and normalising
    # with the slice's range equals normalising first, at a fraction of the cost. The steps
    # of normalize_slice and to_uint8 run in place on the resized copy: same values, no
    # temporaries.
    resized = np.array(_resize(pixels, size), dtype=np.float32)  # a writable copy
    low, high = value_range
    if high == low:
        return np.zeros((size, size), dtype=np.uint8)
    resized -= np.float32(low)
    resized /= np.float32(high) - np.float32(low)
    np.clip(resized, 0.0, 1.0, out=resized)
    resized *= _UINT8_MAX
    np.rint(resized, out=resized)
    return resized.astype(np.uint8)


def localizer_input(
    slices: Sequence[np.ndarray], center: int, size: int = LOCALIZER_SIZE, *, channels: int = 3
) -> np.ndarray:
    """Build the 2.5D input of the disc localizer (paper Sec. 3.2, 4.5).

    Channels are the slices ``center - 1``, ``center``, ``center + 1`` of a series in spatial
    order (``channels // 2`` on each side of ``center`` in general); at either end of the
    series the edge slice is repeated. Each channel is
    :func:`localizer_channel` of its slice: min-max normalised on its own (as for ROIs),
    resized to ``size x size`` (bilinear, antialiased; the aspect ratio is not kept) and
    rescaled to uint8. A target ``(x, y)`` in pixels of the centre slice of shape (H, W) maps
    to ``(x / W, y / H)`` in [0, 1] on this input.

    Args:
        slices: The whole series in spatial order, each of shape (H_i, W_i); shapes may differ.
        center: Index of the annotated slice in ``slices``.
        size: Output side (paper: 256).
        channels: Slices stacked, odd (paper: 3).

    Returns:
        uint8 array of shape (channels, size, size).

    Raises:
        ValueError: If ``slices`` is empty, ``center`` is out of range, ``size`` < 1 or
            ``channels`` is not odd and positive.
    """
    if not slices:
        raise ValueError("slices is empty")
    if not 0 <= center < len(slices):
        raise ValueError(f"center must be in [0, {len(slices) - 1}], got {center}")
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    if channels < 1 or channels % 2 == 0:
        raise ValueError(f"channels must be odd and positive, got {channels}")
    last = len(slices) - 1
    half = channels // 2
    return np.stack(
        [
            localizer_channel(slices[min(max(i, 0), last)], size)
            for i in range(center - half, center + half + 1)
        ]
    )
