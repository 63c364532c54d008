"""The paper's disc-ROI augmentations for a whole batch at once, on any device (Sec. 4.2).

:class:`~lumbarssl.data.datasets.DiscROIDataset` augments one ROI at a time on the CPU:
rotation by up to +/-15 degrees, brightness and contrast jitter (in random order), a
horizontal flip, a random resized crop of 80-100 % of the area resized to the input size, and
normalisation. This module draws the same parameters from the same distributions and applies
them to a batch of uint8 ROIs (B, H, W) on the device they live on, each of the V views with
its own parameters:

* brightness and contrast are applied per view at ROI resolution (H x W, cheaper than S x S),
  as the per-sample path does before its crop;
* crop, flip, rotation and resize are composed into one sampling grid per view and applied
  with a single bilinear :func:`torch.nn.functional.grid_sample`: one resampling instead of
  two, and no intermediate image; the rotation's empty corners get the jittered black of
  the per-sample path.

Parameters come from :func:`~lumbarssl.data.keyed_random.keyed_uniforms`, a pure function of
``(seed, stream, epoch, cache row, view)``: a sample's views do not depend on its place in
the batch, on loader workers or on the device, and a resumed run draws exactly the views of
an uninterrupted one.

How the result differs from the per-sample path, for the same parameters (measured by the
tests: 0.008 of the [0, 1] range on average, 0.05 at the 99th percentile):

* one resampling instead of two (rotation at ROI resolution, then the crop's resize), so the
  views are slightly sharper; where the output is smaller than the ROI (input size below
  96 px) the view is supersampled and averaged instead of torchvision's antialiasing filter;
* the contrast jitter blends towards the mean of the unrotated ROI rather than of the
  rotated one (whose corners are black), and the jitter is applied before the rotation's
  interpolation rather than after it;
* torchvision's rotate attenuates the one-pixel rim of its fill twice; here once.

With identity parameters the output equals the per-sample path's resize of the ROI to
within 5e-6 of the [0, 1] range at the ROI's own size (float32 grid coordinates resolve a
96-pixel axis to ~3e-6 pixel) and 2e-5 when upsampling to 224; when downsampling to 64, to
2e-3 on average on smooth images (supersampling in place of the antialiasing filter).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from lumbarssl.data.keyed_random import keyed_uniforms
from lumbarssl.data.recipes import RoiAugmentation

__all__ = [
    "CROP_RATIO",
    "AugmentParams",
    "AugmentSpec",
    "BatchAugment",
    "augment_batch",
    "draw_augment_params",
    "identity_params",
    "resize_normalize",
]

#: Aspect-ratio range of the random resized crop: torchvision's default, which
#: :class:`~lumbarssl.data.datasets.DiscROIDataset` uses (the paper gives none).
CROP_RATIO: Final = (3.0 / 4.0, 4.0 / 3.0)
#: Attempts at a crop inside the image before the central fallback (torchvision's 10).
_CROP_ATTEMPTS: Final = 10
# Uniforms per view: four per crop attempt (area, log ratio, top, left), then the rest.
_ANGLE, _FLIP, _BRIGHTNESS, _CONTRAST, _ORDER = range(4 * _CROP_ATTEMPTS, 4 * _CROP_ATTEMPTS + 5)
_N_SLOTS: Final = 4 * _CROP_ATTEMPTS + 5
_UINT8_MAX: Final = 255.0
#: Bytes of sampling grid per chunk of views on the CPU (see :func:`augment_batch`).
_CPU_CHUNK_BYTES: Final = 4 * 2**20


class AugmentSpec(RoiAugmentation, Protocol):
    """The augmentation settings read here (paper Sec. 4.2, 4.3).

    Those of :class:`~lumbarssl.data.recipes.RoiAugmentation` plus the input side and the
    number of views; :class:`~lumbarssl.data.datasets.DiscDatasetConfig` provides them.
    """

    @property
    def input_size(self) -> int:
        """Side S of the network input."""

    @property
    def n_views(self) -> int:
        """Views V per disc."""


@dataclass(frozen=True)
class AugmentParams:
    """Random parameters of V views of B ROIs.

    Attributes:
        angle: float64 (B, V), rotation in degrees, counter-clockwise.
        flip: bool (B, V), horizontal flip (applied after the rotation, before the crop).
        box: int64 (B, V, 4), crop ``(top, left, height, width)`` in pixels of the ROI.
        brightness: float64 (B, V), brightness factor (1 = unchanged).
        contrast: float64 (B, V), contrast factor (1 = unchanged).
        contrast_first: bool (B, V), contrast jitter applied before brightness.
    """

    angle: Tensor
    flip: Tensor
    box: Tensor
    brightness: Tensor
    contrast: Tensor
    contrast_first: Tensor

    @property
    def shape(self) -> tuple[int, int]:
        """``(B, V)``."""
        return (int(self.angle.shape[0]), int(self.angle.shape[1]))


def _uniform(u: Tensor, low: float, high: float) -> Tensor:
    return low + (high - low) * u


def _crop_boxes(u: Tensor, height: int, width: int, scale: tuple[float, float]) -> Tensor:
    """The ``RandomResizedCrop`` box of each view, from (B, V, 4 * attempts) uniforms.

    All attempts are evaluated at once; the first one inside the image is kept, and the central
    fallback of torchvision where none is.
    """
    area = height * width
    attempts = u[..., : 4 * _CROP_ATTEMPTS].reshape(*u.shape[:-1], _CROP_ATTEMPTS, 4)
    target = area * _uniform(attempts[..., 0], *scale)
    log_ratio = _uniform(attempts[..., 1], math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]))
    ratio = torch.exp(log_ratio)
    w = torch.round(torch.sqrt(target * ratio))
    h = torch.round(torch.sqrt(target / ratio))
    valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    # randint(0, n) as floor(u * n): the same uniform integers.
    top = torch.floor(attempts[..., 2] * (height - h + 1))
    left = torch.floor(attempts[..., 3] * (width - w + 1))
    first = valid.to(torch.uint8).argmax(dim=-1, keepdim=True)  # 0 when none is valid

    def pick(values: Tensor) -> Tensor:
        return values.gather(-1, first).squeeze(-1)

    in_ratio = width / height
    if in_ratio < CROP_RATIO[0]:
        fw, fh = width, round(width / CROP_RATIO[0])
    elif in_ratio > CROP_RATIO[1]:
        fw, fh = round(height * CROP_RATIO[1]), height
    else:
        fw, fh = width, height
    # Python scalars, not a tensor built on the host: no host-to-device copy, no sync.
    fallback = ((height - fh) // 2, (width - fw) // 2, fh, fw)
    any_valid = valid.any(dim=-1)
    chosen = [
        torch.where(any_valid, pick(value), float(default))
        for value, default in zip((top, left, h, w), fallback, strict=True)
    ]
    return torch.stack(chosen, dim=-1).to(torch.int64)


def draw_augment_params(
    seed: int,
    epoch: int,
    indices: Tensor,
    spec: AugmentSpec,
    *,
    roi_size: tuple[int, int],
    stream: int = 0,
) -> AugmentParams:
    """Draw the views' parameters from the distributions of the per-sample path.

    The same distributions as ``DiscROIDataset``'s torchvision transforms: angle uniform in
    +/-``rotation_degrees``; flip with probability ``hflip_p``; brightness and contrast
    factors uniform in ``1 +/- brightness`` / ``1 +/- contrast``, in random order; crop by
    torchvision's ``RandomResizedCrop`` rule (area uniform in ``crop_scale``, log aspect ratio
    uniform in :data:`CROP_RATIO`, ten attempts, central fallback).

    Args:
        seed: Run seed.
        epoch: Epoch the views are for.
        indices: int64 (B,), cache rows of the samples; the parameters live on its device.
        spec: Augmentation settings (e.g. a ``DiscDatasetConfig``).
        roi_size: ``(H, W)`` of the ROIs.
        stream: Separates uses of one seed (e.g. 0 training, 1 validation views).

    Returns:
        Parameters of shape (B, V) with V = ``spec.n_views``.
    """
    height, width = roi_size
    u = keyed_uniforms(
        seed, epoch, indices, n_views=spec.n_views, n_slots=_N_SLOTS, stream=stream
    )  # (B, V, K)
    degrees, b, c = spec.rotation_degrees, spec.brightness, spec.contrast
    return AugmentParams(
        angle=_uniform(u[..., _ANGLE], -degrees, degrees),
        flip=u[..., _FLIP] < spec.hflip_p,
        box=_crop_boxes(u, height, width, spec.crop_scale),
        brightness=_uniform(u[..., _BRIGHTNESS], max(0.0, 1.0 - b), 1.0 + b),
        contrast=_uniform(u[..., _CONTRAST], max(0.0, 1.0 - c), 1.0 + c),
        # ColorJitter applies its four adjustments in a random permutation.
        contrast_first=u[..., _ORDER] < 0.5,
    )


def identity_params(
    batch: int, n_views: int, roi_size: tuple[int, int], device: torch.device | str = "cpu"
) -> AugmentParams:
    """Parameters that change nothing: the whole ROI, unrotated, unflipped, unjittered.

    Args:
        batch: B.
        n_views: V.
        roi_size: ``(H, W)`` of the ROIs.
        device: Where the tensors live.

    Returns:
        Parameters of shape (B, V).
    """
    height, width = roi_size
    zeros = torch.zeros(batch, n_views, dtype=torch.float64, device=device)
    box = torch.tensor([0, 0, height, width], dtype=torch.int64, device=device)
    return AugmentParams(
        angle=zeros,
        flip=zeros.bool(),
        box=box.expand(batch, n_views, 4).clone(),
        brightness=zeros + 1.0,
        contrast=zeros + 1.0,
        contrast_first=zeros.bool(),
    )


def _grid_terms(params: AugmentParams, height: int, width: int, size: int) -> tuple[Tensor, Tensor]:
    """The ``grid_sample`` grid of each view: resize of the crop box, flip, rotation, composed.

    Works in continuous pixel coordinates (pixel k covers [k, k + 1]). Output pixel centre
    ``a = q + 0.5`` maps to ``left + a * w / S`` in the flipped, rotated image, clamped to the
    box's first and last pixel centres exactly as ``F.interpolate`` clamps; the flip mirrors
    about the vertical centre line; the rotation turns about the ROI centre.

    Returns:
        ``(column, row)``, float32 (B * V, 2, S) each: the grid of view n is
        ``column[n, :, None, :] + row[n, :, :, None]`` of shape (2, S, S), ``(x, y)`` in
        ``grid_sample``'s [-1, 1] convention, moved last.
    """
    device = params.box.device
    top, left, h, w = params.box.flatten(0, 1).to(torch.float64).unbind(-1)  # (N,) each
    steps = (torch.arange(size, dtype=torch.float64, device=device) + 0.5) / size  # (S,)

    def axis(start: Tensor, extent: Tensor) -> Tensor:  # (N, S)
        coords = start[:, None] + steps * extent[:, None]
        return torch.minimum(
            torch.maximum(coords, (start + 0.5)[:, None]), (start + extent - 0.5)[:, None]
        )

    u = axis(left, w)
    u = torch.where(params.flip.flatten()[:, None], width - u, u) - width / 2  # centred column
    v = axis(top, h) - height / 2  # centred row
    theta = torch.deg2rad(params.angle.flatten())[:, None]
    cos, sin = torch.cos(theta), torch.sin(theta)
    # input = centre + R(angle) (output - centre), R = [[cos, -sin], [sin, cos]], scaled to
    # [-1, 1]: grid[n, p, q] = column term of q + row term of p, each an (x, y) pair.
    sx, sy = 2 / width, 2 / height
    column = u[:, None, :] * torch.cat([cos * sx, sin * sy], dim=1)[:, :, None]  # (N, 2, S)
    row = v[:, None, :] * torch.cat([-sin * sx, cos * sy], dim=1)[:, :, None]  # (N, 2, S)
    return column.float(), row.float()


def _jitter(images: Tensor, params: AugmentParams, *, std: float) -> tuple[Tensor, Tensor]:
    """Brightness and contrast of each view, at ROI resolution as ``DiscROIDataset`` does.

    Args:
        images: float32 (B, 1, H, W) in [0, 1].
        params: Parameters of shape (B, V).
        std: Normalisation std.

    Returns:
        ``(shifted, fill)``: float32 (B, V, H, W), the jittered views minus their fill, divided
        by ``std``; float32 (B, V, 1, 1), the value the rotation's empty corners take after the
        jitter (black, jittered).
    """

    def factor(values: Tensor) -> Tensor:
        return values.float()[..., None, None]  # (B, V, 1, 1)

    # ColorJitter's random order, written as brightness, contrast, brightness with one of the
    # two brightness factors 1.
    ones = torch.ones_like(params.brightness)
    before = factor(torch.where(params.contrast_first, ones, params.brightness))
    after = factor(torch.where(params.contrast_first, params.brightness, ones))
    contrast = factor(params.contrast)
    views = (images * before).clamp_(max=1.0)  # (B, V, H, W)
    centre = views.mean(dim=(-2, -1), keepdim=True)
    blend = (1.0 - contrast) * centre
    views = views.mul_(contrast).add_(blend).clamp_(0.0, 1.0).mul_(after).clamp_(max=1.0)
    # A black pixel (the rotation's fill) after the same jitter.
    fill = (blend.clamp(0.0, 1.0) * after).clamp_(max=1.0)
    return views.sub_(fill).div_(std), fill


def augment_batch(
    rois: Tensor,
    params: AugmentParams,
    *,
    input_size: int,
    mean: float,
    std: float,
    supersample: int | None = None,
) -> Tensor:
    """Apply V augmented views to each ROI of a batch (paper Sec. 4.2).

    Brightness and contrast are applied per view at ROI resolution (cheap: H x W rather than
    S x S), then crop, flip, rotation and resize in one ``grid_sample``. Sampling the jittered
    view minus its fill value with zero padding, then adding the fill back, gives the rotation
    corners the jittered black of the per-sample path. Where S is below the ROI side the
    view is sampled at an integer multiple of S and averaged (``supersample``), in place of
    the antialiasing filter of ``F.interpolate``.

    Args:
        rois: uint8 (B, H, W), the cached ROIs.
        params: Parameters of shape (B, V) on the same device
            (:func:`draw_augment_params`).
        input_size: Side S of the output.
        mean: Intensity mean subtracted after scaling to [0, 1].
        std: Intensity standard deviation divided by.
        supersample: Samples per output pixel along each axis, averaged; by default
            ``ceil(max(H, W) / S)``, enough for the largest crop (the whole ROI). Fixed per
            call, so that no value has to be read back from the device.

    Returns:
        float32 (B, V, 1, S, S), normalised views.

    Raises:
        ValueError: If the shapes, dtype or devices do not fit.
    """
    if rois.dim() != 3 or rois.dtype != torch.uint8:
        raise ValueError(f"rois must be uint8 (B, H, W), got {rois.dtype} {tuple(rois.shape)}")
    batch, height, width = rois.shape
    if params.shape[0] != batch or params.box.device != rois.device:
        raise ValueError(
            f"params are for {params.shape[0]} ROIs on {params.box.device}, "
            f"got {batch} ROIs on {rois.device}"
        )
    if input_size < 1 or not std > 0:
        raise ValueError(f"input_size and std must be > 0, got {input_size} and {std}")
    if supersample is not None and supersample < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    n_views = params.shape[1]
    images = rois.unsqueeze(1).float() / _UINT8_MAX  # (B, 1, H, W)
    shifted, fill = _jitter(images, params, std=std)
    shifted = shifted.view(batch * n_views, 1, height, width)
    offset = ((fill - mean) / std).view(batch * n_views, 1, 1, 1)
    factor = supersample or max(1, math.ceil(max(height, width) / input_size))
    column, row = _grid_terms(params, height, width, input_size * factor)
    n = batch * n_views
    # On the CPU, views are sampled a few at a time: tensors above glibc's mmap threshold
    # (32 MiB) are page-faulted afresh at every allocation, which costs more than sampling.
    grid_bytes = (input_size * factor) ** 2 * 2 * 4  # per view
    chunk = n if rois.device.type != "cpu" else max(1, _CPU_CHUNK_BYTES // grid_bytes)
    out = torch.empty(n, 1, input_size, input_size, device=rois.device)
    for start in range(0, n, chunk):
        part = slice(start, start + chunk)
        # x and y planes are built contiguous (fast broadcasting) and handed to grid_sample
        # as a strided (n, S * f, S * f, 2) view, which it reads without a copy.
        grid = (column[part, :, None, :] + row[part, :, :, None]).permute(0, 2, 3, 1)
        views = F.grid_sample(
            shifted[part], grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )
        if factor > 1:
            views = F.avg_pool2d(views, factor)
        torch.add(views, offset[part], out=out[part])
    return out.view(batch, n_views, 1, input_size, input_size)


def resize_normalize(images: Tensor, *, input_size: int, mean: float, std: float) -> Tensor:
    """The deterministic path (supervised and multislice inputs) for a batch.

    Bilinear resize with antialiasing and normalisation, as ``DiscROIDataset``'s
    ``v2.Resize`` + ``v2.Normalize`` do per sample.

    Args:
        images: uint8 (..., H, W), e.g. ROIs (B, H, W) or neighbouring-slice ROIs (B, S, H, W).
        input_size: Side of the output.
        mean: Intensity mean subtracted after scaling to [0, 1].
        std: Intensity standard deviation divided by.

    Returns:
        float32 (..., 1, input_size, input_size).

    Raises:
        ValueError: If ``images`` is not uint8 with at least two dimensions.
    """
    if images.dim() < 2 or images.dtype != torch.uint8:
        raise ValueError(
            f"images must be uint8 (*, H, W), got {images.dtype} {tuple(images.shape)}"
        )
    lead, (height, width) = images.shape[:-2], images.shape[-2:]
    x = images.reshape(-1, 1, height, width).float() / _UINT8_MAX
    if (height, width) != (input_size, input_size):
        x = F.interpolate(
            x, size=(input_size, input_size), mode="bilinear", align_corners=False, antialias=True
        )
    return x.sub_(mean).div_(std).reshape(*lead, 1, input_size, input_size)


class BatchAugment:
    """Contrastive views of a batch of ROIs, keyed by (seed, epoch, cache row) (Sec. 4.2, 4.3).

    Args:
        spec: Augmentation settings (e.g. a ``DiscDatasetConfig``).
        mean: Intensity mean subtracted after scaling to [0, 1] (e.g. the cache's).
        std: Intensity standard deviation divided by.
        seed: Run seed.
        stream: Separates uses of one seed (0 training, 1 validation views, ...).

    Raises:
        ValueError: If ``std`` is not positive.

    Example:
        >>> augment = BatchAugment(DiscDatasetConfig(input_size=64), mean=0.3, std=0.2, seed=0)
        >>> views = augment(rois, rows, epoch=3)  # (B, 3, 1, 64, 64)
    """

    def __init__(
        self, spec: AugmentSpec, *, mean: float, std: float, seed: int, stream: int = 0
    ) -> None:
        if not std > 0:
            raise ValueError(f"std must be > 0, got {std}")
        self.spec = spec
        self.mean = float(mean)
        self.std = float(std)
        self.seed = seed
        self.stream = stream

    def params(self, indices: Tensor, epoch: int, roi_size: tuple[int, int]) -> AugmentParams:
        """The views' parameters for samples ``indices`` in ``epoch``.

        Args:
            indices: int64 (B,), cache rows.
            epoch: Epoch number.
            roi_size: ``(H, W)`` of the ROIs.

        Returns:
            Parameters of shape (B, V).
        """
        return draw_augment_params(
            self.seed, epoch, indices, self.spec, roi_size=roi_size, stream=self.stream
        )

    def __call__(self, rois: Tensor, indices: Tensor, epoch: int) -> Tensor:
        """Augment a batch.

        Args:
            rois: uint8 (B, H, W) on the device the views are made on.
            indices: int64 (B,), their cache rows (the randomness key), on the same device.
            epoch: Epoch number.

        Returns:
            float32 (B, V, 1, S, S).
        """
        params = self.params(indices, epoch, (int(rois.shape[-2]), int(rois.shape[-1])))
        return augment_batch(
            rois, params, input_size=self.spec.input_size, mean=self.mean, std=self.std
        )
