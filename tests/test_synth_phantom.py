"""Geometry and rendering of the phantom, against independent references."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lumbarssl.synthetic import SyntheticConfig, sample_study_plan
from lumbarssl.synthetic.anatomy import Anatomy, Centerline, sample_anatomy
from lumbarssl.synthetic.canvas import Canvas
from lumbarssl.synthetic.figure import _crop
from lumbarssl.synthetic.phantom import T2_SIGNAL, SagittalPhantom, add_rician_noise

R = np.array([0.1, 0.2, 0.5, 0.8, 0.05])


def _anatomy(seed: int = 0, r: np.ndarray = R) -> Anatomy:
    return sample_anatomy(r, (0.9, 1.1), (20.0, 45.0), 8.0, np.random.default_rng(seed))


def _centerline(anatomy: Anatomy, fov: float = 300.0) -> Centerline:
    return Centerline.build(anatomy, (0.45 * fov, 0.5 * fov))


def _phantom(anatomy: Anatomy, size: int = 160, fov: float = 300.0) -> SagittalPhantom:
    return SagittalPhantom(
        anatomy,
        _centerline(anatomy, fov),
        size,
        fov / size,
        T2_SIGNAL,
        np.random.default_rng(1),
        0.0,
    )


@given(st.integers(0, 20), st.floats(-40.0, 220.0), st.floats(-45.0, 60.0))
def test_to_image_inverts_the_pixel_frame(seed: int, s: float, t: float) -> None:
    centerline = _centerline(_anatomy(seed))
    x, y = centerline.to_image(s, t)
    s_back, t_back = centerline.frame(np.array([x]), np.array([y]))
    assert float(s_back[0, 0]) == pytest.approx(s, abs=1e-3)
    assert float(t_back[0, 0]) == pytest.approx(t, abs=1e-3)


def test_frame_is_isometric_on_the_centerline() -> None:
    """A millimetre along t is a millimetre in the image, to first order in the curvature."""
    centerline = _centerline(_anatomy(3))
    for s in (0.0, 80.0, 170.0):
        x0, y0 = centerline.to_image(s, 0.0)
        x1, y1 = centerline.to_image(s, 10.0)
        assert math.hypot(x1 - x0, y1 - y0) == pytest.approx(10.0, rel=0.01)


def _full_window(self: Canvas, *args: float) -> tuple[slice, slice]:
    return slice(0, self.size), slice(0, self.size)


@given(
    st.floats(-20.0, 200.0),
    st.floats(2.0, 40.0),
    st.floats(-50.0, 40.0),
    st.floats(2.0, 40.0),
    st.floats(0.0, 8.0),
)
def test_windows_never_clip_a_shape(
    s0: float, ds: float, t0: float, dt: float, radius: float
) -> None:
    """Painting inside the computed window equals painting on the whole image."""
    centerline = _centerline(_anatomy(2))
    shapes: list[Callable[[Canvas], None]] = [
        lambda c: c.box(s0, s0 + ds, t0, t0 + dt, radius, 1.0),
        lambda c: c.ellipse(s0 + ds / 2, t0 + dt / 2, ds / 2, dt / 2, 1.0),
        lambda c: c.band((s0, s0 + ds), (t0 - 5.0, t0 + dt + 5.0), t0, t0 + dt, 1.0),
    ]
    for paint in shapes:
        windowed = Canvas(centerline, 96, 300.0 / 96)
        paint(windowed)
        full = Canvas(centerline, 96, 300.0 / 96)
        full.window = _full_window.__get__(full)  # type: ignore[method-assign]
        paint(full)
        np.testing.assert_array_equal(windowed.image, full.image)


def test_csf_column_narrows_by_r_at_the_disc_centre() -> None:
    anatomy = _anatomy(4)
    for disc in anatomy.lumbar_discs:
        s = np.array([disc.center])
        anterior, posterior = anatomy.csf_bounds(s)
        width = float(anatomy.canal_width(s)[0])
        assert float(posterior[0] - anterior[0]) == pytest.approx((1.0 - disc.stenosis) * width)
        free_a, free_p = anatomy.csf_bounds(s, stenosis_scale=0.0)
        assert float(free_p[0] - free_a[0]) == pytest.approx(width)


@given(st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_more_stenosis_never_widens_the_csf_column(r1: float, r2: float) -> None:
    lo, hi = sorted((r1, r2))
    s = np.linspace(-20.0, 220.0, 500)
    narrow = _anatomy(5, np.full(5, hi))
    wide = dataclasses.replace(
        narrow,
        discs=tuple(dataclasses.replace(d, stenosis=min(d.stenosis, lo)) for d in narrow.discs),
    )
    a1, p1 = narrow.csf_bounds(s)
    a2, p2 = wide.csf_bounds(s)
    assert np.all(p1 - a1 <= p2 - a2 + 1e-9)


def _bright_run(
    image: np.ndarray, anatomy: Anatomy, centerline: Centerline, level: int, spacing: float
) -> int:
    disc = anatomy.lumbar_discs[level]
    a, p = anatomy.csf_bounds(np.array([disc.center]), stenosis_scale=0.0)
    x, y = centerline.to_image(disc.center, float(0.5 * (a[0] + p[0])))
    row = image[round(y / spacing), round(x / spacing) - 12 : round(x / spacing) + 13]
    return int(np.sum(row > 0.8 * T2_SIGNAL["csf"] * 0.92))


def test_the_rendered_csf_column_narrows_with_r() -> None:
    """Noise-free pixels: fewer CSF-bright pixels across the canal at the disc as r grows."""
    base = _anatomy(6, np.zeros(5))
    runs = []
    for r in (0.0, 0.45, 0.9):
        discs = tuple(
            dataclasses.replace(d, stenosis=r) if d.name == "L3/L4" else d for d in base.discs
        )
        anatomy = dataclasses.replace(base, discs=discs)
        phantom = _phantom(anatomy, size=240)
        runs.append(_bright_run(phantom.mid, anatomy, _centerline(anatomy), 2, 300.0 / 240))
    assert runs[0] > runs[1] > runs[2], runs


def test_slices_are_symmetric_and_the_canal_fades_laterally() -> None:
    anatomy = _anatomy(7)
    phantom = _phantom(anatomy)
    assert phantom.slice(0.0) is phantom.mid
    np.testing.assert_array_equal(phantom.slice(3.0), phantom.slice(-3.0))
    csf = phantom.csf_mask()
    mid_csf = float(phantom.mid[csf].mean())
    lateral = phantom.slice(anatomy.sac_half_width + 4.0)
    assert float(lateral[csf].mean()) < 0.8 * mid_csf
    far = phantom.slice(anatomy.body_half_width + 12.0)
    assert not np.array_equal(far, lateral)


def test_rician_noise_of_an_empty_image_is_rayleigh() -> None:
    noisy = add_rician_noise(np.zeros((256, 256), np.float32), 0.05, np.random.default_rng(0))
    assert float(noisy.mean()) == pytest.approx(0.05 * math.sqrt(math.pi / 2), rel=0.01)
    assert noisy.dtype == np.float32


def test_plans_keep_all_coordinates_inside_the_image() -> None:
    config = SyntheticConfig(rotation_range_deg=15.0, lordosis_range_deg=(10.0, 70.0))
    for i in range(100):
        plan = sample_study_plan(config, i)
        for disc in plan.discs:
            if disc.coordinate is not None:
                x, y = disc.coordinate
                assert 0.0 <= x < plan.size
                assert 0.0 <= y < plan.size


def test_crop_centre_convention_and_padding() -> None:
    image = np.zeros((50, 60))
    image[10, 57] = 1.0
    crop = _crop(image, 57.4, 9.6, 96)
    assert crop.shape == (96, 96)
    assert crop[48, 48] == 1.0
    assert crop.sum() == 1.0


def test_plot_figure1_writes_a_png(tmp_path: Any) -> None:
    pytest.importorskip("matplotlib")
    from PIL import Image

    from lumbarssl.synthetic import plot_figure1

    config = SyntheticConfig(
        image_size_range=(96, 96),
        pixel_spacing_range=(2.5, 3.0),
        slices_range=(3, 3),
        p_partial_coordinates=0.0,
    )
    path = plot_figure1(tmp_path / "fig.png", config=config, crop_size=32, dpi=40)
    with Image.open(path) as png:
        assert png.format == "PNG"
        assert png.size[0] > 100
