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

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # only in annotations, so the API docs show `npt.ArrayLike` unexpanded
    import numpy.typing as npt

__all__ = ["localization_errors", "localization_rmse"]


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
