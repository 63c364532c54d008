"""HeatmapLocalizer: Gaussian targets, sub-pixel decoding, loss, shapes, registry, refiner."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from lumbarssl.models import (
    HeatmapLocalizer,
    build_model,
    load_checkpoint,
    model_config,
    save_checkpoint,
)
from lumbarssl.models.heatmap import (
    PatchRefiner,
    crop_patches,
    decode_heatmaps,
    gaussian_heatmaps,
    heatmap_loss,
    heatmap_to_input,
    input_to_heatmap,
)
from lumbarssl.pipeline.auto_train import train_patch_refiner


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


# --- local refinement ---------------------------------------------------------------------


def test_crop_patches_takes_the_pixels_around_the_rounded_point_zero_outside() -> None:
    h, w = 12, 16
    rows = torch.arange(h, dtype=torch.float32)[:, None]
    cols = torch.arange(w, dtype=torch.float32)[None, :]
    stack = (100 * rows + cols + 1).expand(2, 1, h, w).clone()  # value = 100 r + c + 1
    stack[1] *= -1
    xy = torch.tensor([[[10.4, 5.6]], [[0.2, 11.0]]])
    patches, origin = crop_patches(stack, xy, 4)
    assert patches.shape == (2, 1, 1, 4, 4)
    assert origin.tolist() == [[[8, 4]], [[-2, 9]]]
    # Stack 0: rows 4..7, columns 8..11, all inside.
    assert patches[0, 0, 0, 0].tolist() == [409.0, 410.0, 411.0, 412.0]
    assert patches[0, 0, 0, 3, 3].item() == 712.0
    # Stack 1: columns -2, -1 and row 12 are outside the image: zero there.
    assert patches[1, 0, 0, 0].tolist() == [0.0, 0.0, -901.0, -902.0]
    assert patches[1, 0, 0, 3].tolist() == [0.0, 0.0, 0.0, 0.0]


def _blobs(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` 3-channel images holding one Gaussian blob each, at a random sub-pixel point."""
    generator = torch.Generator().manual_seed(seed)
    points = 8 + torch.rand(n, 1, 2, generator=generator) * (size - 16)
    blob = gaussian_heatmaps(points, (size, size), sigma=2.5)  # (n, 1, size, size)
    noise = 0.05 * torch.rand(n, 3, size, size, generator=generator)
    return (blob.expand(n, 3, size, size) * 0.9 + noise).clamp(0, 1), points


@pytest.fixture(scope="module")
def blob_refiner() -> PatchRefiner:
    images, points = _blobs(96, 48, seed=0)
    stacks = (images * 255).round().to(torch.uint8)
    return train_patch_refiner(
        stacks, points, epochs=12, batch_size=32, lr=5e-3, patch=16, width=12, max_offset=4.0
    )


def test_trained_refiner_recovers_planted_offsets_to_subpixel_accuracy(
    blob_refiner: PatchRefiner,
) -> None:
    images, points = _blobs(16, 48, seed=1)  # unseen blobs
    offset = (torch.rand(16, 1, 2, generator=torch.Generator().manual_seed(2)) - 0.5) * 6
    refined = blob_refiner.refine(images, points + offset)  # coarse error up to 3 px per axis
    error = (refined - points).norm(dim=-1)
    coarse = offset.norm(dim=-1)
    assert float(error.pow(2).mean().sqrt()) < 0.5 < float(coarse.pow(2).mean().sqrt())


def test_localizer_with_refiner_is_never_worse_than_its_coarse_peak(
    blob_refiner: PatchRefiner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Coarse maps planted 2-3 px off each blob: the refined points are closer, every one."""
    images, points = _blobs(6, 48, seed=3)
    model = HeatmapLocalizer(in_chans=3, num_levels=1, decoder_dim=8, refine_patch=16)
    model.attach_refiner(blob_refiner)
    model.eval()
    planted = points + torch.tensor([2.5, -2.0])
    logits = torch.log(gaussian_heatmaps(input_to_heatmap(planted, 4), (12, 12), 1.0) + 1e-30)
    monkeypatch.setattr(model, "forward", lambda x: logits)
    small = torch.nn.functional.interpolate(images, size=(48, 48))  # same size: no rescale
    coarse, _ = model.predict(small)
    refined, _ = model.predict(small, stack=images)
    coarse_error = (coarse - points).norm(dim=-1)
    refined_error = (refined - points).norm(dim=-1)
    assert torch.allclose(coarse, planted, atol=1e-3)
    assert bool((refined_error < coarse_error).all())
    assert float(refined_error.max()) < 1.0


def test_refiner_is_saved_with_the_localizer_and_old_configs_have_none(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = HeatmapLocalizer(decoder_dim=8, refine_patch=16, refine_width=4, refine_steps=3)
    model.eval()
    path = save_checkpoint(tmp_path / "h.pt", model, metadata={"data_source": "synthetic"})
    loaded, _ = load_checkpoint(path)
    assert isinstance(loaded, HeatmapLocalizer)
    assert loaded.refiner is not None
    assert (loaded.refiner.patch, loaded.refiner.width, loaded.refine_steps) == (16, 4, 3)
    x, stack = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 128, 128)
    assert torch.equal(loaded.predict(x, stack=stack)[0], model.predict(x, stack=stack)[0])
    old = {"architecture": "heatmap_localizer", "in_chans": 3, "num_levels": 5, "decoder_dim": 8}
    rebuilt = build_model(old)
    assert isinstance(rebuilt, HeatmapLocalizer)
    assert rebuilt.refiner is None
    rebuilt.eval()
    assert torch.equal(rebuilt.predict(x, stack=stack)[0], rebuilt.predict(x)[0])
