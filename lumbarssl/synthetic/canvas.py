"""A raster painted in a curvilinear frame, with anti-aliased rounded boxes, ellipses and bands.

The phantom modules paint tissues here back to front. Every pixel knows its frame coordinates
``(s, t)`` (see :class:`~lumbarssl.synthetic.anatomy.Centerline`); a shape is evaluated only
inside a window of rows and columns that bounds it, so a small shape costs little however large
the image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from lumbarssl.synthetic.anatomy import Centerline

__all__ = ["Canvas", "Field", "Window"]

F32 = NDArray[np.float32]

Window = tuple[slice, slice]
Field = float | F32  # a constant, or a full-image map indexed by the painted window


class Canvas:
    """An image being painted, with the spine frame of every pixel.

    Shapes are painted inside a window of rows and columns that bounds them, so a small shape
    costs little however large the image.
    """

    def __init__(self, centerline: Centerline, size: int, spacing: float) -> None:
        coords = np.arange(size, dtype=np.float64) * spacing
        self.spacing = spacing
        self.size = size
        self.s_row, self.x_row, sin, cos = centerline.rows(coords)
        self.tan_row = sin / cos
        self.inv_cos_row = 1.0 / cos
        self.max_tan = float(np.abs(self.tan_row).max())
        s, t = centerline.frame(coords, coords)
        self.s = s.astype(np.float32)
        self.t = t.astype(np.float32)
        self.image = np.zeros((size, size), dtype=np.float32)
        # Anti-aliasing: edges ramp over one pixel, but never sharper than 0.5 mm.
        self.edge = max(spacing, 0.5)

    def window(self, s_lo: float, s_hi: float, t_lo: float, t_hi: float) -> Window | None:
        """Rows and columns that contain the frame box ``[s_lo, s_hi] x [t_lo, t_hi]``.

        Conservative: on row ``j`` the frame has ``s = s_row[j] + t * tan[j]``.
        """
        m = 2.0 * self.edge
        slack = m + max(abs(t_lo), abs(t_hi)) * self.max_tan
        r0 = int(np.searchsorted(self.s_row, s_lo - slack, side="left"))
        r1 = int(np.searchsorted(self.s_row, s_hi + slack, side="right"))
        if r0 >= r1:
            return None
        # Refine with each row's own slope (the global one is loose where the spine bends).
        s_row, tan = self.s_row[r0:r1], self.tan_row[r0:r1]
        a, b = s_row + (t_lo - m) * tan, s_row + (t_hi + m) * tan
        rows = np.flatnonzero((np.maximum(a, b) >= s_lo - m) & (np.minimum(a, b) <= s_hi + m))
        if rows.size == 0:
            return None
        r0, r1 = r0 + int(rows[0]), r0 + int(rows[-1]) + 1
        x = self.x_row[r0:r1]
        inv_cos = self.inv_cos_row[r0:r1]
        x_lo = float(np.min(x + (t_lo - m) * inv_cos))
        x_hi = float(np.max(x + (t_hi + m) * inv_cos))
        c0 = max(math.floor(x_lo / self.spacing), 0)
        c1 = min(math.ceil(x_hi / self.spacing) + 1, self.size)
        if c0 >= c1:
            return None
        return slice(r0, r1), slice(c0, c1)

    def paint(self, win: Window, alpha: F32, target: float | F32, opacity: float = 1.0) -> None:
        """Composite ``target`` (a constant or a window-shaped array) over the window."""
        region = self.image[win]
        if opacity != 1.0:
            alpha = alpha * np.float32(opacity)
        region += alpha * (target - region)

    def box(
        self,
        s_lo: float,
        s_hi: float,
        t_lo: float,
        t_hi: float,
        radius: float,
        value: Field,
        *,
        opacity: float = 1.0,
        core: tuple[float, Field] | None = None,
    ) -> None:
        """Paint a box of the frame with corners rounded to ``radius``.

        ``core = (inset, value)`` paints a second box ``inset`` inside the first (bone marrow
        inside its cortex) from the same distance field.
        """
        win = self.window(s_lo, s_hi, t_lo, t_hi)
        if win is None:
            return
        half_s, half_t = 0.5 * (s_hi - s_lo), 0.5 * (t_hi - t_lo)
        radius = min(radius, half_s, half_t)
        qs = np.abs(self.s[win] - np.float32(s_lo + half_s)) - np.float32(half_s - radius)
        qt = np.abs(self.t[win] - np.float32(t_lo + half_t)) - np.float32(half_t - radius)
        outside = np.hypot(np.maximum(qs, 0.0), np.maximum(qt, 0.0))
        sdf = outside + np.minimum(np.maximum(qs, qt), 0.0) - np.float32(radius)
        self.paint(win, self._alpha(sdf), _on(value, win), opacity)
        if core is not None:
            inset, inner = core
            self.paint(win, self._alpha(sdf + np.float32(inset)), _on(inner, win), opacity)

    def boxes(
        self,
        s_lo: Sequence[float],
        s_hi: Sequence[float],
        t_lo: Sequence[float],
        t_hi: Sequence[float],
        radius: float,
        value: Field,
        *,
        gain: Sequence[float] | None = None,
        core: tuple[float, Field] | None = None,
    ) -> None:
        """Paint a row of rounded boxes that follow each other along ``s``, in one pass.

        The boxes must be sorted along ``s`` and must not overlap there; each pixel belongs to
        the box nearest along ``s`` (the gaps are split at their midpoints). Same result as one
        :meth:`box` call per box wherever the gaps are wider than an edge ramp.

        Args:
            s_lo: Per box, lower ``s`` bound.
            s_hi: Per box, upper ``s`` bound.
            t_lo: Per box, lower ``t`` bound.
            t_hi: Per box, upper ``t`` bound.
            radius: Corner radius (clipped to each box's half-sides).
            value: Signal painted.
            gain: Per box, a factor on ``value`` (and on the core's value).
            core: ``(inset, value)`` of a second box inside each box.
        """
        if len(s_lo) == 0:
            return
        lo_s, hi_s = np.asarray(s_lo, np.float64), np.asarray(s_hi, np.float64)
        lo_t, hi_t = np.asarray(t_lo, np.float64), np.asarray(t_hi, np.float64)
        win = self.window(
            float(lo_s.min()), float(hi_s.max()), float(lo_t.min()), float(hi_t.max())
        )
        if win is None:
            return
        s, t = self.s[win], self.t[win]
        half_s, half_t = 0.5 * (hi_s - lo_s), 0.5 * (hi_t - lo_t)
        r = np.minimum(np.minimum(radius, half_s), half_t)
        splits = (0.5 * (hi_s[:-1] + lo_s[1:])).astype(np.float32)
        k = np.searchsorted(splits, s)

        def per_pixel(v: NDArray[np.float64]) -> F32:
            return v.astype(np.float32)[k]

        qs = np.abs(s - per_pixel(lo_s + half_s)) - per_pixel(half_s - r)
        qt = np.abs(t - per_pixel(lo_t + half_t)) - per_pixel(half_t - r)
        outside = np.hypot(np.maximum(qs, 0.0), np.maximum(qt, 0.0))
        sdf = outside + np.minimum(np.maximum(qs, qt), 0.0) - per_pixel(r)
        factor = None if gain is None else per_pixel(np.asarray(gain, np.float64))
        self.paint(win, self._alpha(sdf), _on(value, win, factor))
        if core is not None:
            inset, inner = core
            self.paint(win, self._alpha(sdf + np.float32(inset)), _on(inner, win, factor))

    def ellipse(
        self, s_c: float, t_c: float, r_s: float, r_t: float, value: Field, *, opacity: float = 1.0
    ) -> None:
        """Paint an ellipse of the frame with semi-axes ``r_s`` and ``r_t``."""
        win = self.window(s_c - r_s, s_c + r_s, t_c - r_t, t_c + r_t)
        if win is None:
            return
        s_off = self.s[win] - np.float32(s_c)
        t_off = self.t[win] - np.float32(t_c)
        ds = s_off * np.float32(1.0 / r_s)
        dt = t_off * np.float32(1.0 / r_t)
        u = np.hypot(ds, dt)
        # Distance to the boundary to first order, (u - 1) / |grad u| (exact on a circle), and
        # never less than the distance to the bounding box, so nothing leaks out of the window.
        grad = np.hypot(ds * np.float32(1.0 / r_s), dt * np.float32(1.0 / r_t))
        sdf = (u - 1.0) * u / np.maximum(grad, np.float32(1e-6))
        outside_box = np.maximum(np.abs(s_off) - np.float32(r_s), np.abs(t_off) - np.float32(r_t))
        self.paint(win, self._alpha(np.maximum(sdf, outside_box)), _on(value, win), opacity)

    def band(
        self,
        s_range: tuple[float, float],
        t_range: tuple[float, float],
        lo: Field,
        hi: Field,
        value: Field,
        *,
        opacity: float = 1.0,
        weight: F32 | None = None,
    ) -> None:
        """Paint ``lo <= t <= hi`` for ``s`` in ``s_range``.

        ``lo`` and ``hi`` are constants or full-image maps (functions of ``s``); ``t_range`` must
        contain every value they take in that stretch. ``weight``, a full-image map in ``[0, 1]``,
        multiplies the opacity.
        """
        win = self.window(*s_range, *t_range)
        if win is None:
            return
        s, t = self.s[win], self.t[win]
        inv_edge = np.float32(1.0 / self.edge)
        lo_w = lo if isinstance(lo, float) else lo[win]
        hi_w = hi if isinstance(hi, float) else hi[win]
        alpha = np.minimum(t - lo_w, hi_w - t)
        s_lo, s_hi = s_range
        if math.isfinite(s_lo):
            alpha = np.minimum(alpha, s - np.float32(s_lo))
        if math.isfinite(s_hi):
            alpha = np.minimum(alpha, np.float32(s_hi) - s)
        alpha = np.clip(alpha * inv_edge + np.float32(0.5), 0.0, 1.0)
        if weight is not None:
            alpha *= weight[win]
        self.paint(win, alpha, _on(value, win), opacity)

    def _alpha(self, sdf: F32) -> F32:
        alpha: F32 = np.clip(np.float32(0.5) - sdf * np.float32(1.0 / self.edge), 0.0, 1.0)
        return alpha


def _on(value: Field, win: Window, factor: F32 | None = None) -> float | F32:
    """``value`` restricted to the window, times a window-shaped factor when given."""
    base = value if isinstance(value, float) else value[win]
    return base if factor is None else base * factor
