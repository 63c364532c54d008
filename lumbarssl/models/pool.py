"""Permutation-invariant pooling of the S slice embeddings of one disc (paper Sec. 3.5)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lumbarssl.models.registry import ARCHITECTURE_KEY, register_model

__all__ = ["DeepSetsDiscPool", "masked_mean"]


def masked_mean(x: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean over the set dimension, counting only the entries the mask keeps.

    Args:
        x: Set elements of shape ``(B, S, D)``.
        mask: Optional boolean tensor of shape ``(B, S)``; ``True`` marks a real element,
            ``False`` padding. ``None`` keeps every element.

    Returns:
        The mean of each set, shape ``(B, D)``, in the dtype of ``x``.

    Raises:
        ValueError: On a shape mismatch, a non-boolean mask, or a set whose mask keeps nothing
            (its mean is undefined).
    """
    if x.ndim != 3:
        raise ValueError(f"expected x of shape (B, S, D), got {tuple(x.shape)}")
    if mask is None:
        return x.mean(dim=1)
    if mask.shape != x.shape[:2]:
        raise ValueError(
            f"expected mask of shape (B, S) = {tuple(x.shape[:2])}, got {tuple(mask.shape)}"
        )
    if mask.dtype != torch.bool:
        raise ValueError(f"expected a boolean mask, got dtype {mask.dtype}")
    counts = mask.sum(dim=1, keepdim=True)
    if bool((counts == 0).any()):
        empty = (counts.squeeze(1) == 0).nonzero().flatten().tolist()
        raise ValueError(f"mask keeps no element for batch rows {empty}")
    # Filling (rather than multiplying by the mask) keeps padding out even when it holds NaN.
    summed = x.masked_fill(~mask.unsqueeze(-1), 0.0).sum(dim=1)
    return summed / counts.to(x.dtype)


@register_model("deepsets_disc_pool")
class DeepSetsDiscPool(nn.Module):
    """Deep Sets pooling ``rho(mean_s phi(z_s))`` of a disc's slice embeddings.

    With the default ``hidden_dim=None``, phi and rho are identities and the pool is the plain mean
    the paper uses (Sec. 3.5): permutation-invariant, defined for any number of slices ``S``
    and the identity for ``S = 1`` (the paper's single representative ROI per disc). With
    ``hidden_dim`` set, phi and rho are two-layer MLPs ``D → hidden_dim → D`` (full Deep Sets,
    Zaheer et al. 2017), still permutation-invariant but no longer the identity at ``S = 1``.

    Args:
        dim: Embedding size ``D``.
        hidden_dim: Width of the phi/rho MLPs, or ``None`` for the paper's plain mean.

    Raises:
        ValueError: If ``dim`` or ``hidden_dim`` is smaller than 1.

    Shape:
        - x: ``(B, S, D)``
        - mask: ``(B, S)`` boolean, optional
        - output: ``(B, D)``
    """

    def __init__(self, dim: int = 512, *, hidden_dim: int | None = None) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if hidden_dim is not None and hidden_dim < 1:
            raise ValueError(f"hidden_dim must be None or >= 1, got {hidden_dim}")
        self.dim = dim
        self.hidden_dim = hidden_dim
        self.phi: nn.Module = nn.Identity() if hidden_dim is None else _mlp(dim, hidden_dim)
        self.rho: nn.Module = nn.Identity() if hidden_dim is None else _mlp(dim, hidden_dim)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Pool each disc's set of embeddings.

        Args:
            x: Slice embeddings of shape ``(B, S, D)``.
            mask: Optional boolean tensor of shape ``(B, S)``, ``True`` for real slices.

        Returns:
            Disc embeddings of shape ``(B, D)``.
        """
        if x.ndim != 3 or x.shape[2] != self.dim:
            raise ValueError(f"expected x of shape (B, S, {self.dim}), got {tuple(x.shape)}")
        out: Tensor = self.rho(masked_mean(self.phi(x), mask))
        return out

    def to_config(self) -> dict[str, object]:
        """JSON-serialisable config for :func:`~lumbarssl.models.build_model`."""
        return {
            ARCHITECTURE_KEY: "deepsets_disc_pool",
            "dim": self.dim,
            "hidden_dim": self.hidden_dim,
        }


def _mlp(dim: int, hidden_dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, dim)
    )
