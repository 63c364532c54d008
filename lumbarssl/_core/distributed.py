"""Rank and world size of the default process group: one definition for the whole library."""

from __future__ import annotations

import torch.distributed as dist


def is_distributed() -> bool:
    """Return whether a multi-process group is initialised.

    Returns:
        ``True`` inside a multi-process ``torchrun`` job after the group was initialised.
    """
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    """Return the global rank of this process (``0`` when not distributed).

    Returns:
        The rank.
    """
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """Return the number of processes (``1`` when not distributed).

    Returns:
        The world size.
    """
    return dist.get_world_size() if is_distributed() else 1
