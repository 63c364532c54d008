"""Multi-GPU and multi-node training through ``torchrun`` and PyTorch's DDP.

Nothing here launches processes: ``torchrun`` starts one process per device and sets
``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; :func:`init_distributed` joins the process group;
the :class:`~lumbarssl.training.Trainer` wraps the model in
:class:`~torch.nn.parallel.DistributedDataParallel`, calls ``set_epoch`` on the
:class:`~torch.utils.data.distributed.DistributedSampler`, and logs and writes checkpoints on
rank 0 only. Without ``torchrun`` every function degrades to the single-process answer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TypeVar, cast

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lumbarssl._core.distributed import get_rank, get_world_size, is_distributed
from lumbarssl.training.device import select_device

__all__ = [
    "DistributedInfo",
    "barrier",
    "cleanup",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_distributed",
    "is_main_process",
    "unwrap_model",
    "wrap_ddp",
]

_T = TypeVar("_T")
_TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistributedInfo:
    """Where this process sits in a (possibly single-process) run.

    Attributes:
        rank: Global rank, ``0`` .. ``world_size - 1``.
        local_rank: Rank on this node; selects the CUDA device.
        world_size: Number of processes in the run.
        backend: ``"nccl"``, ``"gloo"``, ... or ``None`` when not distributed.
        device: The device this process trains on.
    """

    rank: int
    local_rank: int
    world_size: int
    backend: str | None
    device: torch.device

    @property
    def is_distributed(self) -> bool:
        """Whether more than one process takes part."""
        return self.world_size > 1

    @property
    def is_main_process(self) -> bool:
        """Whether this is rank 0, the process that logs and writes files."""
        return self.rank == 0


def init_distributed(backend: str | None = None, *, device: str = "auto") -> DistributedInfo:
    """Join the process group described by ``torchrun``'s environment variables.

    Without ``torchrun`` (``WORLD_SIZE`` unset or ``1``) nothing is initialised and a
    single-process description is returned, so scripts work unchanged in both settings.
    Calling it again in an initialised process returns the same description.

    Args:
        backend: The ``torch.distributed`` backend; by default ``"nccl"`` when the device is a
            CUDA device and ``"gloo"`` otherwise.
        device: As for :func:`~lumbarssl.training.select_device`; ``"auto"`` gives each process
            the CUDA device of its ``LOCAL_RANK``.

    Returns:
        This process's rank, world size, backend and device.

    Raises:
        RuntimeError: If ``WORLD_SIZE`` > 1 but other ``torchrun`` variables are missing.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedInfo(0, 0, 1, None, select_device(device))
    missing = [name for name in _TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise RuntimeError(
            f"WORLD_SIZE={world_size} but {', '.join(missing)} not set; launch the script with "
            "torchrun (see the multi-GPU page of the documentation)"
        )
    local_rank = int(os.environ["LOCAL_RANK"])
    chosen = select_device(device)
    if chosen.type == "cuda":
        if device in ("auto", "cuda"):  # one GPU per process, picked by the local rank
            chosen = torch.device("cuda", local_rank)
        torch.cuda.set_device(chosen)
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend or ("nccl" if chosen.type == "cuda" else "gloo"),
            init_method="env://",
        )
    return DistributedInfo(
        rank=dist.get_rank(),
        local_rank=local_rank,
        world_size=dist.get_world_size(),
        backend=str(dist.get_backend()),
        device=chosen,
    )


def is_main_process() -> bool:
    """Return whether this process is rank 0, the one that logs and writes files.

    Returns:
        ``True`` on rank 0 and in single-process runs.
    """
    return get_rank() == 0


def barrier() -> None:
    """Wait until every process reaches this point (a no-op when not distributed)."""
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    """Leave and destroy the process group, if one was initialised."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap_ddp(model: nn.Module, device: torch.device) -> DistributedDataParallel:
    """Wrap a model already on ``device`` in :class:`~torch.nn.parallel.DistributedDataParallel`.

    Args:
        model: The model; its parameters must be on ``device``.
        device: This process's device (one CUDA device per process, or the CPU).

    Returns:
        The wrapped model; gradients are averaged over processes during ``backward``.
    """
    device_ids = [device.index] if device.type == "cuda" and device.index is not None else None
    return DistributedDataParallel(model, device_ids=device_ids)


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip :class:`~torch.nn.parallel.DistributedDataParallel` and ``torch.compile`` wrappers.

    Args:
        model: A model, possibly wrapped (in any nesting order).

    Returns:
        The underlying module, whose ``state_dict`` keys carry no wrapper prefixes.
    """
    while True:
        if isinstance(model, DistributedDataParallel):
            model = cast(nn.Module, model.module)
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile
            model = cast(nn.Module, model._orig_mod)
        else:
            return model


def _all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over processes in place (unchanged when not distributed)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def _broadcast_object(obj: _T, src: int = 0) -> _T:
    """Send a picklable object from ``src`` to every process."""
    if not is_distributed():
        return obj
    box: list[object] = [obj]
    dist.broadcast_object_list(box, src=src)
    return cast(_T, box[0])


def _all_gather_object(obj: _T) -> list[_T]:
    """Collect one picklable object from every process, indexed by rank."""
    if not is_distributed():
        return [obj]
    gathered: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return cast(list[_T], gathered)
