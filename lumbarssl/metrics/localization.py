r"""Disc-centre localisation error in pixels and millimetres (paper Sec. 4.5, 5.3).

The paper reports "a RMSE of 10.18 pixels" without a formula. Here RMSE is the root of the
mean, over discs, of the squared Euclidean distance between predicted and true centres:

.. math::

    \mathrm{RMSE} = \sqrt{\frac{1}{N} \sum_{i=1}^{N}
        \left[(\hat x_i - x_i)^2 + (\hat y_i - y_i)^2\right]}

It is :math:`\sqrt{2}` times the root-mean-square error taken over the ``2N`` separate
coordinates, which is another common reading of "RMSE" for 2-D points.

Coordinates are ``(x, y)`` = (column, row) in pixels of the *original* image, so a model that
predicts normalised coordinates must be scaled back first. Pixel spacing follows DICOM
``PixelSpacing``: ``(row spacing, column spacing)`` in mm, i.e. the size of a pixel along ``y``
then along ``x``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # only in annotations, so the API docs show `npt.ArrayLike` unexpanded
    import numpy.typing as npt

__all__ = [
    "LocalizationSummary",
    "localization_errors",
    "localization_rmse",
    "localization_summary",
]


def localization_errors(
    pred_xy: npt.ArrayLike,
    true_xy: npt.ArrayLike,
    *,
    pixel_spacing: npt.ArrayLike | None = None,
) -> npt.NDArray[np.float64]:
    """Euclidean distance between predicted and true disc centres, one per disc.

    Args:
        pred_xy: Predicted ``(x, y)`` in original-image pixels, shape ``(N, 2)``.
        true_xy: True ``(x, y)`` in original-image pixels, shape ``(N, 2)``.
        pixel_spacing: Optional ``(row, col)`` spacing in mm, shape ``(2,)`` for all discs or
            ``(N, 2)`` per disc; when given the distances are in mm.

    Returns:
        Distances of shape ``(N,)``, in pixels, or mm with ``pixel_spacing``.

    Raises:
        ValueError: On mismatched shapes, non-finite coordinates, or non-positive spacing.
    """
    pred = np.asarray(pred_xy, dtype=np.float64)
    true = np.asarray(true_xy, dtype=np.float64)
    if pred.ndim != 2 or pred.shape[1] != 2:
        raise ValueError(f"expected pred_xy of shape (N, 2), got {pred.shape}")
    if true.shape != pred.shape:
        raise ValueError(f"expected true_xy of shape {pred.shape}, got {true.shape}")
    if not (np.isfinite(pred).all() and np.isfinite(true).all()):
        raise ValueError("coordinates must be finite")
    delta = pred - true
    if pixel_spacing is not None:
        spacing = np.asarray(pixel_spacing, dtype=np.float64)
        if spacing.shape not in ((2,), pred.shape):
            raise ValueError(
                f"expected pixel_spacing of shape (2,) or {pred.shape} (row, col mm), "
                f"got {spacing.shape}"
            )
        if not (np.isfinite(spacing).all() and (spacing > 0).all()):
            raise ValueError("pixel_spacing must be finite and positive")
        # (x, y) = (column, row): x scales by the column spacing, y by the row spacing.
        delta = delta * spacing[..., ::-1]
    errors: npt.NDArray[np.float64] = np.hypot(delta[:, 0], delta[:, 1])
    return errors


def localization_rmse(
    pred_xy: npt.ArrayLike,
    true_xy: npt.ArrayLike,
    *,
    pixel_spacing: npt.ArrayLike | None = None,
) -> float:
    """Root-mean-square Euclidean error of disc centres.

    The paper reports 10.18 px for its localizer (Sec. 5.3).

    Args:
        pred_xy: Predicted ``(x, y)`` in original-image pixels, shape ``(N, 2)``.
        true_xy: True ``(x, y)`` in original-image pixels, shape ``(N, 2)``.
        pixel_spacing: Optional ``(row, col)`` spacing in mm, shape ``(2,)`` or ``(N, 2)``.

    Returns:
        ``sqrt(mean_i ||pred_i - true_i||^2)``, in pixels, or mm with ``pixel_spacing``.

    Raises:
        ValueError: As :func:`localization_errors`, or when ``N = 0``.
    """
    errors = localization_errors(pred_xy, true_xy, pixel_spacing=pixel_spacing)
    if errors.size == 0:
        raise ValueError("no discs to evaluate: pred_xy and true_xy are empty")
    return float(np.sqrt(np.mean(errors**2)))


@dataclass(frozen=True)
class LocalizationSummary:
    """Localisation errors of a set of discs, overall and per level.

    Attributes:
        n: Number of discs.
        rmse_px: Root-mean-square Euclidean error in pixels.
        rmse_mm: The same in millimetres (``nan`` without pixel spacing).
        within_px: Share of discs with an error of at most ``px_threshold`` pixels.
        within_mm: Share with an error of at most ``mm_threshold`` mm (``nan`` without spacing).
        px_threshold: The pixel threshold (5 by default).
        mm_threshold: The millimetre threshold (3 by default).
        per_level: The same summary for each level, in first-seen order (empty if no levels
            were given, and empty in the per-level summaries themselves).
    """

    n: int
    rmse_px: float
    rmse_mm: float
    within_px: float
    within_mm: float
    px_threshold: float
    mm_threshold: float
    per_level: dict[str, LocalizationSummary] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        """JSON-compatible dictionary (per-level summaries nested)."""
        out: dict[str, object] = {
            "n": self.n,
            "rmse_px": self.rmse_px,
            "rmse_mm": self.rmse_mm,
            f"within_{self.px_threshold:g}px": self.within_px,
            f"within_{self.mm_threshold:g}mm": self.within_mm,
        }
        if self.per_level:
            out["per_level"] = {k: v.to_dict() for k, v in self.per_level.items()}
        return out


def localization_summary(
    pred_xy: npt.ArrayLike,
    true_xy: npt.ArrayLike,
    *,
    pixel_spacing: npt.ArrayLike | None = None,
    levels: Sequence[str] | None = None,
    px_threshold: float = 5.0,
    mm_threshold: float = 3.0,
) -> LocalizationSummary:
    """RMSE in pixels and mm and the shares within ``px_threshold`` px / ``mm_threshold`` mm.

    Args:
        pred_xy: Predicted ``(x, y)`` in original-image pixels, shape ``(N, 2)``.
        true_xy: True ``(x, y)``, shape ``(N, 2)``.
        pixel_spacing: Optional ``(row, col)`` spacing in mm, shape ``(2,)`` or ``(N, 2)``.
        levels: Optional level name of each disc, length ``N``, for the per-level summaries.
        px_threshold: Pixel radius of the "within" share.
        mm_threshold: Millimetre radius of the "within" share.

    Returns:
        The summary.

    Raises:
        ValueError: As :func:`localization_errors`, when ``N = 0``, or when ``levels`` does not
            have ``N`` entries.
    """
    px = localization_errors(pred_xy, true_xy)
    if px.size == 0:
        raise ValueError("no discs to evaluate: pred_xy and true_xy are empty")
    mm = (
        localization_errors(pred_xy, true_xy, pixel_spacing=pixel_spacing)
        if pixel_spacing is not None
        else np.full_like(px, np.nan)
    )
    per_level: dict[str, LocalizationSummary] = {}
    if levels is not None:
        names = list(levels)
        if len(names) != px.size:
            raise ValueError(f"expected {px.size} levels, got {len(names)}")
        for name in dict.fromkeys(names):
            keep = np.array([n == name for n in names])
            per_level[name] = _summary(px[keep], mm[keep], px_threshold, mm_threshold)
    top = _summary(px, mm, px_threshold, mm_threshold)
    return replace(top, per_level=per_level)


def _summary(
    px: npt.NDArray[np.float64],
    mm: npt.NDArray[np.float64],
    px_threshold: float,
    mm_threshold: float,
) -> LocalizationSummary:
    has_mm = bool(np.isfinite(mm).all())
    return LocalizationSummary(
        n=int(px.size),
        rmse_px=float(np.sqrt(np.mean(px**2))),
        rmse_mm=float(np.sqrt(np.mean(mm**2))) if has_mm else math.nan,
        within_px=float(np.mean(px <= px_threshold)),
        within_mm=float(np.mean(mm <= mm_threshold)) if has_mm else math.nan,
        px_threshold=px_threshold,
        mm_threshold=mm_threshold,
    )
