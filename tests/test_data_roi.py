from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from lumbarssl.data.roi import (
    crop_centered,
    extract_roi,
    intensity_range,
    is_inside,
    localizer_channel,
    localizer_input,
    normalize_slice,
    round_coordinate,
)


def half_away(value: float) -> int:
    """Reference rounding, halves away from zero, through exact decimal arithmetic."""
    magnitude = Decimal(abs(value)).quantize(Decimal(1), rounding=ROUND_HALF_UP)
    return int(magnitude) if value >= 0 else -int(magnitude)


def reference_roi(
    image: np.ndarray, x: float, y: float, size: tuple[int, int], pad: float
) -> np.ndarray:
    """Paper recipe written out: min-max, pad every side, slice, scale to uint8."""
    low, high = image.min(), image.max()
    norm = (image - low) / (high - low) if high > low else np.zeros_like(image, dtype=float)
    h, w = size
    margin = h + w + abs(half_away(x)) + abs(half_away(y))  # enough padding for any centre
    padded = np.pad(norm.astype(np.float64), margin, constant_values=pad)
    top = half_away(y) - h // 2 + margin
    left = half_away(x) - w // 2 + margin
    crop: np.ndarray = padded[top : top + h, left : left + w]
    scaled: np.ndarray = np.rint(crop * 255)
    return scaled.astype(np.uint8)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(2.5, 3), (3.5, 4), (2.4999, 2), (-0.5, -1), (-2.5, -3), (0.0, 0), (7.0, 7),
     (0.49999999999999994, 0), (1.4999999999999998, 1), (1e6 + 0.5, 1000001)],
)  # fmt: skip
def test_round_coordinate_rounds_halves_away_from_zero(value: float, expected: int) -> None:
    assert round_coordinate(value) == expected == half_away(value)


@given(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False))
def test_round_coordinate_matches_decimal_reference(value: float) -> None:
    assert round_coordinate(value) == half_away(value)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_round_coordinate_rejects_non_finite(value: float) -> None:
    with pytest.raises(ValueError, match="coordinate must be finite"):
        round_coordinate(value)


@pytest.mark.parametrize("size", [96, 95, (16, 21), (1, 1)])
@pytest.mark.parametrize(
    ("x", "y"),
    [(30.0, 20.0), (30.5, 20.5), (29.5, 19.5), (0.0, 0.0), (63.0, 47.0), (5.0, 5.0),
     (58.49, 42.5), (-0.4, 47.4)],
)  # fmt: skip
def test_marker_pixel_lands_exactly_at_roi_centre(
    size: int | tuple[int, int], x: float, y: float
) -> None:
    image = np.zeros((48, 64), dtype=np.float32)
    row, col = half_away(y), half_away(x)
    image[row, col] = 7.0
    roi = extract_roi(image, x, y, size)
    h, w = (size, size) if isinstance(size, int) else size
    assert roi.shape == (h, w)
    assert roi.dtype == np.uint8
    assert roi[h // 2, w // 2] == 255
    assert np.count_nonzero(roi) == 1  # the only bright pixel, padding included


def test_default_roi_is_96_with_centre_48() -> None:
    image = np.zeros((200, 200))
    image[100, 60] = 1.0
    roi = extract_roi(image, 60.0, 100.0)
    assert roi.shape == (96, 96)
    assert np.argwhere(roi == 255).tolist() == [[48, 48]]


@given(
    image=arrays(
        np.float32,
        st.tuples(st.integers(1, 20), st.integers(1, 20)),
        elements=st.floats(-1000, 1000, width=32),
    ),
    x=st.floats(-8, 28),
    y=st.floats(-8, 28),
    size=st.tuples(st.integers(1, 12), st.integers(1, 12)),
    pad=st.sampled_from([0.0, 0.5, 1.0]),
)
def test_extract_roi_matches_the_pad_then_slice_reference(
    image: np.ndarray, x: float, y: float, size: tuple[int, int], pad: float
) -> None:
    got = extract_roi(image, x, y, size, pad_value=pad)
    want = reference_roi(image, x, y, size, pad)
    # float32 vs float64 normalisation may flip a value sitting on a rounding boundary.
    assert np.abs(got.astype(int) - want.astype(int)).max(initial=0) <= 1
    assert got.shape == size


def test_roi_near_border_is_padded_with_the_pad_value() -> None:
    image = np.full((64, 64), 10.0)
    image[0, 0] = 0.0
    image[5, 5] = 20.0
    roi = extract_roi(image, 5.0, 5.0, 16, pad_value=0.25)
    # Crop rows/cols -3..12: the 3 first rows and columns are padding.
    assert (roi[:3, :] == round(0.25 * 255)).all()
    assert (roi[:, :3] == round(0.25 * 255)).all()
    assert roi[8, 8] == 255
    assert roi[3, 3] == 0  # image pixel (0, 0), the slice minimum


def test_normalisation_uses_the_whole_slice() -> None:
    image = np.full((100, 100), 50.0)
    image[0, 0], image[99, 99] = 0.0, 100.0  # far outside the crop
    roi = extract_roi(image, 50.0, 50.0, 8)
    assert (roi == round(0.5 * 255)).all()


def test_constant_slice_gives_zeros() -> None:
    assert (extract_roi(np.full((10, 10), 3.0), 5, 5, 4) == 0).all()
    assert (normalize_slice(np.full((3, 3), -1.0)) == 0).all()


def test_crop_keeps_dtype_and_fills_outside() -> None:
    image = np.arange(12, dtype=np.float64).reshape(3, 4)
    crop = crop_centered(image, 100.0, 100.0, 3, pad_value=-1.0)
    assert crop.dtype == np.float64
    assert (crop == -1.0).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"pad_value": 1.5}, r"pad_value must be in \[0, 1\]"),
     ({"size": 0}, "ROI size must be positive"),
     ({"size": (4, -1)}, "ROI size must be positive")],
)  # fmt: skip
def test_invalid_arguments_are_rejected(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        extract_roi(np.zeros((4, 4)), 1.0, 1.0, **kwargs)  # type: ignore[arg-type]


def test_non_2d_input_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"2-D slice \(H, W\), got shape \(2, 4, 4\)"):
        extract_roi(np.zeros((2, 4, 4)), 1.0, 1.0)
    with pytest.raises(ValueError, match="non-finite"):
        intensity_range(np.array([[0.0, np.inf]]))


def test_a_known_value_range_gives_the_same_roi() -> None:
    rng = np.random.default_rng(0)
    image = rng.normal(size=(40, 50)) * 300
    low, high = intensity_range(image)
    assert (low, high) == (image.min(), image.max())
    np.testing.assert_array_equal(
        extract_roi(image, 3.0, 30.0, 16, value_range=(low, high)),
        extract_roi(image, 3.0, 30.0, 16),
    )
    # A crop normalised with the slice's range equals the same crop of the normalised slice.
    whole = normalize_slice(image)
    part = normalize_slice(image[5:20, 10:30], (low, high))
    np.testing.assert_array_equal(part, whole[5:20, 10:30])


@pytest.mark.parametrize(
    ("x", "y", "inside"),
    [(0.0, 0.0, True), (-0.5, 0.0, False), (-0.49, 0.0, True), (63.49, 47.49, True),
     (63.5, 0.0, False), (0.0, 47.5, False), (float("nan"), 1.0, False)],
)  # fmt: skip
def test_is_inside_uses_the_rounded_pixel(x: float, y: float, inside: bool) -> None:
    assert is_inside((48, 64), x, y) is inside


def _series(n: int, shape: tuple[int, int] = (32, 32)) -> list[np.ndarray]:
    """Slice k: constant 10 k with one dark and one bright pixel (so min-max keeps it)."""
    slices = []
    for k in range(n):
        image = np.full(shape, 10.0 * k + 5.0)
        image[0, 0], image[-1, -1] = 0.0, 10.0 * n + 5.0
        slices.append(image)
    return slices


def _level(k: int, n: int) -> int:
    return round((10.0 * k + 5.0) / (10.0 * n + 5.0) * 255)


@pytest.mark.parametrize(("center", "expected"), [(0, (0, 0, 1)), (2, (1, 2, 3)), (4, (3, 4, 4))])
def test_localizer_input_stacks_spatial_neighbours_with_edges_repeated(
    center: int, expected: tuple[int, int, int]
) -> None:
    stack = localizer_input(_series(5), center, size=16)
    assert stack.shape == (3, 16, 16)
    assert stack.dtype == np.uint8
    for channel, k in zip(stack, expected, strict=True):
        assert int(np.median(channel)) == _level(k, 5)


def test_localizer_input_default_size_and_mixed_shapes() -> None:
    slices = _series(3)
    slices[0] = _series(3, (40, 24))[0]
    stack = localizer_input(slices, 1)
    assert stack.shape == (3, 256, 256)


def test_localizer_target_maps_by_width_and_height() -> None:
    image = np.zeros((40, 80))
    image[30, 20] = 1.0
    stack = localizer_input([image], 0, size=160)
    row, col = np.unravel_index(np.argmax(stack[1]), stack[1].shape)
    # (x / W, y / H) * size = (40, 120), within the resampling half-pixel.
    assert abs(col - 20 / 80 * 160) <= 2
    assert abs(row - 30 / 40 * 160) <= 4


@pytest.mark.parametrize(
    ("slices", "center", "size", "match"),
    [([], 0, 8, "slices is empty"),
     ([np.zeros((4, 4))], 1, 8, r"center must be in \[0, 0\], got 1"),
     ([np.zeros((4, 4))], 0, 0, "size must be positive")],
)  # fmt: skip
def test_localizer_input_rejects_bad_arguments(
    slices: list[np.ndarray], center: int, size: int, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        localizer_input(slices, center, size)


@pytest.mark.parametrize("shape", [(40, 24), (64, 64), (90, 130)])
def test_localizer_channel_is_the_normalised_slice_resized(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    image = rng.normal(500.0, 200.0, size=shape).astype(np.float32)
    channel = localizer_channel(image, 32)
    assert channel.shape == (32, 32)
    assert channel.dtype == np.uint8
    # Reference: normalise the whole slice in float64 first, then resize (PIL, bilinear).
    normalised = (image - image.min()) / (image.max() - image.min())
    resized = Image.fromarray(normalised.astype(np.float32)).resize(
        (32, 32), Image.Resampling.BILINEAR
    )
    reference = np.rint(np.clip(np.asarray(resized), 0.0, 1.0) * 255)
    assert np.abs(channel.astype(np.int64) - reference.astype(np.int64)).max() <= 1
    known = localizer_channel(image, 32, value_range=intensity_range(image))
    np.testing.assert_array_equal(known, channel)


def test_localizer_input_stacks_localizer_channels() -> None:
    slices = _series(4)
    stack = localizer_input(slices, 0, size=16)
    for channel, k in zip(stack, (0, 0, 1), strict=True):
        np.testing.assert_array_equal(channel, localizer_channel(slices[k], 16))


def test_localizer_channel_of_a_constant_slice_is_zero_and_size_is_checked() -> None:
    np.testing.assert_array_equal(localizer_channel(np.full((8, 8), 3.0), 4), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="size must be positive, got 0"):
        localizer_channel(np.zeros((8, 8)), 0)
