from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy import stats
from torch import Tensor
from torchvision import transforms as v1
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from lumbarssl.data.batch_augment import (
    CROP_RATIO,
    AugmentParams,
    BatchAugment,
    augment_batch,
    draw_augment_params,
    identity_params,
    resize_normalize,
)
from lumbarssl.data.datasets import DiscDatasetConfig

PAPER = DiscDatasetConfig()
ROI = (96, 96)
# float32 grid coordinates in [-1, 1] resolve a 96-pixel axis to ~3e-6 pixel: a view equals
# its source to this much of the [0, 1] range (1/1000 of a grey level).
GRID_ATOL = 5e-6


def _rois(n: int, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *ROI), dtype=torch.uint8, generator=g)


def _smooth(n: int) -> Tensor:
    """MRI-like smooth ROIs (no energy near the Nyquist frequency), each different."""
    yy, xx = torch.meshgrid(torch.arange(96.0), torch.arange(96.0), indexing="ij")
    images = [
        127 + 90 * torch.sin(xx / (6 + k) + k) * torch.cos(yy / (5 + k)) + 0.3 * (xx - yy)
        for k in range(n)
    ]
    return torch.stack(images).round().clamp(0, 255).to(torch.uint8)


def _with(
    params: AugmentParams, **changes: float | tuple[int, int, int, int] | bool
) -> AugmentParams:
    values: dict[str, Tensor] = {}
    for name, value in changes.items():
        old: Tensor = getattr(params, name)
        values[name] = torch.tensor(value, dtype=old.dtype).expand_as(old).clone()
    return replace(params, **values)


def _plain(rois: Tensor) -> Tensor:
    return rois.float() / 255


# --- the parameters follow the per-sample path's distributions -------------------------------


def _torchvision_draws(n: int, config: DiscDatasetConfig) -> dict[str, np.ndarray]:
    """Parameters from torchvision's own samplers, as DiscROIDataset's transforms draw them."""
    torch.manual_seed(1234)
    image = torch.zeros(1, *ROI)
    degrees = [-config.rotation_degrees, config.rotation_degrees]
    b = (1 - config.brightness, 1 + config.brightness)
    c = (1 - config.contrast, 1 + config.contrast)
    draws: dict[str, list[float]] = {
        k: [] for k in ("angle", "flip", "b", "c", "cfirst", "top", "left", "h", "w")
    }
    for _ in range(n):
        draws["angle"].append(v1.RandomRotation.get_params(degrees))
        fn_idx, bf, cf, _, _ = v1.ColorJitter.get_params(b, c, None, None)
        order = fn_idx.tolist()
        draws["cfirst"].append(float(order.index(1) < order.index(0)))
        draws["b"].append(float(bf))
        draws["c"].append(float(cf))
        draws["flip"].append(float(torch.rand(1) < config.hflip_p))  # v2.RandomHorizontalFlip
        top, left, h, w = v1.RandomResizedCrop.get_params(
            image, list(config.crop_scale), list(CROP_RATIO)
        )
        for key, value in (("top", top), ("left", left), ("h", h), ("w", w)):
            draws[key].append(value)
    return {k: np.asarray(v, dtype=np.float64) for k, v in draws.items()}


def _batched_draws(n: int, config: DiscDatasetConfig) -> dict[str, np.ndarray]:
    params = draw_augment_params(5, 3, torch.arange(n), replace(config, n_views=1), roi_size=ROI)
    top, left, h, w = params.box[:, 0].unbind(-1)
    columns = {
        "angle": params.angle,
        "flip": params.flip,
        "b": params.brightness,
        "c": params.contrast,
        "cfirst": params.contrast_first,
    }
    out = {k: v[:, 0].double().numpy() for k, v in columns.items()}
    out.update(
        {k: v.double().numpy() for k, v in (("top", top), ("left", left), ("h", h), ("w", w))}
    )
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


@pytest.mark.parametrize("config", [PAPER, replace(PAPER, crop_scale=(0.3, 0.9), hflip_p=0.2)])
def test_parameters_follow_the_per_sample_distributions(config: DiscDatasetConfig) -> None:
    n = 3000
    ours, theirs = _batched_draws(n, config), _torchvision_draws(n, config)
    for key in ("angle", "b", "c", "top", "left", "h", "w"):
        # Two-sample Kolmogorov-Smirnov (conservative for the integer crop box).
        assert stats.ks_2samp(ours[key], theirs[key]).pvalue > 1e-3, key
        assert ours[key].min() >= theirs[key].min() - 3, key  # same support
        assert ours[key].max() <= theirs[key].max() + 3, key
    for key in ("flip", "cfirst"):  # Bernoulli: two-proportion z-test
        p = (ours[key].mean() + theirs[key].mean()) / 2
        z = (ours[key].mean() - theirs[key].mean()) / math.sqrt(2 * p * (1 - p) / n)
        assert abs(z) < 4, key
    # Ranges of the paper (Sec. 4.2) are respected exactly.
    assert np.abs(ours["angle"]).max() <= config.rotation_degrees
    area = ours["h"] * ours["w"] / (ROI[0] * ROI[1])
    fallback = (ours["h"] == ROI[0]) & (ours["w"] == ROI[1])
    assert (area[~fallback] >= config.crop_scale[0] * 0.97).all()
    assert (ours["top"] + ours["h"] <= ROI[0]).all()
    assert (ours["left"] + ours["w"] <= ROI[1]).all()
    # Parameters of one view are independent of each other.
    table = np.stack([ours[k] for k in ("angle", "b", "c", "h", "flip")])
    corr = np.corrcoef(table) - np.eye(5)
    assert np.abs(corr).max() < 0.08


def test_views_of_one_disc_have_different_parameters() -> None:
    params = draw_augment_params(0, 0, torch.arange(200), PAPER, roi_size=ROI)
    assert params.shape == (200, 3)
    assert float((params.angle[:, 0] == params.angle[:, 1]).double().mean()) == 0.0
    assert abs(float(torch.corrcoef(params.angle.T)[0, 1])) < 0.25


# --- identity and hand-computed cases ---------------------------------------------------------


def test_identity_parameters_at_the_roi_size_return_the_normalised_roi() -> None:
    rois = _rois(5)
    out = augment_batch(rois, identity_params(5, 2, ROI), input_size=96, mean=0.25, std=0.5)
    assert out.shape == (5, 2, 1, 96, 96)
    assert out.dtype == torch.float32
    want = ((_plain(rois) - 0.25) / 0.5)[:, None, None].expand_as(out)
    torch.testing.assert_close(out, want, rtol=0, atol=GRID_ATOL / 0.5)


def test_identity_parameters_when_upsampling_match_torchvision_resize() -> None:
    rois = _rois(4)
    out = augment_batch(rois, identity_params(4, 1, ROI), input_size=224, mean=0.0, std=1.0)
    want = v2.Resize((224, 224), antialias=True)(_plain(rois).unsqueeze(1))
    # Stated tolerance: 2e-5 of the [0, 1] range on random noise, the worst case.
    torch.testing.assert_close(out[:, 0], want, rtol=0, atol=2e-5)


def test_identity_parameters_when_downsampling_stay_close_to_the_antialiased_resize() -> None:
    rois = _smooth(4)
    out = augment_batch(rois, identity_params(4, 1, ROI), input_size=64, mean=0.0, std=1.0)
    want = v2.Resize((64, 64), antialias=True)(_plain(rois).unsqueeze(1))
    # 2x2 supersampling stands in for the antialiasing filter: stated tolerance on smooth
    # images 1e-2 at worst, 2e-3 on average, of the [0, 1] range.
    diff = (out[:, 0] - want).abs()
    assert float(diff.max()) < 1e-2
    assert float(diff.mean()) < 2e-3
    # On noise, the worst case, plain bilinear sampling aliases several times more.
    noise = _rois(4)
    out = augment_batch(noise, identity_params(4, 1, ROI), input_size=64, mean=0.0, std=1.0)
    want = v2.Resize((64, 64), antialias=True)(_plain(noise).unsqueeze(1))
    plain = torch.nn.functional.interpolate(
        _plain(noise).unsqueeze(1), size=(64, 64), mode="bilinear", align_corners=False
    )
    error = float((out[:, 0] - want).abs().mean())
    assert error < 0.03
    assert float((plain - want).abs().mean()) > 2 * error


def test_quarter_turn_of_an_asymmetric_pattern() -> None:
    roi = torch.zeros(1, *ROI, dtype=torch.uint8)
    roi[0, 10:20, 5:60] = 200  # a horizontal bar in the upper left
    roi[0, 70:90, 80:85] = 90  # a vertical bar lower right
    params = _with(identity_params(1, 1, ROI), angle=90.0)
    out = augment_batch(roi, params, input_size=96, mean=0.0, std=1.0)[0, 0, 0]
    # torchvision: a positive angle turns counter-clockwise, i.e. torch.rot90 with k=1.
    want = torch.rot90(_plain(roi)[0], 1, (0, 1))
    torch.testing.assert_close(out, want, rtol=0, atol=GRID_ATOL)
    assert float(out[36:86, 10:20].mean()) == pytest.approx(200 / 255, abs=1e-5)
    peer = TF.rotate(_plain(roi), 90.0, interpolation=v2.InterpolationMode.BILINEAR)
    torch.testing.assert_close(out, peer[0], rtol=0, atol=GRID_ATOL)


def test_flip_half_turn_and_crop_by_hand() -> None:
    rois = _rois(2)
    plain = _plain(rois)
    flipped = augment_batch(
        rois, _with(identity_params(2, 1, ROI), flip=True), input_size=96, mean=0.0, std=1.0
    )
    torch.testing.assert_close(flipped[:, 0, 0], plain.flip(-1), rtol=0, atol=GRID_ATOL)
    half = augment_batch(
        rois, _with(identity_params(2, 1, ROI), angle=180.0), input_size=96, mean=0.0, std=1.0
    )
    torch.testing.assert_close(half[:, 0, 0], plain.flip(-1, -2), rtol=0, atol=GRID_ATOL)
    # Rotation first, then the flip (DiscROIDataset's order): flip(rot90(x)).
    both = _with(identity_params(2, 1, ROI), angle=90.0, flip=True)
    out = augment_batch(rois, both, input_size=96, mean=0.0, std=1.0)
    want = torch.rot90(plain, 1, (-2, -1)).flip(-1)
    torch.testing.assert_close(out[:, 0, 0], want, rtol=0, atol=GRID_ATOL)
    # A 48 x 48 crop at (10, 20) output at 48 px is the plain slice.
    crop = _with(identity_params(2, 1, ROI), box=(10, 20, 48, 48))
    out = augment_batch(rois, crop, input_size=48, mean=0.0, std=1.0, supersample=1)
    torch.testing.assert_close(out[:, 0, 0], plain[:, 10:58, 20:68], rtol=0, atol=GRID_ATOL)


def test_small_rotation_matches_torchvision_rotate_inside_the_image() -> None:
    rois = _rois(3)
    out = augment_batch(
        rois, _with(identity_params(3, 1, ROI), angle=-11.0), input_size=96, mean=0.0, std=1.0
    )
    want = TF.rotate(_plain(rois).unsqueeze(1), -11.0, interpolation=v2.InterpolationMode.BILINEAR)
    # torchvision attenuates the one-pixel rim of the fill twice; compare inside it.
    torch.testing.assert_close(out[:, 0, :, 2:-2, 2:-2], want[..., 2:-2, 2:-2], rtol=0, atol=2e-5)


def test_brightness_and_contrast_by_hand() -> None:
    rois = _rois(2)
    plain = _plain(rois)
    params = _with(identity_params(2, 1, ROI), brightness=1.3)
    out = augment_batch(rois, params, input_size=96, mean=0.0, std=1.0)[:, 0, 0]
    torch.testing.assert_close(out, (plain * 1.3).clamp(0, 1), rtol=0, atol=GRID_ATOL)
    params = _with(identity_params(2, 1, ROI), contrast=0.7)
    out = augment_batch(rois, params, input_size=96, mean=0.0, std=1.0)[:, 0, 0]
    mean = plain.mean(dim=(-2, -1), keepdim=True)
    torch.testing.assert_close(out, 0.7 * plain + 0.3 * mean, rtol=0, atol=GRID_ATOL)
    # Order matters through the clamp: brightness then contrast, or the reverse.
    for contrast_first in (False, True):
        params = _with(
            identity_params(2, 1, ROI),
            brightness=1.4,
            contrast=1.5,
            contrast_first=contrast_first,
        )
        out = augment_batch(rois, params, input_size=96, mean=0.0, std=1.0)[:, 0, 0]
        x = plain.unsqueeze(1)
        if contrast_first:
            want = TF.adjust_brightness(TF.adjust_contrast(x, 1.5), 1.4)
        else:
            want = TF.adjust_contrast(TF.adjust_brightness(x, 1.4), 1.5)
        torch.testing.assert_close(out, want[:, 0], rtol=0, atol=1e-5)


def _per_sample(roi: Tensor, params: AugmentParams, v: int, size: int) -> Tensor:
    """DiscROIDataset's transform chain, run by torchvision with the given parameters."""
    x = _plain(roi).unsqueeze(0)  # (1, H, W)
    x = TF.rotate(x, float(params.angle[0, v]), interpolation=v2.InterpolationMode.BILINEAR)
    b, c = float(params.brightness[0, v]), float(params.contrast[0, v])
    if bool(params.contrast_first[0, v]):
        x = TF.adjust_brightness(TF.adjust_contrast(x, c), b)
    else:
        x = TF.adjust_contrast(TF.adjust_brightness(x, b), c)
    if bool(params.flip[0, v]):
        x = TF.horizontal_flip(x)
    top, left, h, w = params.box[0, v].tolist()
    out: Tensor = TF.resized_crop(x, top, left, h, w, [size, size], antialias=True)
    return out[0]


@pytest.mark.parametrize("size", [224, 64])
def test_random_views_agree_with_the_per_sample_chain_given_the_same_parameters(
    size: int,
) -> None:
    rois = _smooth(6)
    params = draw_augment_params(0, 4, torch.arange(6), PAPER, roi_size=ROI)
    out = augment_batch(rois, params, input_size=size, mean=0.0, std=1.0)
    for i in range(6):
        single = replace(
            params, **{k: getattr(params, k)[i : i + 1] for k in params.__dataclass_fields__}
        )
        for v in range(3):
            want = _per_sample(rois[i], single, v, size)
            diff = (out[i, v, 0] - want).abs()
            # One resampling instead of two, the contrast centre taken before the rotation:
            # stated tolerance 0.02 on average and 0.25 at worst (at the rotated corners).
            assert float(diff.mean()) < 0.02, (i, v)
            assert float(diff.quantile(0.99)) < 0.1, (i, v)


# --- reproducibility and independence of batch composition ------------------------------------


def test_same_seed_same_views_and_other_epochs_differ() -> None:
    rois, rows = _rois(8), torch.arange(100, 108)
    augment = BatchAugment(replace(PAPER, input_size=48), mean=0.3, std=0.2, seed=11)
    first = augment(rois, rows, epoch=2)
    assert first.shape == (8, 3, 1, 48, 48)
    again = BatchAugment(replace(PAPER, input_size=48), mean=0.3, std=0.2, seed=11)
    assert torch.equal(again(rois, rows, epoch=2), first)
    assert not torch.allclose(augment(rois, rows, epoch=3), first)
    other_seed = BatchAugment(replace(PAPER, input_size=48), mean=0.3, std=0.2, seed=12)
    assert not torch.allclose(other_seed(rois, rows, epoch=2), first)
    validation = BatchAugment(replace(PAPER, input_size=48), mean=0.3, std=0.2, seed=11, stream=1)
    assert not torch.allclose(validation(rois, rows, epoch=2), first)


def test_permuting_the_batch_permutes_the_views() -> None:
    rois, rows = _rois(9), torch.tensor([4, 8, 15, 16, 23, 42, 7, 1, 0])
    augment = BatchAugment(replace(PAPER, input_size=40), mean=0.3, std=0.2, seed=0)
    out = augment(rois, rows, epoch=5)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(
        augment(rois[perm], rows[perm], epoch=5), out[perm], rtol=0, atol=1e-6
    )
    # A sub-batch gives its samples' views unchanged.
    torch.testing.assert_close(augment(rois[2:5], rows[2:5], epoch=5), out[2:5], rtol=0, atol=1e-6)


def test_views_are_normalised_like_the_per_sample_path() -> None:
    rois = _rois(64)
    out = BatchAugment(replace(PAPER, input_size=32), mean=0.5, std=0.25, seed=0)(
        rois, torch.arange(64), epoch=0
    )
    assert torch.isfinite(out).all()
    # Values are (x - mean) / std of x in [0, 1].
    assert float(out.min()) >= (0 - 0.5) / 0.25 - 1e-5
    assert float(out.max()) <= (1 - 0.5) / 0.25 + 1e-5


def test_resize_normalize_matches_the_deterministic_per_sample_path() -> None:
    rois = _rois(3)
    stack = torch.stack([rois, rois.flip(-1)], dim=1)  # (B, S, H, W), multislice-like
    chain = v2.Compose([v2.Resize((64, 64), antialias=True), v2.Normalize([0.4], [0.3])])
    out = resize_normalize(rois, input_size=64, mean=0.4, std=0.3)
    assert out.shape == (3, 1, 64, 64)
    torch.testing.assert_close(out, chain(_plain(rois).unsqueeze(1)), rtol=0, atol=1e-6)
    multi = resize_normalize(stack, input_size=64, mean=0.4, std=0.3)
    assert multi.shape == (3, 2, 1, 64, 64)
    torch.testing.assert_close(multi[:, 0], out, rtol=0, atol=0)
    same = resize_normalize(rois, input_size=96, mean=0.0, std=1.0)
    torch.testing.assert_close(same[:, 0], _plain(rois), rtol=0, atol=0)


def test_bad_inputs_are_refused_with_their_shapes() -> None:
    params = identity_params(2, 1, ROI)
    with pytest.raises(ValueError, match=r"uint8 \(B, H, W\), got torch.float32"):
        augment_batch(torch.zeros(2, 96, 96), params, input_size=8, mean=0.0, std=1.0)
    with pytest.raises(ValueError, match="params are for 2 ROIs"):
        augment_batch(_rois(3), params, input_size=8, mean=0.0, std=1.0)
    with pytest.raises(ValueError, match="std must be > 0"):
        augment_batch(_rois(2), params, input_size=8, mean=0.0, std=0.0)
    with pytest.raises(ValueError, match="supersample must be >= 1, got 0"):
        augment_batch(_rois(2), params, input_size=8, mean=0.0, std=1.0, supersample=0)
    with pytest.raises(ValueError, match="std must be > 0"):
        BatchAugment(PAPER, mean=0.0, std=-1.0, seed=0)
    with pytest.raises(ValueError, match=r"uint8 \(\*, H, W\)"):
        resize_normalize(torch.zeros(3), input_size=8, mean=0.0, std=1.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_gives_the_cpu_parameters_and_views() -> None:
    rois, rows = _rois(16), torch.arange(16) * 7
    augment = BatchAugment(replace(PAPER, input_size=64), mean=0.3, std=0.2, seed=2)
    cpu_params = augment.params(rows, 1, ROI)
    cuda_params = augment.params(rows.cuda(), 1, ROI)
    assert torch.equal(cuda_params.box.cpu(), cpu_params.box)
    assert torch.equal(cuda_params.flip.cpu(), cpu_params.flip)
    torch.testing.assert_close(cuda_params.angle.cpu(), cpu_params.angle, rtol=0, atol=1e-12)
    cpu = augment(rois, rows, epoch=1)
    rois_cuda, rows_cuda = rois.cuda(), rows.cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # the step loop must never wait for the device
    try:
        cuda = augment(rois_cuda, rows_cuda, epoch=1)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=0, atol=1e-4)
