"""Patient anatomy of the phantom and the curved spine frame it is drawn in.

Anatomy lives in a curvilinear frame ``(s, t)`` in millimetres: ``s`` runs down the spine along
the posterior margin of the vertebral bodies (``s = 0`` at the upper endplate of L1) and ``t``
runs across it, positive towards the back. ``t = 0`` is the posterior margin of the bodies and
discs; the spinal canal lies at ``t > 0``. :class:`Centerline` maps the frame into the pixel
plane of a sagittal image, where ``x`` (columns) runs posterior and ``y`` (rows) inferior.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

from lumbarssl.layout import LEVELS

__all__ = ["Anatomy", "Centerline", "Disc", "Vertebra", "sample_anatomy"]

FloatArray = NDArray[np.float64]
_Float = TypeVar("_Float", np.float32, np.float64)

# Typical adult dimensions (mm): body height, body depth (antero-posterior), height of the disc
# below, and a CSF column width factor. The sacral "discs" are fused remnants.
_SPINE: tuple[tuple[str, float, float, float, float], ...] = (
    ("T10", 22.0, 27.0, 5.5, 0.90),
    ("T11", 23.0, 28.0, 6.0, 0.90),
    ("T12", 24.0, 30.0, 7.0, 0.95),
    ("L1", 25.5, 32.0, 8.5, 1.00),
    ("L2", 26.5, 33.0, 9.5, 1.00),
    ("L3", 27.0, 34.0, 10.5, 0.97),
    ("L4", 27.0, 35.0, 11.0, 0.96),
    ("L5", 26.0, 35.0, 10.0, 1.00),
    ("S1", 25.0, 36.0, 2.5, 0.80),
    ("S2", 20.0, 28.0, 2.0, 0.55),
    ("S3", 16.0, 22.0, 1.5, 0.45),
    ("S4", 12.0, 17.0, 1.5, 0.40),
    ("S5", 10.0, 13.0, 0.0, 0.35),
)
# Lumbar discs are more degenerated lower down (added to the degeneration score).
_DEGENERATION_BY_LEVEL = (0.0, 0.05, 0.1, 0.15, 0.15)
#: Thickness (mm) of the posterior longitudinal ligament and dura in front of the CSF.
ANTERIOR_LINING_MM = 1.0
# Step of the sampled centreline (mm) and how far beyond the anatomy it extends.
_CURVE_STEP_MM = 0.5
_CURVE_REACH_MM = 900.0


class _Extent:
    """Centre and height of a structure spanning ``top``-``bottom`` along the spine."""

    top: float
    bottom: float

    @property
    def center(self) -> float:
        """``s`` of the structure's centre."""
        return 0.5 * (self.top + self.bottom)

    @property
    def height(self) -> float:
        """Height along the spine."""
        return self.bottom - self.top


@dataclass(frozen=True)
class Vertebra(_Extent):
    """One vertebral body (or sacral segment) in the spine frame.

    Attributes:
        name: ``"T10"`` ... ``"L5"``, ``"S1"`` ... ``"S5"``.
        top: ``s`` of the upper endplate.
        bottom: ``s`` of the lower endplate.
        depth: Antero-posterior depth; the body spans ``t`` in ``[-depth, 0]``.
        marrow_gain: Relative brightness of its marrow.
        canal_width: Width of the CSF column behind it.
    """

    name: str
    top: float
    bottom: float
    depth: float
    marrow_gain: float
    canal_width: float


@dataclass(frozen=True)
class Disc(_Extent):
    """One intervertebral disc in the spine frame.

    Attributes:
        name: ``"<upper>/<lower>"``, e.g. ``"L4/L5"``; lumbar ones match
            :data:`~lumbarssl.layout.LEVELS`.
        top: ``s`` of the upper endplate (the lower endplate of the body above).
        bottom: ``s`` of the lower endplate.
        depth: Antero-posterior depth.
        degeneration: 0 (healthy, bright nucleus) to 1 (dark, collapsed).
        stenosis: Latent stenosis ``r``: fraction of the CSF column lost at the disc centre.
        bulge_share: Share of the narrowing from the disc bulge in front (the rest is ligamentum
            flavum thickening from behind).
        canal_width: Width of the CSF column at this level without stenosis.
    """

    name: str
    top: float
    bottom: float
    depth: float
    degeneration: float
    stenosis: float
    bulge_share: float
    canal_width: float

    @property
    def narrowing_half_length(self) -> float:
        """Half-length along ``s`` of the hourglass narrowing at this disc."""
        return 0.5 * self.height + 6.0


@dataclass(frozen=True)
class Anatomy:
    """One patient's spine and surroundings (lengths in mm, angles in radians).

    Attributes:
        vertebrae: Bodies from T10 to S5, top to bottom.
        discs: Discs between consecutive bodies, top to bottom.
        epidural_depth: Depth of the posterior epidural space behind the CSF column.
        ligament_thickness: Normal thickness of the ligamentum flavum.
        conus_tip: ``s`` where the spinal cord ends.
        cord_radius: Half-width of the cord above the conus.
        sac_end: ``s`` where the thecal sac ends.
        spinous_length: Length of the spinous processes.
        back_muscle_depth: Depth of the paraspinal muscles behind the canal.
        posterior_fat: Thickness of the subcutaneous fat of the back.
        abdomen_depth: Depth of the abdomen in front of the spine.
        aorta_radius: Radius of the aorta.
        aorta_end: ``s`` of the aortic bifurcation.
        sac_half_width: Lateral half-width of the thecal sac.
        body_half_width: Lateral half-width of the vertebral bodies.
        lordosis: Change of the spine's tangent angle from the top of L1 to the L5/S1 disc.
        sacral_tilt: Extra tilt of the sacrum.
        kyphosis: Change of the tangent angle over the lower thoracic spine.
        rotation: In-plane rotation of the patient.
        anchor_s: ``s`` of the point placed at :attr:`anchor_fraction` of the field of view.
        anchor_fraction: ``(x, y)`` position of the anchor as fractions of the field of view.
    """

    vertebrae: tuple[Vertebra, ...]
    discs: tuple[Disc, ...]
    epidural_depth: float
    ligament_thickness: float
    conus_tip: float
    cord_radius: float
    sac_end: float
    spinous_length: float
    back_muscle_depth: float
    posterior_fat: float
    abdomen_depth: float
    aorta_radius: float
    aorta_end: float
    sac_half_width: float
    body_half_width: float
    lordosis: float
    sacral_tilt: float
    kyphosis: float
    rotation: float
    anchor_s: float
    anchor_fraction: tuple[float, float]

    @property
    def lumbar_discs(self) -> tuple[Disc, ...]:
        """The five graded discs, L1/L2 to L5/S1."""
        by_name = {d.name: d for d in self.discs}
        return tuple(by_name[level] for level in LEVELS)

    def vertebra(self, name: str) -> Vertebra:
        """The vertebra called ``name``."""
        return next(v for v in self.vertebrae if v.name == name)

    @functools.cached_property
    def _canal_table(self) -> tuple[FloatArray, FloatArray]:
        centers = np.array([v.center for v in self.vertebrae] + [d.center for d in self.discs])
        widths = np.array(
            [v.canal_width for v in self.vertebrae] + [d.canal_width for d in self.discs]
        )
        order = np.argsort(centers)
        return centers[order], widths[order]

    def canal_width(self, s: FloatArray) -> FloatArray:
        """Width of the CSF column without stenosis, interpolated along ``s``."""
        return np.asarray(np.interp(s, *self._canal_table), dtype=np.float64)

    def body_depth(self, s: FloatArray) -> FloatArray:
        """Antero-posterior depth of the bodies and discs, interpolated along ``s``."""
        centers = [v.center for v in self.vertebrae]
        return np.interp(s, centers, [v.depth for v in self.vertebrae])

    def csf_bounds(
        self, s: FloatArray, stenosis_scale: float = 1.0
    ) -> tuple[FloatArray, FloatArray]:
        """Anterior and posterior ``t`` of the CSF column along ``s``.

        At the centre of a lumbar disc with stenosis ``r`` the column is ``(1 - r)`` times its
        normal width: the disc bulge takes ``r * bulge_share`` of it from the front and the
        ligamentum flavum the rest from behind, both with a raised-cosine profile along ``s``.

        Args:
            s: Positions along the spine, any shape.
            stenosis_scale: Multiplies every disc's ``r`` (0 draws the canal without stenosis).

        Returns:
            ``(anterior, posterior)`` arrays of the shape of ``s``.
        """
        width = self.canal_width(s)
        anterior = np.full_like(width, ANTERIOR_LINING_MM)
        posterior = anterior + width
        for disc in self.discs:
            r = disc.stenosis * stenosis_scale
            if r <= 0.0:
                continue
            bump = raised_cosine((s - disc.center) / disc.narrowing_half_length)
            anterior = anterior + r * disc.bulge_share * disc.canal_width * bump
            posterior = posterior - r * (1.0 - disc.bulge_share) * disc.canal_width * bump
        return anterior, posterior

    def canal_wall(self, s: FloatArray) -> FloatArray:
        """``t`` of the posterior wall of the spinal canal (laminae and ligamentum flavum)."""
        return ANTERIOR_LINING_MM + self.canal_width(s) + self.epidural_depth

    def tangent_angle(self, s: FloatArray) -> FloatArray:
        """Angle of the spine's tangent from the image's downward axis, towards posterior.

        Lordosis makes the angle grow from the top of L1 to the L5/S1 disc, most of it in the
        lower levels (the upper lumbar spine is nearly straight); the sacrum adds its tilt across
        the lumbosacral junction, the lower thoracic kyphosis bends the top the other way, and the
        rotation turns everything.
        """
        l5s1 = next(d for d in self.discs if d.name == "L5/S1")
        lumbar = smoothstep(s / l5s1.center)
        sacral = smoothstep((s - l5s1.center + 20.0) / 50.0)
        thoracic = smoothstep(-s / 120.0)
        return (
            self.rotation
            + self.lordosis * (lumbar - 0.3)
            + self.sacral_tilt * sacral
            - self.kyphosis * thoracic
        )


def raised_cosine(u: FloatArray) -> FloatArray:
    """``cos(pi u / 2)**2`` on ``|u| < 1``, 0 outside: a smooth bump of height 1 at 0."""
    return np.where(np.abs(u) < 1.0, np.cos(0.5 * np.pi * np.clip(u, -1.0, 1.0)) ** 2, 0.0)


def smoothstep(u: NDArray[_Float]) -> NDArray[_Float]:
    """``3u^2 - 2u^3`` on ``[0, 1]``, clamped outside: a smooth ramp from 0 to 1."""
    v: NDArray[_Float] = np.clip(u, 0.0, 1.0)
    return v * v * (3.0 - 2.0 * v)


def sample_anatomy(
    stenosis: FloatArray,
    scale_range: tuple[float, float],
    lordosis_range_deg: tuple[float, float],
    rotation_range_deg: float,
    rng: np.random.Generator,
) -> Anatomy:
    """Draw one patient.

    Args:
        stenosis: Latent stenosis ``r`` of the five lumbar discs, L1/L2 to L5/S1.
        scale_range: Range of the patient scale factor.
        lordosis_range_deg: Range of the lumbar lordosis.
        rotation_range_deg: Largest in-plane rotation either way.
        rng: Random generator.

    Returns:
        The anatomy.
    """
    g = rng.uniform(*scale_range)
    canal = g * rng.uniform(12.0, 18.0)
    vertebrae: list[Vertebra] = []
    discs: list[Disc] = []
    # Stack bodies and discs from L1 (s = 0) downwards, then T12 upwards.
    start = next(i for i, row in enumerate(_SPINE) if row[0] == "L1")
    heights = [g * h * rng.uniform(0.95, 1.05) for _, h, _, _, _ in _SPINE]
    depths = [g * d * rng.uniform(0.95, 1.05) for _, _, d, _, _ in _SPINE]
    widths = [canal * w * rng.uniform(0.93, 1.07) for *_, w in _SPINE]
    degeneration: list[float] = []
    disc_heights: list[float] = []
    for i, (_, _, _, disc_h, _) in enumerate(_SPINE[:-1]):
        lumbar = i - start
        if 0 <= lumbar < len(LEVELS):
            # Stenotic levels tend to be degenerated, but not always (a cue, not the label).
            d = 0.15 + _DEGENERATION_BY_LEVEL[lumbar] + 0.5 * stenosis[lumbar]
            d += rng.normal(0.0, 0.2)
        else:
            d = rng.uniform(0.0, 0.3)
        d = float(np.clip(d, 0.0, 1.0))
        degeneration.append(d)
        disc_heights.append(g * disc_h * rng.uniform(0.9, 1.1) * (1.0 - 0.45 * d))
    tops = [0.0] * len(_SPINE)
    for i in range(start + 1, len(_SPINE)):
        tops[i] = tops[i - 1] + heights[i - 1] + disc_heights[i - 1]
    for i in range(start - 1, -1, -1):
        tops[i] = tops[i + 1] - disc_heights[i] - heights[i]
    for i, (name, *_rest) in enumerate(_SPINE):
        vertebrae.append(
            Vertebra(
                name=name,
                top=tops[i],
                bottom=tops[i] + heights[i],
                depth=depths[i],
                marrow_gain=rng.uniform(0.92, 1.08),
                canal_width=widths[i],
            )
        )
    for i in range(len(_SPINE) - 1):
        upper, lower = vertebrae[i], vertebrae[i + 1]
        lumbar = i - start
        r = float(stenosis[lumbar]) if 0 <= lumbar < len(LEVELS) else 0.0
        discs.append(
            Disc(
                name=f"{upper.name}/{lower.name}",
                top=upper.bottom,
                bottom=lower.top,
                depth=0.5 * (upper.depth + lower.depth),
                degeneration=degeneration[i],
                stenosis=r,
                bulge_share=rng.uniform(0.35, 0.65),
                canal_width=0.5 * (upper.canal_width + lower.canal_width),
            )
        )
    by_name = {v.name: v for v in vertebrae}
    l12 = next(d for d in discs if d.name == LEVELS[0])
    l5s1 = next(d for d in discs if d.name == LEVELS[-1])
    return Anatomy(
        vertebrae=tuple(vertebrae),
        discs=tuple(discs),
        epidural_depth=g * rng.uniform(2.0, 4.0),
        ligament_thickness=g * rng.uniform(2.0, 3.5),
        conus_tip=by_name["L1"].bottom + g * rng.uniform(-15.0, 15.0),
        cord_radius=g * rng.uniform(3.5, 4.5),
        sac_end=by_name["S2"].center + g * rng.uniform(-8.0, 8.0),
        spinous_length=g * rng.uniform(25.0, 35.0),
        back_muscle_depth=g * rng.uniform(45.0, 70.0),
        posterior_fat=g * rng.uniform(8.0, 45.0),
        abdomen_depth=g * rng.uniform(100.0, 170.0),
        aorta_radius=g * rng.uniform(6.0, 9.0),
        aorta_end=by_name["L4"].center + g * rng.uniform(-10.0, 10.0),
        sac_half_width=g * rng.uniform(7.0, 10.0),
        body_half_width=g * rng.uniform(20.0, 25.0),
        lordosis=math.radians(rng.uniform(*lordosis_range_deg)),
        sacral_tilt=math.radians(rng.uniform(10.0, 25.0)),
        kyphosis=math.radians(rng.uniform(0.0, 10.0)),
        rotation=math.radians(rng.uniform(-rotation_range_deg, rotation_range_deg)),
        anchor_s=0.5 * (l12.center + l5s1.center),
        anchor_fraction=(rng.uniform(0.40, 0.50), rng.uniform(0.45, 0.55)),
    )


@dataclass(frozen=True)
class Centerline:
    """The spine frame drawn into the image plane (millimetres from the first pixel's centre).

    Built by integrating the tangent angle of :meth:`Anatomy.tangent_angle` from the anchor; the
    curve is sampled every 0.5 mm and extends far beyond the image so that every image row
    crosses it. Pixels map to the frame by projecting along the curve's normal at the pixel's
    row (a first-order projection, exact on a straight spine); :meth:`to_image` inverts that map.

    Attributes:
        s: Samples of ``s``, increasing.
        x: Column position (mm) of the curve at each sample.
        y: Row position (mm) of the curve at each sample, increasing.
        sin: ``sin`` of the tangent angle at each sample.
        cos: ``cos`` of the tangent angle at each sample.
    """

    s: FloatArray
    x: FloatArray
    y: FloatArray
    sin: FloatArray
    cos: FloatArray

    @classmethod
    def build(cls, anatomy: Anatomy, anchor_xy: tuple[float, float]) -> Centerline:
        """Draw the spine of ``anatomy`` with its anchor at ``anchor_xy`` (mm)."""
        s = np.arange(-_CURVE_REACH_MM, _CURVE_REACH_MM + _CURVE_STEP_MM, _CURVE_STEP_MM)
        s = s + anatomy.anchor_s
        # Beyond 70 degrees the curve would stop crossing image rows; no spine bends that far.
        angle = np.clip(anatomy.tangent_angle(s), -1.2, 1.2)
        sin, cos = np.sin(angle), np.cos(angle)
        dx = np.concatenate([[0.0], np.cumsum(0.5 * (sin[1:] + sin[:-1]) * _CURVE_STEP_MM)])
        dy = np.concatenate([[0.0], np.cumsum(0.5 * (cos[1:] + cos[:-1]) * _CURVE_STEP_MM)])
        k = round(_CURVE_REACH_MM / _CURVE_STEP_MM)
        return cls(s=s, x=dx - dx[k] + anchor_xy[0], y=dy - dy[k] + anchor_xy[1], sin=sin, cos=cos)

    def shifted(self, dx: float, dy: float) -> Centerline:
        """The same curve translated by ``(dx, dy)`` mm."""
        return Centerline(s=self.s, x=self.x + dx, y=self.y + dy, sin=self.sin, cos=self.cos)

    def rows(self, y: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
        """Curve quantities at image rows ``y`` (mm): ``s``, ``x``, ``sin`` and ``cos``."""
        return (
            np.interp(y, self.y, self.s),
            np.interp(y, self.y, self.x),
            np.interp(y, self.y, self.sin),
            np.interp(y, self.y, self.cos),
        )

    def frame(self, x: FloatArray, y: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Map pixel positions to the spine frame.

        Args:
            x: Column positions (mm), shape ``(W,)``.
            y: Row positions (mm), shape ``(H,)``.

        Returns:
            ``(s, t)``, each of shape ``(H, W)``.
        """
        s_row, x_row, sin, cos = self.rows(y)
        dx = x[None, :] - x_row[:, None]
        return s_row[:, None] + dx * sin[:, None], dx * cos[:, None]

    def to_image(self, s: float, t: float) -> tuple[float, float]:
        """Pixel position (mm) of the frame point ``(s, t)``; the inverse of :meth:`frame`.

        On row ``y`` the frame has ``s = s_row(y) + t * tan(angle(y))``; this solves that for
        ``y`` by bracketing on the samples and a few secant steps on the interpolated curve.
        """

        def residual(y: float) -> float:
            s_row, _, sin, cos = (float(v[0]) for v in self.rows(np.asarray([y])))
            return s_row + t * sin / cos - s

        g = self.s + t * self.sin / self.cos - s
        i = int(np.clip(np.argmax(g >= 0.0), 1, len(g) - 1))
        y0, y1 = float(self.y[i - 1]), float(self.y[i])
        r0, r1 = residual(y0), residual(y1)
        for _ in range(4):
            if r1 == r0:
                break
            y0, y1 = y1, y1 - r1 * (y1 - y0) / (r1 - r0)
            r0, r1 = r1, residual(y1)
        _, x_row, _, cos = (float(v[0]) for v in self.rows(np.asarray([y1])))
        return x_row + t / cos, y1
