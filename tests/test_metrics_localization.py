from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from lumbarssl.metrics import localization_errors, localization_rmse, localization_summary

_COORDS = hnp.arrays(
    np.float64,
    st.tuples(st.integers(1, 20), st.just(2)),
    elements=st.floats(-500, 500),
)


def test_hand_computed_rmse_in_pixels() -> None:
    pred = [[3.0, 4.0], [10.0, 10.0], [0.0, 0.0]]
    true = [[0.0, 0.0], [10.0, 10.0], [6.0, 8.0]]
    np.testing.assert_allclose(localization_errors(pred, true), [5.0, 0.0, 10.0])
    assert localization_rmse(pred, true) == pytest.approx(math.sqrt((25 + 0 + 100) / 3))


def test_spacing_is_row_then_column() -> None:
    # DICOM PixelSpacing = (row spacing, column spacing): y steps by the first, x by the second.
    pred = [[1.0, 0.0], [0.0, 1.0]]
    true = [[0.0, 0.0], [0.0, 0.0]]
    np.testing.assert_allclose(localization_errors(pred, true, pixel_spacing=[0.5, 2.0]), [2, 0.5])
    per_disc = [[1.0, 1.0], [3.0, 3.0]]
    np.testing.assert_allclose(localization_errors(pred, true, pixel_spacing=per_disc), [1, 3])
    assert localization_rmse(pred, true, pixel_spacing=per_disc) == pytest.approx(math.sqrt(5))


@given(pred=_COORDS, shift=st.floats(-100, 100), spacing=st.floats(0.1, 3.0))
def test_rmse_properties(pred: np.ndarray, shift: float, spacing: float) -> None:
    rng = np.random.default_rng(0)
    true = pred + rng.normal(size=pred.shape)
    errors = localization_errors(pred, true)
    rmse = localization_rmse(pred, true)
    # RMSE is at least the mean error and at most the largest one.
    assert errors.mean() - 1e-9 <= rmse <= errors.max() + 1e-9
    # Invariant to a common translation, scales with isotropic spacing.
    assert localization_rmse(pred + shift, true + shift) == pytest.approx(rmse, abs=1e-6)
    iso = localization_rmse(pred, true, pixel_spacing=[spacing, spacing])
    assert iso == pytest.approx(spacing * rmse, rel=1e-9, abs=1e-12)
    assert localization_rmse(pred, pred) == 0.0


def test_accepts_tensors() -> None:
    pred = torch.tensor([[3.0, 4.0]])
    assert localization_rmse(pred, torch.zeros(1, 2)) == pytest.approx(5.0)


def test_localization_validates() -> None:
    with pytest.raises(ValueError, match=r"expected pred_xy of shape \(N, 2\), got \(3,\)"):
        localization_rmse([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"expected true_xy of shape \(1, 2\), got \(2, 2\)"):
        localization_rmse([[0.0, 0.0]], [[0.0, 0.0], [1.0, 1.0]])
    with pytest.raises(ValueError, match="finite"):
        localization_rmse([[math.nan, 0.0]], [[0.0, 0.0]])
    with pytest.raises(ValueError, match="positive"):
        localization_rmse([[0.0, 0.0]], [[0.0, 0.0]], pixel_spacing=[0.0, 1.0])
    with pytest.raises(ValueError, match=r"pixel_spacing of shape \(2,\) or \(1, 2\)"):
        localization_rmse([[0.0, 0.0]], [[0.0, 0.0]], pixel_spacing=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="empty"):
        localization_rmse(np.zeros((0, 2)), np.zeros((0, 2)))


def test_localization_summary_by_hand() -> None:
    """Errors 3, 4 and 6 px (3-4-5 triangle and axis moves) at 0.5 x 0.8 mm pixels."""
    pred = [[3.0, 0.0], [10.0, 14.0], [0.0, 6.0]]
    true = [[0.0, 0.0], [10.0, 10.0], [0.0, 0.0]]
    summary = localization_summary(
        pred, true, pixel_spacing=(0.5, 0.8), levels=["L1/L2", "L4/L5", "L1/L2"]
    )
    assert summary.n == 3
    assert summary.rmse_px == pytest.approx(math.sqrt((9 + 16 + 36) / 3))
    # In mm: x moves scale by the column spacing 0.8, y moves by the row spacing 0.5.
    mm = [3 * 0.8, 4 * 0.5, 6 * 0.5]
    assert summary.rmse_mm == pytest.approx(math.sqrt(sum(v * v for v in mm) / 3))
    assert summary.within_px == pytest.approx(2 / 3)  # 3 and 4 px are within 5 px
    assert summary.within_mm == pytest.approx(1.0)  # 2.4, 2.0 and 3.0 mm: the bound counts
    assert list(summary.per_level) == ["L1/L2", "L4/L5"]
    assert summary.per_level["L4/L5"].rmse_px == pytest.approx(4.0)
    assert summary.per_level["L1/L2"].within_px == pytest.approx(0.5)
    assert summary.to_dict()["within_5px"] == pytest.approx(2 / 3)
    no_mm = localization_summary(pred, true)
    assert math.isnan(no_mm.rmse_mm)
    assert no_mm.per_level == {}
