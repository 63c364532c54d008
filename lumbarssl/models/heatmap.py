"""A 2.5D heatmap localizer of the disc centres, beside the paper's regressor (issue 13).

The paper localises each disc with a ResNet-18 that regresses its normalised centre (Sec. 4.5,
:class:`~lumbarssl.models.Localizer2p5D`). Keypoint heatmaps are what the strongest RSNA 2024
solutions used for this step instead: an encoder-decoder predicts one map per level, trained
against a Gaussian spread around the annotated point, and the centre is read off the map with
sub-pixel precision. This module holds that model, its Gaussian targets, its loss and the
decoding; it is *not* part of the paper's method.

Coordinates: ``(x, y)`` = (column, row) in pixels of the network input, pixel ``k`` centred at
``k``. A heatmap of stride ``s`` has cell ``j`` covering input pixels ``[s j, s j + s)``, so
its centre lies at input coordinate ``s j + (s - 1) / 2``
(:func:`heatmap_to_input` / :func:`input_to_heatmap`).

Local refinement: at a small input (the quick profile's 96 px) one heatmap cell spans 10-16
pixels of the original slice, and the coarse peak is off by several of them. A
:class:`PatchRefiner` (optional, stored inside the localizer) crops a small patch of the stored
stack (``LocalizerRecipe.stack_size``, 256 px) around each coarse peak and predicts a stride-1
heatmap of the disc centre in it, with the same Gaussian targets, loss and quadratic decoding;
one refiner serves every level.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import WeightsEnum

from lumbarssl import paper
from lumbarssl.models.encoder import resnet18_encoder
from lumbarssl.models.registry import ARCHITECTURE_KEY, register_model

__all__ = [
    "HeatmapLocalizer",
    "PatchRefiner",
    "crop_patches",
    "decode_heatmaps",
    "gaussian_heatmaps",
    "heatmap_loss",
    "heatmap_to_input",
    "input_to_heatmap",
]

#: Output stride of the decoder (the ResNet stem's resolution).
HEATMAP_STRIDE = 4
_ENCODER_WIDTHS = (64, 128, 256, 512)  # ResNet-18 layer1..layer4


class HeatmapLocalizer(nn.Module):
    """Predict one heatmap per disc level from a 2.5D stack of sagittal slices.

    A ResNet-18 encoder (strides 4 to 32) feeds a light feature-pyramid decoder: each encoder
    stage is projected to ``decoder_dim`` channels by a 1x1 convolution and added to the
    upsampled coarser level, then two 3x3 convolutions at stride 4 give ``num_levels`` logit
    maps. Train with :func:`gaussian_heatmaps` targets and :func:`heatmap_loss`; read the
    centres with :meth:`predict` (:func:`decode_heatmaps`).

    With ``refine_patch > 0`` the localizer also holds a :class:`PatchRefiner` (attribute
    ``refiner``, trained separately, saved in the same checkpoint), which :meth:`predict`
    applies when given the stored stack.

    Args:
        in_chans: Slices stacked as channels (3, as the paper's localizer, Sec. 3.2).
        num_levels: Number of disc levels (5: L1/L2 to L5/S1).
        decoder_dim: Channels of the decoder.
        weights: Encoder weights for :func:`~lumbarssl.models.resnet18_encoder` (``None``, the
            default, never downloads).
        refine_patch: Patch side of the local refiner in stack pixels (0: no refiner).
        refine_width: Channels of the local refiner.
        refine_steps: Refinement passes, each centring the patch on the previous pass's point.

    Raises:
        ValueError: If a size is smaller than 1.

    Shape:
        - x: ``(B, in_chans, H, W)``, ``H`` and ``W`` multiples of 32
        - output: ``(B, num_levels, H / 4, W / 4)`` logits
    """

    stride: int = HEATMAP_STRIDE

    def __init__(
        self,
        in_chans: int = paper.LOCALIZER_SLICES,
        num_levels: int = 5,
        decoder_dim: int = 64,
        *,
        weights: WeightsEnum | str | None = None,
        refine_patch: int = 0,
        refine_width: int = 32,
        refine_steps: int = 2,
    ) -> None:
        super().__init__()
        for name, value in (
            ("in_chans", in_chans),
            ("num_levels", num_levels),
            ("decoder_dim", decoder_dim),
            ("refine_steps", refine_steps),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.in_chans = in_chans
        self.num_levels = num_levels
        self.decoder_dim = decoder_dim
        self.refine_steps = refine_steps
        resnet = resnet18_encoder(in_chans, weights=weights)
        parts = dict(resnet.named_children())
        self.stem = nn.Sequential(*(parts[n] for n in ("conv1", "bn1", "relu", "maxpool")))
        self.stages = nn.ModuleList(parts[n] for n in ("layer1", "layer2", "layer3", "layer4"))
        self.lateral = nn.ModuleList(
            nn.Conv2d(width, decoder_dim, kernel_size=1) for width in _ENCODER_WIDTHS
        )
        self.head = nn.Sequential(
            nn.Conv2d(decoder_dim, decoder_dim, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(decoder_dim),
            nn.ReLU(inplace=True),
            nn.Conv2d(decoder_dim, num_levels, kernel_size=3, padding=1),
        )
        self.refiner: PatchRefiner | None = (
            PatchRefiner(in_chans, refine_patch, refine_width) if refine_patch else None
        )

    def forward(self, x: Tensor) -> Tensor:
        """Heatmap logits of every level.

        Args:
            x: Slice stacks of shape ``(B, in_chans, H, W)``.

        Returns:
            Logits of shape ``(B, num_levels, ceil(H / 4), ceil(W / 4))``.
        """
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(
                f"expected x of shape (B, {self.in_chans}, H, W), got {tuple(x.shape)}"
            )
        features = []
        out = self.stem(x)
        for stage in self.stages:
            out = stage(out)
            features.append(out)
        top = self.lateral[-1](features[-1])
        for lateral, feature in zip(self.lateral[-2::-1], features[-2::-1], strict=True):
            top = F.interpolate(top, size=feature.shape[-2:], mode="nearest") + lateral(feature)
        logits: Tensor = self.head(top)
        return logits

    @torch.no_grad()
    def predict(
        self,
        x: Tensor,
        *,
        method: Literal["quadratic", "softargmax"] = "quadratic",
        stack: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Disc centres in input pixels and their confidence (no gradients).

        Args:
            x: Slice stacks of shape ``(B, in_chans, H, W)``.
            method: Sub-pixel decoding (see :func:`decode_heatmaps`).
            stack: The same stacks at the stored resolution, ``(B, in_chans, L, L')``
                (``x`` is their resize); with a refiner, each coarse centre is refined on
                them. Ignored without a refiner.

        Returns:
            ``(xy, confidence)``: ``(B, num_levels, 2)`` input-pixel ``(x, y)`` and
            ``(B, num_levels)`` peak probability of the spatial softmax (of the coarse map).
        """
        logits = self(x)
        xy, confidence = decode_heatmaps(logits, method=method)
        points = heatmap_to_input(xy, self.stride)
        if stack is not None and self.refiner is not None:
            points = self.refine(stack, points, (int(x.shape[-2]), int(x.shape[-1])))
        return points, confidence

    def refine(self, stack: Tensor, points: Tensor, input_size: tuple[int, int]) -> Tensor:
        """Coarse input-pixel centres refined on the stored stacks (identity without refiner).

        Args:
            stack: ``(B, in_chans, L, L')`` stacks at the stored resolution, scaled to [0, 1].
            points: ``(B, num_levels, 2)`` input-pixel ``(x, y)`` of an ``input_size`` resize
                of ``stack``.
            input_size: ``(H, W)`` of the network input.

        Returns:
            ``(B, num_levels, 2)`` refined input-pixel ``(x, y)`` (float32).
        """
        if self.refiner is None:
            return points
        h, w = input_size
        size_in = torch.tensor([w, h], dtype=torch.float32, device=points.device)
        size_st = torch.tensor(
            [stack.shape[-1], stack.shape[-2]], dtype=torch.float32, device=points.device
        )
        in_stack = (points.float() + 0.5) * size_st / size_in - 0.5
        refined = in_stack
        for _ in range(self.refine_steps):
            refined = self.refiner.refine(stack.to(points.device), refined)
        return (refined + 0.5) * size_in / size_st - 0.5

    def attach_refiner(self, refiner: PatchRefiner | None) -> None:
        """Hold ``refiner`` (or none), so that checkpoints and :meth:`predict` carry it.

        Args:
            refiner: A trained :class:`PatchRefiner` with this localizer's ``in_chans``.

        Raises:
            ValueError: If its channel count differs.
        """
        if refiner is not None and refiner.in_chans != self.in_chans:
            raise ValueError(f"refiner has {refiner.in_chans} channels, localizer {self.in_chans}")
        self.refiner = refiner

    def to_config(self) -> dict[str, object]:
        """JSON-serialisable config for :func:`~lumbarssl.models.build_model`."""
        return {
            ARCHITECTURE_KEY: "heatmap_localizer",
            "in_chans": self.in_chans,
            "num_levels": self.num_levels,
            "decoder_dim": self.decoder_dim,
            "refine_patch": 0 if self.refiner is None else self.refiner.patch,
            "refine_width": 32 if self.refiner is None else self.refiner.width,
            "refine_steps": self.refine_steps,
        }


class PatchRefiner(nn.Module):
    """Stride-1 heatmap of the disc centre in a small patch around a coarse estimate.

    Input: a ``patch x patch`` crop of the stored stack centred (to the pixel) on a coarse
    centre, plus two coordinate channels (column and row offset from the patch centre, in
    half-patches) so that, of two discs in view, the net prefers the one near the centre.
    Five 3x3 convolutions with dilations 1, 1, 2, 4, 8 (receptive field 33 px) and a 1x1
    output give one logit map at the patch's resolution; train with
    :func:`gaussian_heatmaps` targets and :func:`heatmap_loss`, read the centre with
    :func:`decode_heatmaps`. Not in the paper (issue 13: local refinement).

    Args:
        in_chans: Slices stacked as channels.
        patch: Side of the patch in stack pixels (even, >= 8).
        width: Channels of the convolutions.

    Raises:
        ValueError: On a bad size.

    Shape:
        - patches: ``(N, in_chans, patch, patch)``
        - output: ``(N, 1, patch, patch)`` logits
    """

    coords: Tensor

    def __init__(self, in_chans: int, patch: int = 32, width: int = 32) -> None:
        super().__init__()
        if in_chans < 1 or width < 1:
            raise ValueError(f"in_chans and width must be >= 1, got {in_chans}, {width}")
        if patch < 8 or patch % 2:
            raise ValueError(f"patch must be an even number >= 8, got {patch}")
        self.in_chans = in_chans
        self.patch = patch
        self.width = width
        layers: list[nn.Module] = []
        channels = in_chans + 2
        for dilation in (1, 1, 2, 4, 8):
            layers += [
                nn.Conv2d(channels, width, 3, padding=dilation, dilation=dilation, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            channels = width
        layers.append(nn.Conv2d(width, 1, kernel_size=1))
        self.body = nn.Sequential(*layers)
        ramp = (torch.arange(patch, dtype=torch.float32) - patch / 2) / (patch / 2)
        coords = torch.stack(torch.meshgrid(ramp, ramp, indexing="xy"))  # (2, P, P): x, y
        self.register_buffer("coords", coords, persistent=False)

    def forward(self, patches: Tensor) -> Tensor:
        """Logit map of each patch.

        Args:
            patches: ``(N, in_chans, patch, patch)`` crops from :func:`crop_patches`.

        Returns:
            ``(N, 1, patch, patch)`` logits.
        """
        want = (self.in_chans, self.patch, self.patch)
        if patches.ndim != 4 or tuple(patches.shape[1:]) != want:
            raise ValueError(f"expected patches of shape (N, {want}), got {tuple(patches.shape)}")
        coords = self.coords.to(patches.dtype).expand(patches.shape[0], -1, -1, -1)
        out: Tensor = self.body(torch.cat([patches, coords], dim=1))
        return out

    @torch.no_grad()
    def refine(self, stack: Tensor, xy: Tensor) -> Tensor:
        """Move each point to the refined centre in the patch around it (no gradients).

        Args:
            stack: ``(B, in_chans, H, W)`` stacks in stack pixels (the recipe's
                ``stack_size``, scaled to [0, 1]).
            xy: ``(B, K, 2)`` coarse ``(x, y)`` in stack pixels.

        Returns:
            ``(B, K, 2)`` refined ``(x, y)`` in stack pixels (float32).
        """
        b, k = xy.shape[:2]
        patches, origin = crop_patches(stack, xy, self.patch)
        logits = self(patches.reshape(b * k, *patches.shape[2:]))
        local, _ = decode_heatmaps(logits.float().reshape(b * k, 1, self.patch, self.patch))
        return origin.float() + local.reshape(b, k, 2)


def crop_patches(stack: Tensor, xy: Tensor, patch: int) -> tuple[Tensor, Tensor]:
    """Square crops of ``stack`` centred (to the pixel) on each point, zero outside.

    Patch pixel ``(i, j)`` (row, column) is stack pixel ``origin + (j, i)``, with
    ``origin = round(xy) - patch / 2``; a point at ``origin + (u, v)`` in the stack is at
    ``(u, v)`` in its patch. Integer crops leave the pixels untouched (no resampling).

    Args:
        stack: ``(B, C, H, W)`` images.
        xy: ``(B, K, 2)`` centres ``(x, y)`` in pixels of ``stack`` (any real value).
        patch: Side of the crops (even).

    Returns:
        ``(patches, origin)``: ``(B, K, C, patch, patch)`` crops and ``(B, K, 2)`` int64
        ``(x, y)`` of each crop's top-left pixel in ``stack``.

    Raises:
        ValueError: On mismatched shapes or an odd ``patch``.
    """
    if stack.ndim != 4 or xy.ndim != 3 or xy.shape[0] != stack.shape[0] or xy.shape[-1] != 2:
        raise ValueError(
            f"expected stack (B, C, H, W) and xy (B, K, 2), got {tuple(stack.shape)} and "
            f"{tuple(xy.shape)}"
        )
    if patch < 2 or patch % 2:
        raise ValueError(f"patch must be an even number >= 2, got {patch}")
    b, c, h, w = stack.shape
    k = xy.shape[1]
    finite = torch.nan_to_num(xy.detach().float(), nan=0.0).clamp(-patch, max(h, w) + patch)
    origin = (torch.round(finite).to(torch.int64) - patch // 2).to(stack.device)  # (B, K, 2)
    offsets = torch.arange(patch, device=stack.device)
    rows = (origin[..., 1:2] + offsets).reshape(b * k, patch)  # (BK, P)
    cols = (origin[..., 0:1] + offsets).reshape(b * k, patch)
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    batch = torch.arange(b, device=stack.device).repeat_interleave(k)
    crops = stack[
        batch[:, None, None], :, rows.clamp(0, h - 1)[:, :, None], cols.clamp(0, w - 1)[:, None, :]
    ]  # (BK, P, P, C)
    crops = crops * inside[..., None].to(crops.dtype)
    return crops.permute(0, 3, 1, 2).reshape(b, k, c, patch, patch), origin


@register_model("heatmap_localizer")
def _build_heatmap_localizer(
    *,
    in_chans: int = paper.LOCALIZER_SLICES,
    num_levels: int = 5,
    decoder_dim: int = 64,
    refine_patch: int = 0,
    refine_width: int = 32,
    refine_steps: int = 2,
) -> nn.Module:
    # Checkpoints carry the weights, so a rebuilt localizer never asks for pretrained ones.
    # Older checkpoints have no refine_* keys: no refiner.
    return HeatmapLocalizer(
        in_chans,
        num_levels,
        decoder_dim,
        refine_patch=refine_patch,
        refine_width=refine_width,
        refine_steps=refine_steps,
    )


def input_to_heatmap(xy: Tensor, stride: int) -> Tensor:
    """Input-pixel ``(x, y)`` to heatmap-cell coordinates, any shape ``(..., 2)``."""
    return (xy - (stride - 1) / 2.0) / stride


def heatmap_to_input(xy: Tensor, stride: int) -> Tensor:
    """Heatmap-cell ``(x, y)`` to input-pixel coordinates, any shape ``(..., 2)``."""
    return xy * stride + (stride - 1) / 2.0


def gaussian_heatmaps(xy: Tensor, size: tuple[int, int], sigma: float) -> Tensor:
    """Gaussian target maps centred on (possibly non-integer) points.

    ``exp(-((u - x)^2 + (v - y)^2) / (2 sigma^2))`` at every cell ``(u, v)``: peak 1 at the
    point, which need not fall on a cell centre.

    Args:
        xy: Centres in heatmap cells, ``(x, y)`` = (column, row), shape ``(B, K, 2)``.
        size: ``(h, w)`` of the maps.
        sigma: Standard deviation in cells, > 0.

    Returns:
        Maps of shape ``(B, K, h, w)``, same dtype as ``xy`` (float).

    Raises:
        ValueError: On a bad shape or a non-positive ``sigma``.
    """
    if xy.ndim != 3 or xy.shape[-1] != 2:
        raise ValueError(f"expected xy of shape (B, K, 2), got {tuple(xy.shape)}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    h, w = size
    dtype = xy.dtype if xy.dtype.is_floating_point else torch.float32
    cols = torch.arange(w, dtype=dtype, device=xy.device)
    rows = torch.arange(h, dtype=dtype, device=xy.device)
    dx = (cols[None, None, :] - xy[..., 0:1].to(dtype)) ** 2  # (B, K, w)
    dy = (rows[None, None, :] - xy[..., 1:2].to(dtype)) ** 2  # (B, K, h)
    return torch.exp(-(dy[..., :, None] + dx[..., None, :]) / (2.0 * sigma**2))


def heatmap_loss(logits: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Cross-entropy between each map's spatial softmax and its normalised target.

    Each level's logits are a distribution over the cells (softmax over ``h * w``); the target
    map divided by its sum is the wanted distribution. The loss is their cross-entropy,
    averaged over the (unmasked) maps, and is minimal when the softmax equals the normalised
    Gaussian: its log is then quadratic around the point, which :func:`decode_heatmaps`
    inverts exactly.

    Args:
        logits: ``(B, K, h, w)``.
        target: Non-negative maps of the same shape (e.g. :func:`gaussian_heatmaps`).
        mask: Optional ``(B, K)`` bool, false for levels without a coordinate.

    Returns:
        Scalar loss (0 with no unmasked map, keeping the graph).
    """
    if target.shape != logits.shape:
        raise ValueError(f"target shape {tuple(target.shape)} != logits {tuple(logits.shape)}")
    b, k = logits.shape[:2]
    log_p = F.log_softmax(logits.reshape(b, k, -1).float(), dim=-1)
    q = target.reshape(b, k, -1).float()
    q = q / q.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    per_map = -(q * log_p).sum(dim=-1)  # (B, K)
    if mask is None:
        return per_map.mean()
    if mask.shape != (b, k):
        raise ValueError(f"expected mask of shape ({b}, {k}), got {tuple(mask.shape)}")
    weight = mask.to(per_map.dtype)
    return (per_map * weight).sum() / weight.sum().clamp_min(1.0)


def decode_heatmaps(
    logits: Tensor,
    *,
    method: Literal["quadratic", "softargmax"] = "quadratic",
    window: int = 2,
) -> tuple[Tensor, Tensor]:
    """Sub-pixel peak of each map.

    ``"quadratic"``: the argmax cell, refined along each axis by the vertex of the parabola
    through the logits at the argmax and its two neighbours (clamped to half a cell). On a
    Gaussian in log space (what :func:`heatmap_loss` trains towards) this is exact.
    ``"softargmax"``: the softmax-weighted mean position within ``window`` cells of the argmax
    (differentiable almost everywhere; biased towards the argmax cell when the window cuts the
    peak).

    Args:
        logits: ``(B, K, h, w)`` log-domain scores.
        method: ``"quadratic"`` or ``"softargmax"``.
        window: Half-width in cells of the soft-argmax window.

    Returns:
        ``(xy, confidence)``: ``(B, K, 2)`` heatmap-cell ``(x, y)`` and ``(B, K)`` softmax
        probability of the argmax cell.

    Raises:
        ValueError: On a bad shape, method or window.
    """
    if logits.ndim != 4:
        raise ValueError(f"expected logits of shape (B, K, h, w), got {tuple(logits.shape)}")
    if method not in ("quadratic", "softargmax"):
        raise ValueError(f"method must be 'quadratic' or 'softargmax', got {method!r}")
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    b, k, h, w = logits.shape
    flat = logits.reshape(b, k, h * w).float()
    prob = flat.softmax(dim=-1)
    confidence, index = prob.max(dim=-1)
    row = torch.div(index, w, rounding_mode="floor")
    col = index % w
    maps = flat.reshape(b, k, h, w)
    if method == "quadratic":
        dx = _parabola_vertex(maps, row, col, axis=1)
        dy = _parabola_vertex(maps, row, col, axis=0)
        xy = torch.stack([col.to(dx.dtype) + dx, row.to(dy.dtype) + dy], dim=-1)
        return xy, confidence
    offsets = torch.arange(-window, window + 1, device=logits.device)
    rows = (row[..., None] + offsets).clamp(0, h - 1)  # (B, K, 2w+1)
    cols = (col[..., None] + offsets).clamp(0, w - 1)
    valid_r = (row[..., None] + offsets >= 0) & (row[..., None] + offsets < h)
    valid_c = (col[..., None] + offsets >= 0) & (col[..., None] + offsets < w)
    p = prob.reshape(b, k, h, w)
    gathered = torch.gather(
        p.reshape(b, k, h, w), 2, rows[..., None].expand(b, k, rows.shape[-1], w)
    )  # (B, K, 2w+1, w)
    patch = torch.gather(gathered, 3, cols[..., None, :].expand(b, k, rows.shape[-1], -1))
    patch = patch * (valid_r[..., :, None] & valid_c[..., None, :]).to(patch.dtype)
    total = patch.sum(dim=(-2, -1)).clamp_min(1e-12)
    y = (patch.sum(dim=-1) * rows.to(patch.dtype)).sum(dim=-1) / total
    x = (patch.sum(dim=-2) * cols.to(patch.dtype)).sum(dim=-1) / total
    return torch.stack([x, y], dim=-1), confidence


def _parabola_vertex(maps: Tensor, row: Tensor, col: Tensor, *, axis: int) -> Tensor:
    """Offset in ``[-0.5, 0.5]`` of the parabola's vertex through three cells along ``axis``.

    ``axis=1`` runs along columns (x), ``axis=0`` along rows (y); at an edge the offset is 0.
    """
    b, k, h, w = maps.shape
    length = w if axis == 1 else h
    center = col if axis == 1 else row
    lo = (center - 1).clamp(0, length - 1)
    hi = (center + 1).clamp(0, length - 1)
    flat = maps.reshape(b, k, h * w)

    def at(r: Tensor, c: Tensor) -> Tensor:
        return torch.gather(flat, 2, (r * w + c)[..., None])[..., 0]

    if axis == 1:
        left, mid, right = at(row, lo), at(row, col), at(row, hi)
    else:
        left, mid, right = at(lo, col), at(row, col), at(hi, col)
    curvature = left - 2.0 * mid + right
    inside = (center > 0) & (center < length - 1) & (curvature < 0)
    offset = 0.5 * (left - right) / torch.where(inside, curvature, torch.ones_like(curvature))
    return torch.where(inside, offset.clamp(-0.5, 0.5), torch.zeros_like(offset))
