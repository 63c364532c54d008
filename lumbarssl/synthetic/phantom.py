"""Rendering the sagittal phantom: tissues painted in the spine frame, slices by lateral offset.

The mid-sagittal image is painted once per series from rounded boxes, ellipses and bands in the
spine frame of :mod:`~lumbarssl.synthetic.anatomy`, each with a one-pixel anti-aliased edge,
back to front (body outline, muscle, abdomen, vertebrae, discs, canal, posterior elements). Moving
away from the midline the anatomy changes in steps that are painted once as *layers* (the
stenosis fades, the thecal sac gives way to pedicles and neural foramina, spinous processes to
paraspinal muscle, then facet joints, then the psoas); a slice at lateral offset ``z`` is the mid
image plus each layer's difference weighted by a smooth ramp in ``|z|``. A slice thus costs a few
array additions, not a new painting.

The shapes' sizes and positions below are typical adult anatomy in millimetres (or fractions of a
body's height and depth), tuned by eye against sagittal T2 images; they are constants of the
model, not parameters of the generator.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from lumbarssl.synthetic.anatomy import ANTERIOR_LINING_MM, Anatomy, Centerline, smoothstep
from lumbarssl.synthetic.canvas import Canvas, Field

__all__ = [
    "T1_SIGNAL",
    "T2_SIGNAL",
    "TISSUES",
    "SagittalPhantom",
    "add_rician_noise",
    "quadratic_log_gain",
    "rician_magnitude",
    "smooth_noise",
]

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]

TISSUES: tuple[str, ...] = (
    "air",
    "fat",
    "muscle",
    "marrow",
    "cortex",
    "annulus",
    "nucleus",
    "csf",
    "cord",
    "root",
    "ligament",
    "abdomen",
    "vessel",
    "epidural_fat",
    "joint_fluid",
)
# Signal relative to the brightest tissue on fast spin-echo images: CSF on T2, fat on T1.
T2_SIGNAL: Mapping[str, float] = {
    "air": 0.0,
    "fat": 0.75,
    "muscle": 0.2,
    "marrow": 0.48,
    "cortex": 0.1,
    "annulus": 0.15,
    "nucleus": 0.85,
    "csf": 1.0,
    "cord": 0.36,
    "root": 0.3,
    "ligament": 0.07,
    "abdomen": 0.3,
    "vessel": 0.06,
    "epidural_fat": 0.62,
    "joint_fluid": 0.75,
}
T1_SIGNAL: Mapping[str, float] = {
    "air": 0.0,
    "fat": 1.0,
    "muscle": 0.3,
    "marrow": 0.68,
    "cortex": 0.05,
    "annulus": 0.28,
    "nucleus": 0.36,
    "csf": 0.18,
    "cord": 0.42,
    "root": 0.38,
    "ligament": 0.07,
    "abdomen": 0.38,
    "vessel": 0.1,
    "epidural_fat": 0.92,
    "joint_fluid": 0.2,
}
# How much each tissue's signal varies between patients and scanners (relative, uniform +-).
_SIGNAL_JITTER = 0.08
# Correlation lengths (mm) of the marrow/fat texture and of the bowel texture.
_FINE_TEXTURE_MM = 2.5
_COARSE_TEXTURE_MM = 12.0
# Cortical bone thickness (mm) of bodies and posterior elements.
_CORTEX_MM = 1.0
# Length (mm) over which the aorta fades out above its bifurcation.
_AORTA_FADE_MM = 25.0
# (v2) How far the canal's CSF has turned to epidural fat at the sac's lateral edge.
_PARTIAL_VOLUME_OPACITY = 0.6


@dataclass(frozen=True)
class _Layer:
    """Change of the image as ``|z|`` ramps from ``start`` to ``stop`` (mm)."""

    delta: F32
    start: float
    stop: float
    linear: bool = False  # a linear ramp in |z| (partial volume) instead of a smoothstep


class SagittalPhantom:
    """One sagittal series of one patient, noise-free: the mid image and its lateral layers.

    Args:
        anatomy: The patient.
        centerline: The spine drawn into this series' pixel plane.
        size: Rows (= columns) of the image.
        spacing: Pixel spacing (mm).
        signal: Signal of each tissue (see :data:`T2_SIGNAL`).
        rng: Generator for the tissue signal jitter, textures and bias field.
        bias_field_strength: Standard deviation of the smooth log-gain field.
        max_offset: Largest ``|z|`` (mm) that :meth:`slice` will be asked for; layers that only
            change the image beyond it are not painted (the slices are the same either way).
        partial_volume: (generator 2.0) Fade the CSF of the canal linearly with ``|z|`` towards
            epidural fat, the partial volume of a round thecal sac in a thick slice, so the slice
            nearest to the midline is the one with the brightest canal.
    """

    def __init__(
        self,
        anatomy: Anatomy,
        centerline: Centerline,
        size: int,
        spacing: float,
        signal: Mapping[str, float],
        rng: np.random.Generator,
        bias_field_strength: float,
        *,
        max_offset: float = math.inf,
        partial_volume: bool = False,
    ) -> None:
        self.anatomy = anatomy
        self.size = size
        self.spacing = spacing
        jitter = rng.uniform(1.0 - _SIGNAL_JITTER, 1.0 + _SIGNAL_JITTER, len(TISSUES))
        self._signal = {n: signal[n] * float(j) for n, j in zip(TISSUES, jitter, strict=True)}
        c = self._canvas = Canvas(centerline, size, spacing)
        fine = smooth_noise(rng, size, spacing, _FINE_TEXTURE_MM)
        coarse = smooth_noise(rng, size, spacing, _COARSE_TEXTURE_MM)
        gain = self._bias_field(rng, bias_field_strength)

        sig = self._signal
        self._fat = sig["fat"] * (1.0 + 0.06 * fine)
        self._muscle = sig["muscle"] * (1.0 + 0.15 * fine)
        self._marrow = sig["marrow"] * (1.0 + 0.08 * fine)
        self._abdomen = np.maximum(sig["abdomen"] * (1.0 + 0.35 * coarse), 0.0)
        # Smooth anatomy along s, tabulated once and looked up per pixel.
        s_grid = np.arange(float(c.s.min()) - 1.0, float(c.s.max()) + 1.0, 0.25)
        self._s_grid, self._wall_table = s_grid, anatomy.canal_wall(s_grid)
        self._wall = np.interp(c.s, s_grid, self._wall_table).astype(np.float32)
        self._depth = np.interp(c.s, s_grid, anatomy.body_depth(s_grid)).astype(np.float32)
        self._wall_max = float(self._wall.max()) + 2.0
        self._canal_win = c.window(-math.inf, math.inf, -2.0, self._wall_max)
        self._csf = {scale: self._csf_bounds(s_grid, scale) for scale in (1.0, 0.0)}
        self._flavum = self._flavum_weight(s_grid)

        self._paint_background()
        self._paint_bodies()
        self._paint_discs()
        self._paint_canal(stenosis_scale=1.0)
        self._paint_posterior_elements()
        self.mid = c.image * gain
        hs, hb = anatomy.sac_half_width, anatomy.body_half_width
        steps: list[tuple[Callable[[], None], float, float]] = [
            (lambda: self._paint_canal(stenosis_scale=0.0), 0.25 * hs, 0.9 * hs),
            # After the canal is repainted, or its CSF would come back at full brightness.
            *([(self._paint_csf_partial_volume, 0.0, hs)] if partial_volume else []),
            (self._paint_paraspinal_muscle, 2.5, 6.0),
            (self._paint_foramina, hs - 1.5, hs + 2.5),
            (self._paint_facets, hs + 2.0, hs + 6.0),
            (self._paint_psoas, hb - 2.0, hb + 3.0),
            (self._paint_paraspinal_muscle, hb + 4.0, hb + 9.0),
        ]
        self.layers: list[_Layer] = []
        before = c.image.copy()
        # Each layer is painted over the previous ones, so only a tail of unused layers can go.
        used = [k for k, (_, start, _) in enumerate(steps) if start < max_offset]
        for paint, start, stop in steps[: max(used, default=-1) + 1]:
            paint()
            delta = c.image - before
            delta *= gain
            linear = partial_volume and paint == self._paint_csf_partial_volume
            self.layers.append(_Layer(delta, start, stop, linear))
            before[...] = c.image

    def slice(self, z: float) -> F32:
        """Noise-free image at lateral offset ``z`` (mm) from the midline, shape ``(H, W)``.

        The result may be :attr:`mid` itself: do not modify it in place.
        """
        image = self.mid
        for layer in self.layers:
            w = (abs(z) - layer.start) / (layer.stop - layer.start)
            if w <= 0.0:
                continue
            w = min(w, 1.0)
            ramp = w if layer.linear else w * w * (3.0 - 2.0 * w)
            weighted = np.float32(ramp) * layer.delta
            if image is self.mid:
                weighted += image
                image = weighted
            else:
                image += weighted
        return image

    def slice_map(self, z: F32) -> F32:
        """Noise-free image where pixel ``(i, j)`` lies ``z[i, j]`` mm from the midline.

        The lateral offset varies over the image when the midline drifts along the spine (a
        tilted slab, a laterally curved spine). A constant map gives :meth:`slice` of that
        constant up to rounding.

        Args:
            z: Lateral offset of every pixel, shape ``(H, W)``.

        Returns:
            A fresh image of shape ``(H, W)``, float32.
        """
        image = self.mid.copy()
        distance = np.abs(z).astype(np.float32)
        for layer in self.layers:
            w = (distance - np.float32(layer.start)) * np.float32(1.0 / (layer.stop - layer.start))
            np.clip(w, 0.0, 1.0, out=w)
            if not layer.linear:
                w = w * w * (np.float32(3.0) - np.float32(2.0) * w)
            image += w * layer.delta
        return image

    @property
    def frame(self) -> tuple[F32, F32]:
        """Spine-frame coordinates ``(s, t)`` (mm) of every pixel, each of shape ``(H, W)``."""
        return self._canvas.s, self._canvas.t

    def canal_mask(self) -> NDArray[np.bool_]:
        """Pixels of the mid image inside the spinal canal (between disc and posterior wall)."""
        t = self._canvas.t
        return (t > 0.0) & (t < self._wall)

    def csf_mask(self) -> NDArray[np.bool_]:
        """Pixels of the mid image inside the (possibly narrowed) CSF column."""
        anterior, posterior = self._csf[1.0]
        t, s = self._canvas.t, self._canvas.s
        return (t > anterior) & (t < posterior) & (s < self.anatomy.sac_end)

    # -- painting ---------------------------------------------------------------------------

    def _csf_bounds(self, s_grid: F64, scale: float) -> tuple[F32, F32]:
        """Full-image maps of the CSF column's bounds, filled inside the canal window only."""
        c = self._canvas
        anterior = np.zeros_like(c.s)
        posterior = np.zeros_like(c.s)
        if self._canal_win is not None:
            ant, post = self.anatomy.csf_bounds(s_grid, scale)
            s = c.s[self._canal_win]
            anterior[self._canal_win] = np.interp(s, s_grid, ant)
            posterior[self._canal_win] = np.interp(s, s_grid, post)
        return anterior, posterior

    def _flavum_weight(self, s_grid: F64) -> F32:
        """Where along the canal the ligamentum flavum lies: 1 across each disc level, else 0."""
        a, c = self.anatomy, self._canvas
        weight = np.zeros_like(c.s)
        if self._canal_win is None:
            return weight
        table = np.zeros_like(s_grid)
        last = a.vertebra("S1").bottom
        for d in a.discs:
            if d.height > 0.5 and d.bottom <= last:
                half = d.narrowing_half_length
                inside = (half - np.abs(s_grid - d.center)) / self._canvas.edge + 0.5
                table = np.maximum(table, np.clip(inside, 0.0, 1.0))
        weight[self._canal_win] = np.interp(c.s[self._canal_win], s_grid, table)
        return weight

    def _paint_csf_partial_volume(self) -> None:
        """The CSF column mixed with epidural fat: the thecal sac's edge in a thick slice."""
        a, c, sig = self.anatomy, self._canvas, self._signal
        if self._canal_win is None:
            return
        ant, post = self._csf[0.0]
        c.band(
            (-math.inf, a.sac_end),
            (-2.0, self._wall_max),
            ant,
            post,
            sig["epidural_fat"],
            opacity=_PARTIAL_VOLUME_OPACITY,
        )

    def _paint_background(self) -> None:
        a, c, sig = self.anatomy, self._canvas, self._signal
        everywhere = (-math.inf, math.inf)
        wall, depth = self._wall, self._depth
        front = -depth - np.float32(a.abdomen_depth)
        t_front = -80.0 - a.abdomen_depth
        back = a.back_muscle_depth
        c.band(
            everywhere,
            (t_front, 40.0 + back + a.posterior_fat),
            front,
            wall + np.float32(back + a.posterior_fat),
            self._fat,
        )
        c.band(
            everywhere,
            (t_front, 0.0),
            front + np.float32(8.0),
            front + np.float32(16.0),
            self._muscle,
        )
        c.band(
            everywhere,
            (t_front, 0.0),
            front + np.float32(18.0),
            -depth - np.float32(4.0),
            self._abdomen,
        )
        c.band(everywhere, (0.0, 40.0 + back), wall, wall + np.float32(back), self._muscle)
        # The aorta runs in front of the spine and fades out at its bifurcation.
        aorta = -depth - np.float32(3.0)
        fade = np.clip((np.float32(a.aorta_end) - c.s) * np.float32(1.0 / _AORTA_FADE_MM), 0.0, 1.0)
        c.band(
            (-math.inf, a.aorta_end),
            (-80.0, 0.0),
            aorta - np.float32(2.0 * a.aorta_radius),
            aorta,
            sig["vessel"],
            weight=fade,
        )

    def _paint_bone(
        self, s_lo: float, s_hi: float, t_lo: float, t_hi: float, radius: float, gain: float = 1.0
    ) -> None:
        marrow: Field = self._marrow if gain == 1.0 else self._marrow * np.float32(gain)
        cortex = self._signal["cortex"]
        self._canvas.box(s_lo, s_hi, t_lo, t_hi, radius, cortex, core=(_CORTEX_MM, marrow))

    def _paint_bones(
        self,
        boxes: list[tuple[float, float, float, float]],
        radius: float,
        gain: list[float] | None = None,
    ) -> None:
        """Bones (cortex around marrow) that follow each other along the spine, in one pass."""
        if not boxes:
            return
        s_lo, s_hi, t_lo, t_hi = (list(v) for v in zip(*boxes, strict=True))
        self._canvas.boxes(
            s_lo,
            s_hi,
            t_lo,
            t_hi,
            radius,
            self._signal["cortex"],
            gain=gain,
            core=(_CORTEX_MM, self._marrow),
        )

    def _wall_at(self, s: float) -> float:
        return float(np.interp(s, self._s_grid, self._wall_table))

    def _paint_bodies(self) -> None:
        vertebrae = self.anatomy.vertebrae
        # Corners are rounded to the smallest body's quarter height (3 mm for adult bodies).
        radius = min(3.0, 0.25 * min(v.height for v in vertebrae))
        self._paint_bones(
            [(v.top, v.bottom, -v.depth, 0.0) for v in vertebrae],
            radius,
            gain=[v.marrow_gain for v in vertebrae],
        )

    def _paint_discs(self) -> None:
        c, sig = self._canvas, self._signal
        discs = [d for d in self.anatomy.discs if d.height > 0.5]
        c.boxes(
            [d.top - 0.3 for d in discs],
            [d.bottom + 0.3 for d in discs],
            [-d.depth - 1.5 for d in discs],
            [1.0] * len(discs),
            4.0,
            sig["annulus"],
        )
        for d in discs:
            h = d.height
            if h < 4.0:
                continue
            dark = 0.8 * d.degeneration
            nucleus = (1.0 - dark) * sig["nucleus"] + dark * sig["annulus"]
            c.ellipse(d.center, -0.47 * d.depth, 0.36 * h, 0.36 * d.depth, nucleus)
            if d.degeneration < 0.6:
                # The intranuclear cleft: a thin dark line across the adult nucleus.
                c.ellipse(
                    d.center, -0.47 * d.depth, 0.5, 0.28 * d.depth, sig["annulus"], opacity=0.5
                )

    def _paint_canal(self, stenosis_scale: float) -> None:
        a, c, sig = self.anatomy, self._canvas, self._signal
        if self._canal_win is None:
            return
        ant, post = self._csf[stenosis_scale]
        wall = self._wall
        t_range = (-2.0, self._wall_max)
        bottom = a.vertebrae[-1].bottom
        all_s = (-math.inf, bottom)
        c.band(all_s, t_range, 0.0, wall, sig["epidural_fat"])
        c.band(all_s, (-2.0, 3.0), 0.0, 1.0, sig["ligament"])
        # Ligamentum flavum behind the CSF at every disc level; the disc bulge in front of it.
        c.band(all_s, t_range, post, wall + np.float32(0.5), sig["ligament"], weight=self._flavum)
        if stenosis_scale > 0.0:
            bulge = np.clip((ant - np.float32(ANTERIOR_LINING_MM)) / np.float32(c.edge), 0.0, 1.0)
            c.band(all_s, t_range, 0.0, ant, sig["annulus"], weight=bulge)
        c.band((-math.inf, a.sac_end), t_range, ant, post, sig["csf"])
        win = self._canal_win
        mid = np.zeros_like(ant)
        half_cord = np.zeros_like(ant)
        mid[win] = 0.5 * (ant[win] + post[win])
        taper = (np.float32(a.conus_tip) - c.s[win]) * np.float32(1.0 / 25.0)
        half_cord[win] = np.float32(a.cord_radius) * smoothstep(taper).astype(np.float32)
        c.band((-math.inf, a.conus_tip), t_range, mid - half_cord, mid + half_cord, sig["cord"])
        for fraction in (0.55, 0.7, 0.82):
            at = ant + np.float32(fraction) * (post - ant)
            c.band(
                (a.conus_tip - 10.0, a.sac_end - 2.0),
                t_range,
                at - np.float32(0.5),
                at + np.float32(0.5),
                sig["root"],
                opacity=0.7,
            )

    def _paint_posterior_elements(self) -> None:
        a = self.anatomy
        spinous, sacral = [], []
        for v in a.vertebrae:
            wall = self._wall_at(v.center)
            if v.name in ("S1", "S2", "S3"):
                sacral.append((v.top, v.bottom + 2.0, wall + 0.5, wall + 9.0))
            elif not v.name.startswith("S"):
                center, half = v.center + 0.3 * v.height, 0.33 * v.height
                spinous.append((center - half, center + half, wall + 0.5, wall + a.spinous_length))
        self._paint_bones(spinous, 4.0)
        self._paint_bones(sacral, 2.0)

    def _paint_paraspinal_muscle(self) -> None:
        a, c = self.anatomy, self._canvas
        back = a.back_muscle_depth
        c.band(
            (-math.inf, math.inf),
            (0.0, 40.0 + back),
            self._wall + np.float32(0.3),
            self._wall + np.float32(back),
            self._muscle,
        )

    def _paint_foramina(self) -> None:
        a, c, sig = self.anatomy, self._canvas, self._signal
        bottom = a.vertebra("S1").bottom
        c.band(
            (-math.inf, bottom),
            (-2.0, self._wall_max),
            -0.5,
            self._wall + np.float32(1.0),
            sig["epidural_fat"],
        )
        discs = [d for d in a.discs if d.bottom <= bottom and d.height > 0.5]
        c.boxes(
            [d.top - 0.3 for d in discs],
            [d.bottom + 0.3 for d in discs],
            [-3.0] * len(discs),
            [2.0] * len(discs),
            1.0,
            sig["annulus"],
        )
        pedicled = [v for v in a.vertebrae if not v.name.startswith("S") or v.name == "S1"]
        walls = [self._wall_at(v.center) for v in pedicled]
        self._paint_bones(
            [
                (v.top + 1.5, v.top + 0.55 * v.height, -1.5, w + 1.5)
                for v, w in zip(pedicled, walls, strict=True)
            ],
            3.0,
        )
        for v, w in zip(pedicled, walls, strict=True):
            c.ellipse(v.top + 0.55 * v.height + 4.5, 0.4 * w, 3.0, 2.5, sig["root"])
        # Superior articular processes close each foramen from behind.
        self._paint_bones(
            [
                (d.center - 9.0, d.center + 2.0, 0.62 * w, w + 2.0)
                for d, w in ((d, self._wall_at(d.center)) for d in discs)
            ],
            2.5,
        )

    def _paint_facets(self) -> None:
        a, c, sig = self.anatomy, self._canvas, self._signal
        discs = [d for d in a.discs if d.height > 0.5 and d.bottom <= a.vertebra("S1").top + 1.0]
        walls = [self._wall_at(d.center) for d in discs]
        self._paint_bones(
            [
                (d.center - 13.0, d.center + 13.0, w + 1.0, w + 17.0)
                for d, w in zip(discs, walls, strict=True)
            ],
            5.0,
        )
        c.boxes(
            [d.center - 0.7 for d in discs],
            [d.center + 0.7 for d in discs],
            [w + 2.5 for w in walls],
            [w + 15.5 for w in walls],
            0.5,
            sig["joint_fluid"],
        )

    def _paint_psoas(self) -> None:
        c = self._canvas
        c.band(
            (-math.inf, math.inf),
            (-80.0, self._wall_max),
            -self._depth - np.float32(14.0),
            self._wall + np.float32(1.5),
            self._muscle,
        )

    def _bias_field(self, rng: np.random.Generator, strength: float) -> F32:
        """Smooth gain: a random quadratic log-field times a posterior coil falloff."""
        log_gain = quadratic_log_gain(rng, self.size, strength)
        # Spine coils sit under the patient's back: signal falls off towards the front.
        falloff = np.float32(1.0 / rng.uniform(150.0, 400.0))
        log_gain += np.minimum(self._canvas.t - np.float32(10.0), 0.0) * falloff
        return np.exp(log_gain)


def quadratic_log_gain(rng: np.random.Generator, size: int, strength: float) -> F32:
    """A random smooth log-gain field: a quadratic in the image coordinates, ``(size, size)``."""
    u = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    cx, cy, cxy, cxx, cyy = (np.float32(v) for v in rng.normal(0.0, strength / 2.0, 5))
    row = cy * u + cyy * (u * u - np.float32(1 / 3))
    col = cx * u + cxx * (u * u - np.float32(1 / 3))
    gain: F32 = row[:, None] + col[None, :] + cxy * u[:, None] * u[None, :]
    return gain


def smooth_noise(rng: np.random.Generator, size: int, spacing: float, corr_mm: float) -> F32:
    """Zero-mean, unit-variance noise with correlation length ``corr_mm``, shape ``(size, size)``.

    White noise on a grid two thirds of the correlation length apart (never finer than the
    pixels), Gaussian-smoothed there and interpolated bilinearly to the pixels.
    """
    cell = max(corr_mm / 1.5, spacing)
    cells = math.ceil(size * spacing / cell) + 1
    coarse = ndimage.gaussian_filter(rng.standard_normal((cells, cells)), 0.5 * corr_mm / cell)
    fine = _bilinear_resize(coarse.astype(np.float32), size)
    normalised: F32 = ((fine - fine.mean()) / max(float(fine.std()), 1e-6)).astype(np.float32)
    return normalised


def _bilinear_resize(a: F32, size: int) -> F32:
    """Resize a square array to ``(size, size)`` by bilinear interpolation, corners aligned."""
    u = np.linspace(0.0, a.shape[0] - 1.0, size)
    i = np.minimum(u.astype(np.intp), a.shape[0] - 2)
    f = (u - i).astype(np.float32)
    rows = a[i] * (1.0 - f)[:, None] + a[i + 1] * f[:, None]
    out: F32 = rows[:, i] * (1.0 - f)[None, :] + rows[:, i + 1] * f[None, :]
    return out


def add_rician_noise(image: F32, noise_sd: float, rng: np.random.Generator) -> F32:
    """Magnitude of the image plus complex Gaussian noise of standard deviation ``noise_sd``.

    Args:
        image: Noise-free magnitude image, shape ``(H, W)``.
        noise_sd: Standard deviation of each of the real and imaginary noise parts.
        rng: Random generator.

    Returns:
        The noisy image, shape ``(H, W)``, float32.
    """
    real = rng.standard_normal(image.shape, dtype=np.float32)
    imag = rng.standard_normal(image.shape, dtype=np.float32)
    real *= np.float32(noise_sd)
    imag *= np.float32(noise_sd)
    return rician_magnitude(image, real, imag)


def rician_magnitude(image: F32, real: F32, imag: F32) -> F32:
    """``|image + real + i imag|``, computed in a fresh float32 array."""
    out = image + real
    out *= out
    out += np.square(imag)
    magnitude: F32 = np.sqrt(out, out=out)
    return magnitude
