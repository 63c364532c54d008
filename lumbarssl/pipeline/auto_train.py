"""Small training loops for the automatic-grading models of issue 13 (not in the paper).

Plain functions on in-memory tensors: :func:`train_slice_selector` fits a
:class:`~lumbarssl.models.SliceSelector` to per-level patch sequences, and
:func:`train_heatmap_localizer` fits a :class:`~lumbarssl.models.HeatmapLocalizer` to 2.5D
stacks with their disc centres. They are meant for measurements and tests on synthetic data;
the stage/CLI integration (recipes, checkpoints, resumable trainer) comes with ``lumbarssl
predict``'s automatic path.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from lumbarssl.errors import TrainingDivergedError
from lumbarssl.models.heatmap import (
    HeatmapLocalizer,
    PatchRefiner,
    crop_patches,
    gaussian_heatmaps,
    heatmap_loss,
    input_to_heatmap,
)
from lumbarssl.models.slice_select import SliceSelector

__all__ = [
    "pad_slices",
    "predict_heatmap_localizer",
    "train_heatmap_localizer",
    "train_patch_refiner",
    "train_slice_selector",
]


def pad_slices(patches: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Stack per-level patch sequences of different slice counts.

    Args:
        patches: ``N`` tensors of shape ``(S_i, P, P)``.

    Returns:
        ``(batch, mask)``: ``(N, max S_i, P, P)`` zero-padded patches and ``(N, max S_i)`` bool
        mask of the real slices.
    """
    if not patches:
        raise ValueError("no patch sequences given")
    longest = max(p.shape[0] for p in patches)
    batch = patches[0].new_zeros((len(patches), longest, *patches[0].shape[1:]))
    mask = torch.zeros(len(patches), longest, dtype=torch.bool, device=patches[0].device)
    for i, p in enumerate(patches):
        batch[i, : p.shape[0]] = p
        mask[i, : p.shape[0]] = True
    return batch, mask


def _step(
    loss: Tensor,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    *,
    epoch: int,
    step: int,
) -> None:
    """One optimisation step of a plain loop; a non-finite loss stops it before the update."""
    if not torch.isfinite(loss):
        raise TrainingDivergedError(epoch=epoch, step=step, loss=float(loss), checkpoint=None)
    optimizer.zero_grad(set_to_none=True)
    torch.autograd.backward(loss)
    optimizer.step()
    schedule.step()


def train_slice_selector(
    patches: Sequence[Tensor],
    targets: Tensor,
    *,
    epochs: int = 20,
    batch_size: int = 16,
    lr: float = 2e-3,
    width: int = 16,
    hidden: int = 64,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> SliceSelector:
    """Fit a slice selector with cross-entropy over the slices of each level.

    Each epoch visits the sequences in a seeded random order; a sequence is reversed (and its
    target mirrored) with probability 1/2, since the slice order of a series is arbitrary.

    Args:
        patches: ``N`` per-level sequences ``(S_i, P, P)`` from
            :func:`~lumbarssl.models.slice_select.extract_level_patches`.
        targets: ``(N,)`` true spatial slice index of each sequence.
        epochs: Passes over the data.
        batch_size: Sequences per step.
        lr: AdamW learning rate (cosine-annealed to 0).
        width: CNN width of the selector.
        hidden: GRU size of the selector.
        seed: Seeds the initialisation and the order.
        device: Where to train.

    Returns:
        The trained selector (train mode, on ``device``).

    Raises:
        ValueError: If the sizes disagree or a target is out of range.
        lumbarssl.errors.TrainingDivergedError: If the loss becomes non-finite.
    """
    if len(patches) != targets.shape[0]:
        raise ValueError(f"{len(patches)} patch sequences but {targets.shape[0]} targets")
    for p, t in zip(patches, targets.tolist(), strict=True):
        if not 0 <= t < p.shape[0]:
            raise ValueError(f"target {t} outside a sequence of {p.shape[0]} slices")
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = SliceSelector(width, hidden).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * -(-len(patches) // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1))
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(patches), generator=generator).tolist()
        flips = torch.rand(len(patches), generator=generator) < 0.5
        for start in range(0, len(order), batch_size):
            chosen = order[start : start + batch_size]
            seqs, wanted = [], []
            for i in chosen:
                seq, target = patches[i], int(targets[i])
                if flips[i]:
                    seq, target = seq.flip(0), seq.shape[0] - 1 - target
                seqs.append(seq)
                wanted.append(target)
            batch, mask = pad_slices(seqs)
            logits = model(batch.to(device), mask.to(device))
            loss = F.cross_entropy(logits, torch.tensor(wanted, device=device))
            _step(loss, optimizer, schedule, epoch=epoch + 1, step=start // batch_size + 1)
    return model


def train_heatmap_localizer(
    images: Tensor,
    points: Tensor,
    mask: Tensor | None = None,
    *,
    epochs: int = 20,
    batch_size: int = 8,
    lr: float = 1e-3,
    sigma: float = 1.5,
    decoder_dim: int = 64,
    max_shift: int = 16,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> HeatmapLocalizer:
    """Fit a heatmap localizer to 2.5D stacks and their disc centres.

    Augmentation: a seeded random translation of up to ``max_shift`` pixels per axis (zero
    fill), the points moved with it.

    Args:
        images: ``(N, C, H, W)`` standardised stacks, ``H`` and ``W`` multiples of 32.
        points: ``(N, K, 2)`` centres ``(x, y)`` in input pixels.
        mask: Optional ``(N, K)`` bool, false where a level has no coordinate.
        epochs: Passes over the data.
        batch_size: Stacks per step.
        lr: AdamW learning rate (cosine-annealed to 0).
        sigma: Standard deviation of the Gaussian targets in heatmap cells (stride 4).
        decoder_dim: Decoder width of the localizer.
        max_shift: Largest translation (pixels).
        seed: Seeds the initialisation, the order and the shifts.
        device: Where to train.

    Returns:
        The trained localizer (train mode, on ``device``).

    Raises:
        ValueError: On mismatched shapes.
        lumbarssl.errors.TrainingDivergedError: If the loss becomes non-finite.
    """
    n, c, h, w = images.shape
    k = points.shape[1]
    if points.shape != (n, k, 2):
        raise ValueError(f"expected points of shape ({n}, K, 2), got {tuple(points.shape)}")
    keep = torch.ones(n, k, dtype=torch.bool) if mask is None else mask.bool()
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = HeatmapLocalizer(c, k, decoder_dim).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * -(-n // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1))
    size = (-(-h // model.stride), -(-w // model.stride))
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            shifts = torch.randint(-max_shift, max_shift + 1, (len(idx), 2), generator=generator)
            x = torch.zeros(len(idx), c, h, w)
            xy = points[idx].clone().float()
            for b, (i, (dx, dy)) in enumerate(zip(idx.tolist(), shifts.tolist(), strict=True)):
                x[b] = _shifted(images[i], dx, dy)
                xy[b, :, 0] += dx
                xy[b, :, 1] += dy
            inside = (xy[..., 0] >= 0) & (xy[..., 0] < w) & (xy[..., 1] >= 0) & (xy[..., 1] < h)
            target = gaussian_heatmaps(input_to_heatmap(xy, model.stride), size, sigma)
            logits = model(x.to(device))
            loss = heatmap_loss(logits, target.to(device), (keep[idx] & inside).to(device))
            _step(loss, optimizer, schedule, epoch=epoch + 1, step=start // batch_size + 1)
    return model


def train_patch_refiner(
    stacks: Tensor,
    points: Tensor,
    mask: Tensor | None = None,
    *,
    epochs: int = 8,
    batch_size: int = 64,
    lr: float = 2e-3,
    patch: int = 32,
    width: int = 32,
    sigma: float = 1.5,
    max_offset: float = 8.0,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> PatchRefiner:
    """Fit a local refiner to patches around the annotated centres (issue 13).

    Each epoch visits every annotated (stack, level) once, in a seeded random order, and crops
    its patch around the centre moved by a fresh random offset: normal with standard deviation
    ``max_offset / 2`` per axis, clipped to ``+/- max_offset`` (the coarse localizer's error
    is of that size). The target is a stride-1 Gaussian at the true centre in the patch.

    Args:
        stacks: ``(N, C, L, L')`` stacks at the stored resolution (uint8 or [0, 1] float).
        points: ``(N, K, 2)`` centres ``(x, y)`` in stack pixels.
        mask: Optional ``(N, K)`` bool, false where a level has no coordinate.
        epochs: Passes over the annotated levels.
        batch_size: Patches per step.
        lr: AdamW learning rate (cosine-annealed to 0).
        patch: Patch side (stack pixels, even).
        width: Channels of the refiner.
        sigma: Standard deviation of the Gaussian targets (stack pixels).
        max_offset: Largest offset of a training patch's centre from the truth (pixels).
        seed: Seeds the initialisation, the order and the offsets.
        device: Where to train.

    Returns:
        The trained refiner (eval mode, on ``device``).

    Raises:
        ValueError: On mismatched shapes, no annotated level or ``max_offset`` not below
            ``patch / 2``.
        lumbarssl.errors.TrainingDivergedError: If the loss becomes non-finite.
    """
    n, c = stacks.shape[:2]
    k = points.shape[1]
    if points.shape != (n, k, 2):
        raise ValueError(f"expected points of shape ({n}, K, 2), got {tuple(points.shape)}")
    if not 0 <= max_offset < patch / 2:
        raise ValueError(f"max_offset must be in [0, patch / 2), got {max_offset}")
    keep = torch.ones(n, k, dtype=torch.bool) if mask is None else mask.bool()
    pairs = keep.nonzero()  # (M, 2): stack, level
    if pairs.shape[0] == 0:
        raise ValueError("no annotated level to train the refiner on")
    scale = 255.0 if stacks.dtype == torch.uint8 else 1.0
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = PatchRefiner(c, patch, width).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * -(-pairs.shape[0] // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1))
    model.train()
    for epoch in range(epochs):
        order = pairs[torch.randperm(pairs.shape[0], generator=generator)]
        offsets = (torch.randn(order.shape[0], 2, generator=generator) * max_offset / 2).clamp(
            -max_offset, max_offset
        )
        for start in range(0, order.shape[0], batch_size):
            chosen = order[start : start + batch_size]
            truth = points[chosen[:, 0], chosen[:, 1]].float()  # (b, 2)
            centre = truth + offsets[start : start + batch_size]
            crops, origin = crop_patches(stacks[chosen[:, 0]], centre[:, None], patch)
            local = truth[:, None] - origin.float()  # (b, 1, 2) truth in patch pixels
            target = gaussian_heatmaps(local, (patch, patch), sigma)
            logits = model((crops[:, 0].float() / scale).to(device))
            loss = heatmap_loss(logits, target.to(device))
            _step(loss, optimizer, schedule, epoch=epoch + 1, step=start // batch_size + 1)
    return model.eval()


@torch.no_grad()
def predict_heatmap_localizer(
    model: HeatmapLocalizer,
    images: Tensor,
    *,
    stacks: Tensor | None = None,
    batch_size: int = 16,
) -> tuple[Tensor, Tensor]:
    """Disc centres ``(N, K, 2)`` (input pixels) and confidences ``(N, K)`` in eval mode.

    Args:
        model: The localizer.
        images: ``(N, C, S, S)`` network inputs.
        stacks: ``(N, C, L, L)`` the same stacks at the stored resolution (uint8 or [0, 1]
            float), for the model's refiner; ``None`` reads the coarse peaks only.
        batch_size: Stacks per forward pass.

    Returns:
        ``(xy, confidence)``.
    """
    model.eval()
    device = next(model.parameters()).device
    xys, confidences = [], []
    for start in range(0, images.shape[0], batch_size):
        part = images[start : start + batch_size].to(device)
        stack = None
        if stacks is not None:
            chunk = stacks[start : start + batch_size].to(device)
            stack = chunk.float() / 255.0 if chunk.dtype == torch.uint8 else chunk.float()
        xy, confidence = model.predict(part, stack=stack)
        xys.append(xy.cpu())
        confidences.append(confidence.cpu())
    return torch.cat(xys), torch.cat(confidences)


def _shifted(image: Tensor, dx: int, dy: int) -> Tensor:
    """``image`` (C, H, W) translated by ``(dx, dy)`` pixels, zero fill."""
    out = torch.zeros_like(image)
    _, h, w = image.shape
    src_y = slice(max(-dy, 0), min(h - dy, h))
    dst_y = slice(max(dy, 0), min(h + dy, h))
    src_x = slice(max(-dx, 0), min(w - dx, w))
    dst_x = slice(max(dx, 0), min(w + dx, w))
    out[:, dst_y, dst_x] = image[:, src_y, src_x]
    return out
