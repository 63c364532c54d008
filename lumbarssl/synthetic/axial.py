"""A simple axial T2 series: the distractor that readers of the RSNA layout must filter out.

Real studies come with axial series that carry no spinal canal labels; the synthetic ones exist so
that readers are exercised on them. Two cross-sections are painted per series, one through a
vertebral body and one through a disc, and each slice blends them by how much disc its height
cuts; the cross-sections are not graded and show no stenosis.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
from numpy.typing import NDArray

from lumbarssl.synthetic.anatomy import Anatomy, Centerline
from lumbarssl.synthetic.canvas import Canvas
from lumbarssl.synthetic.phantom import TISSUES, quadratic_log_gain, smooth_noise

__all__ = ["AxialPhantom"]

F32 = NDArray[np.float32]

# Correlation length (mm) of the bowel texture.
_TEXTURE_MM = 12.0
# The body outline is wider than deep by this factor.
_BODY_ASPECT = 1.35


class AxialPhantom:
    """Axial cross-sections of one patient, noise-free.

    Image rows run posterior and columns to the patient's left, so an axial row has the same
    antero-posterior position as the sagittal column of the same index.

    Args:
        anatomy: The patient.
        centerline: The spine in the sagittal pixel plane.
        size: Rows (= columns) of the image.
        spacing: Pixel spacing (mm).
        signal: Signal of each tissue.
        rng: Generator for textures and the bias field.
        bias_field_strength: Standard deviation of the smooth log-gain field.
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
    ) -> None:
        self.anatomy = anatomy
        self.centerline = centerline
        self.size = size
        self.spacing = spacing
        self._signal = {name: signal[name] for name in TISSUES}
        self._reference = 0.5 * (anatomy.lumbar_discs[0].center + anatomy.lumbar_discs[-1].center)
        self._margin_x = float(centerline.to_image(self._reference, 0.0)[0])
        texture = smooth_noise(rng, size, spacing, _TEXTURE_MM)
        gain = np.exp(quadratic_log_gain(rng, size, bias_field_strength))
        lumbar = [v for v in anatomy.vertebrae if v.name.startswith("L")]
        self._depth = float(np.mean([v.depth for v in lumbar]))
        self._width = float(np.mean([v.canal_width for v in lumbar]))
        canvas = self._canvas()
        self._paint_surroundings(canvas, texture)
        surroundings = canvas.image.copy()
        self._paint_spine(canvas, disc=False)
        self._body = canvas.image * gain
        canvas.image = surroundings
        self._paint_spine(canvas, disc=True)
        self._disc = canvas.image * gain

    def slice(self, row_mm: float, overlay: Callable[[F32, float], F32] | None = None) -> F32:
        """Noise-free cross-section at the height of sagittal row ``row_mm``, shape ``(H, W)``.

        ``overlay(image, s_row)``, if given, paints on the cross-section (a fresh array, in the
        axial frame of :attr:`frame`) before it follows the lordosis; ``s_row`` is the spine
        position of the slice.
        """
        s_row, x_row, _, _ = (float(v[0]) for v in self.centerline.rows(np.asarray([row_mm])))
        in_disc = 0.0
        for d in self.anatomy.discs:
            half = 0.5 * d.height
            overlap = (half + 1.0 - abs(s_row - d.center)) / 2.0
            in_disc = max(in_disc, min(max(overlap, 0.0), 1.0))
        image = (1.0 - in_disc) * self._body + in_disc * self._disc
        if overlay is not None:
            image = overlay(image.astype(np.float32), s_row)
        # Follow the lordosis: the spine's front-back position changes with height.
        shift = (x_row - self._margin_x) / self.spacing
        return _shift_rows(image.astype(np.float32), round(shift))

    @property
    def frame(self) -> tuple[F32, F32]:
        """Axial-frame ``(s, t)`` (mm) of every pixel before the lordosis shift, each ``(H, W)``.

        ``s`` runs front to back from the back of the disc, ``t`` laterally (+ = patient's left).
        """
        coords = np.arange(self.size, dtype=np.float32) * np.float32(self.spacing)
        s = np.repeat((coords - np.float32(self._margin_x))[:, None], self.size, axis=1)
        t = np.repeat((coords - np.float32(0.5 * self.size * self.spacing))[None, :], self.size, 0)
        return s, t

    def _canvas(self) -> Canvas:
        """A canvas whose frame is ``s`` = antero-posterior (rows), ``t`` = lateral (columns)."""
        fov = self.size * self.spacing
        rows = np.arange(-2.0 * fov, 2.0 * fov, 0.5)
        straight = Centerline(
            s=rows,
            x=np.full_like(rows, 0.5 * fov),
            y=rows + self._margin_x,
            sin=np.zeros_like(rows),
            cos=np.ones_like(rows),
        )
        return Canvas(straight, self.size, self.spacing)

    def _paint_surroundings(self, c: Canvas, texture: F32) -> None:
        """Body outline, abdomen and muscles: the same at body and disc heights."""
        a, sig = self.anatomy, self._signal
        depth, wall = self._depth, 1.0 + self._width + a.epidural_depth
        front = -depth - a.abdomen_depth
        back = wall + a.back_muscle_depth + a.posterior_fat
        centre, radius = 0.5 * (front + back), 0.5 * (back - front)
        hb, hs = a.body_half_width, a.sac_half_width
        c.ellipse(centre, 0.0, radius, _BODY_ASPECT * radius, sig["fat"])
        abdomen = np.maximum(sig["abdomen"] * (1.0 + 0.35 * texture), 0.0)
        c.ellipse(centre - 10.0, 0.0, radius - 18.0, _BODY_ASPECT * radius - 18.0, abdomen)
        muscle_depth = a.back_muscle_depth
        for side in (-1.0, 1.0):
            c.ellipse(
                wall + 0.45 * muscle_depth,
                side * (hs + 20.0),
                0.5 * muscle_depth,
                22.0,
                sig["muscle"],
            )
            c.ellipse(-0.55 * depth, side * (hb + 12.0), 16.0, 12.0, sig["muscle"])

    def _paint_spine(self, c: Canvas, *, disc: bool) -> None:
        """The vertebral body (or disc), the canal and the posterior elements."""
        a, sig = self.anatomy, self._signal
        depth, width = self._depth, self._width
        wall = 1.0 + width + a.epidural_depth
        hb, hs = a.body_half_width, a.sac_half_width
        c.ellipse(-0.5 * depth, 0.0, 0.5 * depth, hb, sig["annulus" if disc else "cortex"])
        if disc:
            c.ellipse(-0.5 * depth, 0.0, 0.32 * depth, 0.6 * hb, sig["nucleus"])
        else:
            c.ellipse(-0.5 * depth, 0.0, 0.5 * depth - 1.2, hb - 1.2, sig["marrow"])
        c.ellipse(
            1.0 + 0.5 * width, 0.0, 0.5 * width + a.epidural_depth, hs + 2.0, sig["epidural_fat"]
        )
        bone = (sig["cortex"], (1.2, sig["marrow"]))
        if disc:
            for side in (-1.0, 1.0):
                c.ellipse(wall + 3.0, side * (hs + 6.0), 7.0, 6.0, sig["cortex"])
                c.ellipse(wall + 3.0, side * (hs + 6.0), 5.8, 4.8, sig["marrow"])
            c.box(wall - 3.0, wall + 1.0, -hs, hs, 1.0, sig["ligament"])
        else:
            for lo, hi in ((hs, hs + 6.0), (-hs - 6.0, -hs)):
                c.box(-3.0, wall + 2.0, lo, hi, 2.0, bone[0], core=bone[1])
            c.box(wall - 1.0, wall + 5.0, -hs - 6.0, hs + 6.0, 2.0, bone[0], core=bone[1])
            c.box(wall + 2.0, wall + a.spinous_length, -3.5, 3.5, 2.0, bone[0], core=bone[1])
        c.ellipse(1.0 + 0.5 * width, 0.0, 0.5 * width, hs, sig["csf"])
        for k, lateral in enumerate((-0.5, -0.2, 0.2, 0.5)):
            at = 1.0 + width * (0.65 + 0.05 * (k % 2))
            c.ellipse(at, lateral * hs, 1.0, 1.0, sig["root"], opacity=0.8)


def _shift_rows(image: F32, shift: int) -> F32:
    """Move the image content ``shift`` rows down, filling with the nearest edge row."""
    if shift == 0:
        return image
    out = np.empty_like(image)
    if shift > 0:
        out[shift:] = image[:-shift]
        out[:shift] = image[:1]
    else:
        out[:shift] = image[-shift:]
        out[shift:] = image[-1:]
    return out
