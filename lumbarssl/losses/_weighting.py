r"""Shared pieces of the class-weighted losses (focal, Sec. 3.6 Eq. 2, and ordinal).

Both losses weight sample :math:`i` by :math:`\alpha_{y_i}`, skip ``ignore_index`` rows and
reduce with ``"none"``/``"mean"``/``"sum"``, ``"mean"`` dividing by the summed weights or the
number of samples. Private: the public names live in :mod:`lumbarssl.losses.focal` and
:mod:`lumbarssl.losses.ordinal`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

Reduction = Literal["none", "mean", "sum"]
Normalize = Literal["weights", "samples"]
REDUCTIONS = ("none", "mean", "sum")
NORMALIZE = ("weights", "samples")


def validate_alpha(alpha: Sequence[float] | Tensor) -> Tensor:
    """Per-class weights as a float64 CPU tensor; raise if not 1-D, finite and > 0."""
    values = torch.as_tensor(alpha, dtype=torch.float64).detach().cpu()
    if values.dim() != 1 or values.numel() == 0:
        raise ValueError(
            f"alpha must be a non-empty 1-D sequence of per-class weights, got shape "
            f"{tuple(values.shape)}"
        )
    if not bool(torch.isfinite(values).all() and (values > 0).all()):
        raise ValueError(f"alpha must be finite and > 0 for every class, got {values.tolist()}")
    return values


def validate_hparams(gamma: float, reduction: str, ignore_index: int, normalize: str) -> None:
    """Raise ``ValueError`` for a gamma, reduction, ignore_index or normalize out of range."""
    if isinstance(gamma, bool) or not isinstance(gamma, int | float):
        raise ValueError(f"gamma must be a number in [0, inf), got {gamma!r}")
    if not (math.isfinite(gamma) and gamma >= 0):
        raise ValueError(f"gamma must be in [0, inf), got {gamma!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if normalize not in NORMALIZE:
        raise ValueError(f"normalize must be one of {NORMALIZE}, got {normalize!r}")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise ValueError(f"ignore_index must be an int, got {ignore_index!r}")


def check_target_dtype_shape(logits: Tensor, target: Tensor) -> None:
    """Raise unless ``target`` is an integer tensor of shape (B,) for logits of shape (B, ...)."""
    if target.shape != logits.shape[:1]:
        raise ValueError(
            f"target must have shape ({logits.shape[0]},) to match logits of shape "
            f"{tuple(logits.shape)}, got {tuple(target.shape)}"
        )
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise ValueError(f"target must hold integer class indices, got dtype {target.dtype}")


def valid_rows(target: Tensor, num_classes: int, ignore_index: int) -> Tensor:
    """Boolean mask (B,) of the rows not ignored; raise for a class outside ``[0, C)``."""
    valid = target != ignore_index
    out_of_range = valid & ((target < 0) | (target >= num_classes))
    if bool(out_of_range.any()):
        bad = target[out_of_range][0].item()
        raise ValueError(
            f"target values must be in [0, {num_classes}) or ignore_index={ignore_index}, got {bad}"
        )
    return valid


def reduce_weighted(
    loss: Tensor, weight: Tensor, valid: Tensor, reduction: str, normalize: str
) -> Tensor:
    """Reduce per-sample losses (B,); ``"mean"`` divides by the weights or the valid count.

    All rows ignored (or B = 0): the sum is an exact zero that keeps the graph, and 0 / 1 = 0.
    """
    if reduction == "none":
        return loss
    total = loss.sum()
    if reduction == "sum":
        return total
    denominator = weight.sum() if normalize == "weights" else valid.sum().to(loss.dtype)
    return total / torch.where(denominator > 0, denominator, torch.ones_like(denominator))


class ClassWeightedLoss(nn.Module):
    """Module base of the class-weighted losses: validated hyper-parameters, ``alpha`` buffer.

    Args:
        alpha: Per-class weights, > 0; stored as a float32 buffer (follows ``.to()``, saved in
            the ``state_dict``).
        gamma: Focusing parameter, >= 0.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.
        ignore_index: Target value whose samples are skipped.
        normalize: What ``"mean"`` divides by: ``"weights"`` or ``"samples"``.

    Raises:
        ValueError: If a hyper-parameter is out of range.
    """

    alpha: Tensor

    def __init__(
        self,
        alpha: Sequence[float] | Tensor,
        gamma: float,
        reduction: Reduction,
        ignore_index: int,
        normalize: Normalize,
    ) -> None:
        super().__init__()
        validate_hparams(gamma, reduction, ignore_index, normalize)
        self.register_buffer("alpha", validate_alpha(alpha).to(torch.float32))
        self.gamma = float(gamma)
        self.reduction: Reduction = reduction
        self.ignore_index = ignore_index
        self.normalize: Normalize = normalize

    def extra_repr(self) -> str:
        """Hyper-parameters shown by ``repr``."""
        return (
            f"alpha={[round(a, 6) for a in self.alpha.tolist()]}, gamma={self.gamma}, "
            f"reduction={self.reduction!r}, ignore_index={self.ignore_index}, "
            f"normalize={self.normalize!r}"
        )
