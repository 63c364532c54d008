"""From a study plan to stored pixel values and patient geometry, slice by slice."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from lumbarssl.layout import AXIAL_T2, LEVELS, SAGITTAL_T1
from lumbarssl.synthetic.axial import AxialPhantom
from lumbarssl.synthetic.conditions import (
    FORAMINAL,
    SUBARTICULAR,
    ForamenGeometry,
    foramen_geometry,
    lateral_weight,
    paint_foramina,
    paint_recesses,
    recess_geometry,
)
from lumbarssl.synthetic.config import SyntheticConfig
from lumbarssl.synthetic.dicom_io import AXIAL_ORIENTATION, SAGITTAL_ORIENTATION
from lumbarssl.synthetic.phantom import T1_SIGNAL, T2_SIGNAL, SagittalPhantom, rician_magnitude
from lumbarssl.synthetic.plan import SeriesPlan, StudyPlan

__all__ = ["RenderedSlice", "render_series", "sagittal_phantom"]

F32 = NDArray[np.float32]
_MAX_STORED = 65535.0


@dataclass(frozen=True)
class RenderedSlice:
    """One image of a series, ready to be written.

    Attributes:
        spatial_index: Position along the slice normal, 0 first.
        instance_number: InstanceNumber.
        pixels: Stored values, ``(H, W)`` uint16 (apply the series' rescale to get real values).
        position: ImagePositionPatient (mm).
        slice_location: SliceLocation (mm): the position along the slice normal.
    """

    spatial_index: int
    instance_number: int
    pixels: NDArray[np.uint16]
    position: tuple[float, float, float]
    slice_location: float


def sagittal_phantom(
    plan: StudyPlan, config: SyntheticConfig, series: SeriesPlan, rng: np.random.Generator
) -> SagittalPhantom:
    """The noise-free phantom of a sagittal series of ``plan``."""
    signal = T1_SIGNAL if series.description == SAGITTAL_T1 else T2_SIGNAL
    reach = max(abs(plan.slice_offset(j, series)) for j in (0, series.n_slices - 1))
    flat = plan.midline is None or plan.midline.is_flat
    if not flat:
        assert plan.midline is not None
        low, high = plan.midline.extent()
        edges = [
            (j - series.n_slices // 2) * series.slice_spacing for j in (0, series.n_slices - 1)
        ]
        reach = max(abs(e - m) for e in edges for m in (low, high))
    return SagittalPhantom(
        plan.anatomy,
        plan.centerline,
        plan.size,
        plan.spacing,
        signal,
        rng,
        config.bias_field_strength,
        max_offset=reach,
        partial_volume=config.generator_version != "1.0",
    )


def render_series(
    plan: StudyPlan, series: SeriesPlan, config: SyntheticConfig, rng: np.random.Generator
) -> Iterator[RenderedSlice]:
    """Render the slices of one series in spatial order.

    Args:
        plan: The study.
        series: One of ``plan.series``.
        config: Generator parameters.
        rng: The study's pixel generator; series must be rendered in ``plan.series`` order.

    Yields:
        The slices, first to last along the slice normal.
    """
    fov = plan.size * plan.spacing
    corner = (-0.5 * fov, 0.5 * fov)  # Y of the first column, Z of the first row
    n = series.n_slices
    if series.description == AXIAL_T2:
        axial = AxialPhantom(
            plan.anatomy,
            plan.centerline,
            plan.size,
            plan.spacing,
            T2_SIGNAL,
            rng,
            config.bias_field_strength,
        )
        bottom = plan.centerline.to_image(plan.anatomy.lumbar_discs[-1].center, 0.0)[1]
        noise = _NoisePool(rng, plan.size, series.noise_sd)
        overlay = _recess_overlay(plan, axial) if plan.conditions else None
        for j in range(n):
            row_mm = bottom - j * series.slice_spacing  # ascending patient Z
            z = corner[1] - row_mm
            yield RenderedSlice(
                spatial_index=j,
                instance_number=series.instance_number(j),
                pixels=_store(noise.add(axial.slice(row_mm, overlay), rng), series),
                position=(-0.5 * fov, corner[0], z),
                slice_location=z,
            )
        return
    phantom = sagittal_phantom(plan, config, series, rng)
    noise = _NoisePool(rng, plan.size, series.noise_sd)
    normal = np.cross(SAGITTAL_ORIENTATION[:3], SAGITTAL_ORIENTATION[3:])
    flat = plan.midline is None or plan.midline.is_flat
    s_map = None if flat else phantom.frame[0].astype(np.float64)
    foramina = _foramina(plan) if plan.conditions and series.description == SAGITTAL_T1 else None
    for j in range(n):
        z = plan.slice_offset(j, series)
        position = tuple(float(v) for v in np.asarray([0.0, *corner]) + z * normal)
        if s_map is None:
            image = phantom.slice(z)
        else:
            image = phantom.slice_map(plan.lateral_offset(j, series, s_map).astype(np.float32))
        if foramina is not None:
            shown = []
            for g, r, sign in foramina:
                offset = float(plan.lateral_offset(j, series, np.asarray(g.s))) - sign * g.lateral
                shown.append((g, r, lateral_weight(offset, series.slice_spacing)))
            if any(w > 0.0 for _, _, w in shown):
                s_frame, t_frame = phantom.frame
                image = paint_foramina(image.copy(), s_frame, t_frame, shown, plan.spacing)
        yield RenderedSlice(
            spatial_index=j,
            instance_number=series.instance_number(j),
            pixels=_store(noise.add(image, rng), series),
            position=(position[0], position[1], position[2]),
            slice_location=z,
        )


def _foramina(plan: StudyPlan) -> list[tuple[ForamenGeometry, float, float]]:
    """(conditions="all") ``(geometry, r, side sign)`` of the ten foramina (+ = right)."""
    out = []
    for c in plan.conditions:
        if c.condition in FORAMINAL:
            g = foramen_geometry(plan.anatomy, LEVELS.index(c.level))
            out.append((g, c.r, 1.0 if c.condition.startswith("Right") else -1.0))
    return out


def _recess_overlay(plan: StudyPlan, axial: AxialPhantom) -> Callable[[F32, float], F32]:
    """(conditions="all") The painter of the lateral recesses for :meth:`AxialPhantom.slice`."""
    s_frame, t_frame = axial.frame
    geometry = recess_geometry(plan.anatomy)
    discs = plan.anatomy.lumbar_discs
    recesses = [
        (1.0 if c.condition.startswith("Left") else -1.0, c.r, LEVELS.index(c.level))
        for c in plan.conditions
        if c.condition in SUBARTICULAR
    ]

    def overlay(image: F32, s_row: float) -> F32:
        shown = []
        for side, r, k in recesses:
            d = discs[k]
            weight = min(max((0.5 * d.height + 1.0 - abs(s_row - d.center)) / 2.0, 0.0), 1.0)
            shown.append((side, r, weight))
        return paint_recesses(image, s_frame, t_frame, geometry, shown, plan.spacing)

    return overlay


def orientation_of(series: SeriesPlan) -> tuple[float, ...]:
    """ImageOrientationPatient of a series."""
    return AXIAL_ORIENTATION if series.description == AXIAL_T2 else SAGITTAL_ORIENTATION


class _NoisePool:
    """Complex Gaussian noise for the slices of one series.

    Drawing two fresh Gaussian images per slice costs more than painting the slice, so a series
    draws one pool of white noise a quarter larger than the image, and each slice reads its real
    and imaginary parts from it at two different random offsets (white noise at different
    offsets is uncorrelated).
    """

    def __init__(self, rng: np.random.Generator, size: int, noise_sd: float) -> None:
        self.size = size
        self.slack = max(size // 4, 8)
        side = size + self.slack
        self.pool = rng.standard_normal((side, side), dtype=np.float32)
        self.pool *= np.float32(noise_sd)

    def add(self, image: F32, rng: np.random.Generator) -> F32:
        """Rician magnitude of ``image`` plus complex noise, ``(H, W)``."""
        r0, c0, r1, c1 = (int(v) for v in rng.integers(0, self.slack + 1, 4))
        if (r0, c0) == (r1, c1):
            r1 = (r1 + 1) % (self.slack + 1)
        n = self.size
        real = self.pool[r0 : r0 + n, c0 : c0 + n]
        return rician_magnitude(image, real, self.pool[r1 : r1 + n, c1 : c1 + n])


def _store(image: F32, series: SeriesPlan) -> NDArray[np.uint16]:
    """Scale a relative image to the series' intensity and encode it with its rescale.

    ``image`` is consumed (overwritten).
    """
    slope, intercept = series.rescale
    image *= np.float32(series.intensity_scale / slope)
    # Adding 0.5 before the truncating cast rounds the non-negative values to nearest.
    image += np.float32(0.5 - intercept / slope)
    np.clip(image, 0.0, _MAX_STORED, out=image)
    return image.astype(np.uint16)
