"""HeatmapLocalizer: Gaussian targets, sub-pixel decoding, loss, shapes, gradients, registry."""

from __future__ import annotations

import math

import pytest
import torch

from lumbarssl.models import HeatmapLocalizer, build_model, model_config
from lumbarssl.models.heatmap import (
    decode_heatmaps,
    gaussian_heatmaps,
    heatmap_loss,
    heatmap_to_input,
    input_to_heatmap,
)


def test_gaussian_target_matches_the_formula_at_hand_picked_cells() -> None:
    xy = torch.tensor([[[3.25, 1.5]]])
    maps = gaussian_heatmaps(xy, (4, 6), sigma=1.5)
    assert maps.shape == (1, 1, 4, 6)
    for row, col in ((0, 0), (1, 3), (2, 4), (3, 5)):
        expected = math.exp(-((col - 3.25) ** 2 + (row - 1.5) ** 2) / (2 * 1.5**2))
        assert float(maps[0, 0, row, col]) == pytest.approx(expected, rel=1e-6)
    assert float(maps.max()) < 1.0  # the peak is between cells


@pytest.mark.parametrize("point", [(10.37, 7.81), (3.5, 12.02), (20.91, 0.64)])
def test_quadratic_decoding_recovers_a_planted_subpixel_peak(point: tuple[float, float]) -> None:
    """A Gaussian placed at a non-integer position by hand: its log is quadratic, so exact."""
    h, w, sigma = 16, 24, 1.7
    rows = torch.arange(h, dtype=torch.float64)[:, None]
    cols = torch.arange(w, dtype=torch.float64)[None, :]
    heat = torch.exp(-((cols - point[0]) ** 2 + (rows - point[1]) ** 2) / (2 * sigma**2))
    logits = torch.log(heat.clamp_min(1e-300))[None, None]
    xy, confidence = decode_heatmaps(logits)
    if 1 <= round(point[1]) <= h - 2:
        assert xy[0, 0].tolist() == pytest.approx(list(point), abs=1e-4)
    else:  # the argmax is on the edge: no neighbour on one side, so only x is refined
        assert float(xy[0, 0, 0]) == pytest.approx(point[0], abs=1e-4)
        assert float(xy[0, 0, 1]) == round(point[1])
    assert 0.0 < float(confidence[0, 0]) <= 1.0


def test_softargmax_decoding_is_close_and_differentiable() -> None:
    point = (9.3, 6.6)
    target = gaussian_heatmaps(torch.tensor([[point]]), (14, 20), sigma=0.8)
    logits = torch.log(target.clamp_min(1e-30)).requires_grad_(True)
    xy, _ = decode_heatmaps(logits, method="softargmax", window=3)
    assert xy[0, 0].tolist() == pytest.approx(list(point), abs=0.02)
    torch.autograd.backward(xy.sum())
    assert logits.grad is not None
    assert torch.isfinite(logits.grad).all()


def test_coordinate_conversions_invert_each_other() -> None:
    xy = torch.tensor([[0.0, 0.0], [17.25, 3.5]])
    assert heatmap_to_input(input_to_heatmap(xy, 4), 4).tolist() == xy.tolist()
    # Cell 0 of a stride-4 map covers input pixels 0..3, centred at 1.5.
    assert heatmap_to_input(torch.zeros(2), 4).tolist() == [1.5, 1.5]


def test_loss_is_smallest_at_the_target_and_respects_the_mask() -> None:
    target = gaussian_heatmaps(torch.tensor([[[5.0, 4.0], [2.0, 2.0]]]), (8, 10), sigma=1.0)
    at_target = heatmap_loss(torch.log(target + 1e-12), target)
    shifted = heatmap_loss(torch.log(target.roll(2, dims=-1) + 1e-12), target)
    assert float(at_target) < float(shifted)
    # A masked level does not count, whatever its logits.
    mask = torch.tensor([[True, False]])
    wild = torch.log(target + 1e-12)
    wild[0, 1] = torch.randn(8, 10) * 50
    only_first = heatmap_loss(torch.log(target[:, :1] + 1e-12), target[:, :1])
    assert float(heatmap_loss(wild, target, mask)) == pytest.approx(float(only_first), rel=1e-6)


def test_model_shapes_gradients_and_registry() -> None:
    torch.manual_seed(0)
    model = HeatmapLocalizer(in_chans=3, num_levels=5, decoder_dim=16)
    x = torch.randn(2, 3, 64, 96)
    logits = model(x)
    assert logits.shape == (2, 5, 16, 24)
    target = gaussian_heatmaps(torch.rand(2, 5, 2) * 10, (16, 24), sigma=1.5)
    torch.autograd.backward(heatmap_loss(logits, target))
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads if g is not None)
    model.eval()
    xy, confidence = model.predict(x)
    assert xy.shape == (2, 5, 2)
    assert confidence.shape == (2, 5)
    assert float(xy.min()) >= 0.0
    assert float(xy[..., 0].max()) < 96
    rebuilt = build_model(model_config(model))
    assert isinstance(rebuilt, HeatmapLocalizer)
    assert rebuilt.decoder_dim == 16
    with pytest.raises(ValueError, match=r"expected x of shape \(B, 3, H, W\)"):
        model(torch.randn(1, 1, 64, 64))
