"""Autograd-aware all-gather for contrastive losses computed across processes.

Private helper of :mod:`lumbarssl.losses.ntxent`. Ranks may hold different numbers of rows:
every rank pads its rows to the largest count, gathers, and drops the padding again.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


def _gather_sizes(rows: int, device: torch.device) -> list[int]:
    size = torch.tensor([rows], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    return [int(s.item()) for s in sizes]


def _gather_padded(x: Tensor, sizes: list[int]) -> Tensor:
    """Concatenate every rank's ``x`` along dim 0; ``sizes[r]`` is rank r's row count."""
    longest = max(sizes)
    padded = x.new_zeros((longest, *x.shape[1:]))
    padded[: x.shape[0]] = x
    buckets = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(buckets, padded.contiguous())
    return torch.cat([b[:n] for b, n in zip(buckets, sizes, strict=True)])


class _AllGather(torch.autograd.Function):
    """All-gather whose backward sums the gathered gradient over ranks and keeps the local rows.

    Every rank's loss depends on every rank's rows, so the gradient of the sum of all ranks'
    losses with respect to this rank's rows is the all-reduced (summed) gradient of the
    gathered tensor, restricted to this rank's slice.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, sizes: list[int]) -> Tensor:
        rank = dist.get_rank()
        ctx.start = sum(sizes[:rank])
        ctx.stop = ctx.start + sizes[rank]
        return _gather_padded(x, sizes)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.start : ctx.stop], None


def all_gather_rows(x: Tensor) -> tuple[Tensor, int]:
    """Gather every rank's rows; gradients flow back to each rank's own rows.

    Args:
        x: This rank's rows.

    Returns:
        The rows of all ranks in rank order and the offset of this rank's first row in them.

    Shape:
        - x: (M_r, D); M_r may differ between ranks.
        - Output: (sum_r M_r, D).
    """
    sizes = _gather_sizes(x.shape[0], x.device)
    gathered: Tensor = _AllGather.apply(x, sizes)
    return gathered, sum(sizes[: dist.get_rank()])


def all_gather_ids(ids: Tensor) -> Tensor:
    """Gather every rank's group ids (not differentiable).

    Shape:
        - ids: (M_r,).
        - Output: (sum_r M_r,).
    """
    return _gather_padded(ids, _gather_sizes(ids.shape[0], ids.device))
