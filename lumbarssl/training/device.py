"""Device choice, mixed precision, data-loading defaults and seeding.

Small helpers that make the same training code run well on a laptop CPU, an older GPU (fp16 with
a gradient scaler), a recent GPU (bf16) and Apple silicon, without the caller branching on the
hardware.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, TypedDict, TypeVar, cast, get_args

import numpy as np
import torch
from torch import nn

from lumbarssl.errors import ConfigError

__all__ = [
    "AmpMode",
    "AutocastSettings",
    "DataLoaderKwargs",
    "autocast_settings",
    "configure_backends",
    "dataloader_kwargs",
    "default_num_workers",
    "maybe_compile",
    "move_to_device",
    "seed_everything",
    "seeded_generator",
    "select_device",
]

AmpMode = Literal["auto", "bf16", "fp16", "off"]
"""The mixed-precision choice; ``"auto"`` picks per device, the others force a mode."""

_AMP_MODES: tuple[str, ...] = get_args(AmpMode)

# Beyond this many loader workers the decoding of small 2-D ROIs stops getting faster and only
# costs memory (each worker holds a copy of the dataset object).
_MAX_DEFAULT_WORKERS = 8

# NVIDIA Ampere (compute capability 8.0) is the first generation with bf16 tensor cores.
_MIN_BF16_CAPABILITY = (8, 0)

_T = TypeVar("_T")


def select_device(device: str | torch.device = "auto") -> torch.device:
    """Choose the device to train on.

    ``"auto"`` prefers CUDA, then Apple's MPS, then the CPU. Under ``torchrun`` the CUDA device
    is the one of this process's ``LOCAL_RANK``.

    Args:
        device: ``"auto"`` or anything :class:`torch.device` accepts (``"cpu"``, ``"cuda"``,
            ``"cuda:1"``, ``"mps"``).

    Returns:
        The chosen device; a CUDA device always carries an index.

    Raises:
        ValueError: If ``device`` is not a device name or names an accelerator that this machine
            does not have.
    """
    if isinstance(device, str) and device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError as err:
        raise ConfigError(
            f"device={device!r} is not a device name; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
        ) from err
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device={device!r} was requested but CUDA is not available here")
        index = chosen.index if chosen.index is not None else torch.cuda.current_device()
        if not 0 <= index < torch.cuda.device_count():
            raise ConfigError(
                f"device={device!r}: CUDA device index must be in [0, "
                f"{torch.cuda.device_count() - 1}]"
            )
        return torch.device("cuda", index)
    if chosen.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device={device!r} was requested but MPS is not available here")
    return chosen


@dataclass(frozen=True)
class AutocastSettings:
    """How to run forward passes under automatic mixed precision on one device.

    Attributes:
        device_type: ``"cuda"``, ``"cpu"`` or ``"mps"``, as :class:`torch.autocast` wants it.
        dtype: The reduced precision, or ``None`` when autocast is off.
        use_grad_scaler: Whether losses need a :class:`torch.amp.GradScaler` (fp16 only: its
            narrow exponent range underflows small gradients).
    """

    device_type: str
    dtype: torch.dtype | None
    use_grad_scaler: bool

    @property
    def enabled(self) -> bool:
        """Whether autocast is on."""
        return self.dtype is not None

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        """Return the context manager to wrap forward passes in.

        Returns:
            A :class:`torch.autocast` context when enabled, else a no-op context.
        """
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Build the gradient scaler that matches these settings.

        Returns:
            A :class:`torch.amp.GradScaler`, disabled (a pass-through) unless fp16 needs it.
        """
        return torch.amp.GradScaler(self.device_type, enabled=self.use_grad_scaler)


def autocast_settings(device: torch.device, amp: AmpMode = "auto") -> AutocastSettings:
    """Pick the mixed-precision mode for a device.

    With ``amp="auto"``: bf16 on CUDA devices that support it (Ampere and newer), fp16 with a
    gradient scaler on older CUDA devices, and full fp32 on CPU and MPS. The CPU is off by default
    because bf16 matmuls are about 100x slower than fp32 on CPUs without AMX; ``amp="bf16"``
    still opts in explicitly.

    Args:
        device: The device the model runs on.
        amp: ``"auto"``, ``"bf16"``, ``"fp16"`` or ``"off"``.

    Returns:
        The autocast settings.

    Raises:
        ValueError: If ``amp`` is not one of the modes, or ``"bf16"`` is forced on a CUDA device
            without bf16 support.
    """
    if amp not in _AMP_MODES:
        raise ConfigError(f"amp={amp!r} is not supported; choose one of {_AMP_MODES}")
    device_type = device.type
    if amp == "off":
        return AutocastSettings(device_type, None, use_grad_scaler=False)
    if amp == "auto":
        if device_type != "cuda":
            return AutocastSettings(device_type, None, use_grad_scaler=False)
        amp = "bf16" if _has_native_bf16(device) else "fp16"
    if amp == "bf16":
        if device_type == "cuda" and not _has_native_bf16(device):
            raise ConfigError(f"amp='bf16' was requested but {device} has no native bf16 support")
        return AutocastSettings(device_type, torch.bfloat16, use_grad_scaler=False)
    return AutocastSettings(device_type, torch.float16, use_grad_scaler=True)


def _has_native_bf16(device: torch.device) -> bool:
    # Emulated bf16 on pre-Ampere GPUs is slower than fp16, so only native support counts.
    if torch.version.hip:
        return True
    return torch.cuda.get_device_capability(device) >= _MIN_BF16_CAPABILITY


def configure_backends(device: torch.device, *, cudnn_benchmark: bool = True) -> None:
    """Set process-wide backend flags that speed training up on ``device``.

    On CUDA this turns on ``torch.backends.cudnn.benchmark``, which times the convolution
    algorithms once per input shape and keeps the fastest (our crops have a fixed size). Nothing
    changes on other devices.

    Args:
        device: The device the model runs on.
        cudnn_benchmark: Whether to enable cuDNN autotuning on CUDA.
    """
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = cudnn_benchmark


def maybe_compile(model: nn.Module, enabled: bool, mode: str = "default") -> nn.Module:
    """Compile a model with :func:`torch.compile` when asked.

    Args:
        model: The model (possibly wrapped in DistributedDataParallel).
        enabled: Whether to compile.
        mode: :func:`torch.compile`'s mode: ``"default"``, ``"reduce-overhead"`` (CUDA
            graphs) or ``"max-autotune"``.

    Returns:
        The compiled module, or ``model`` itself when ``enabled`` is false.
    """
    if not enabled:
        return model
    if mode == "default":
        return cast(nn.Module, torch.compile(model))
    return cast(nn.Module, torch.compile(model, mode=mode))


def move_to_device(
    batch: _T,
    device: torch.device,
    *,
    non_blocking: bool | None = None,
    memory_format: torch.memory_format | None = None,
) -> _T:
    """Move every tensor of a nested batch to a device.

    Tuples (named tuples included), lists and mappings are rebuilt with the same type and
    structure; anything that is not a tensor is returned as it is.

    Args:
        batch: A tensor or a nested tuple/list/mapping of tensors and other values.
        device: The target device.
        non_blocking: Whether copies may be asynchronous; by default they are when the target
            is a CUDA device (effective for pinned host memory).
        memory_format: If given (e.g. :data:`torch.channels_last`), applied to floating-point
            tensors of rank 4, i.e. image batches of shape (B, C, H, W).

    Returns:
        The batch with the same structure, tensors on ``device``.
    """
    if non_blocking is None:
        non_blocking = device.type == "cuda"
    return cast(_T, _move(batch, device, non_blocking, memory_format))


def _move(
    obj: object,
    device: torch.device,
    non_blocking: bool,
    memory_format: torch.memory_format | None,
) -> object:
    if isinstance(obj, torch.Tensor):
        if memory_format is not None and obj.dim() == 4 and obj.is_floating_point():
            return obj.to(device, non_blocking=non_blocking, memory_format=memory_format)
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, tuple):
        items = [_move(item, device, non_blocking, memory_format) for item in obj]
        if hasattr(obj, "_fields"):  # named tuple
            return cast(Callable[..., object], type(obj))(*items)
        return tuple(items)
    if isinstance(obj, list):
        return [_move(item, device, non_blocking, memory_format) for item in obj]
    if isinstance(obj, Mapping):
        moved = {k: _move(v, device, non_blocking, memory_format) for k, v in obj.items()}
        if type(obj) is dict:
            return moved
        try:  # keep OrderedDict & co.; types with other constructors become plain dicts
            return cast(Callable[[dict[object, object]], object], type(obj))(moved)
        except TypeError:
            return moved
    return obj


def _available_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_num_workers(max_workers: int = _MAX_DEFAULT_WORKERS) -> int:
    """Number of DataLoader worker processes to use by default.

    The CPUs this process may run on (its affinity mask, which respects container and ``taskset``
    limits) are shared among the processes ``torchrun`` starts on this node
    (``LOCAL_WORLD_SIZE``); one CPU per process is left to the training loop itself.

    Args:
        max_workers: Upper bound on the result.

    Returns:
        A worker count in ``[0, max_workers]``; ``0`` means loading in the main process.

    Raises:
        ValueError: If ``max_workers`` is negative.
    """
    if max_workers < 0:
        raise ValueError(f"max_workers must be >= 0, got {max_workers}")
    local_world_size = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    per_process = _available_cpus() // local_world_size
    return max(0, min(max_workers, per_process - 1))


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and all CUDA devices).

    Call it once at the start of a run, before building the model, and pass the returned
    generator to the DataLoader (``generator=``; :func:`dataloader_kwargs` does). The loader
    draws its shuffling order and a base seed from it at each epoch, and PyTorch seeds
    ``torch``, ``random`` and NumPy inside every worker from that base seed and the worker
    index, so augmentations drawn in workers are reproducible and differ between workers
    without a ``worker_init_fn``.

    Args:
        seed: A non-negative integer below 2**32.

    Returns:
        A CPU :class:`torch.Generator` seeded with ``seed``.

    Raises:
        ValueError: If ``seed`` is outside ``[0, 2**32)``.
    """
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    random.seed(seed)
    # The legacy global generator on purpose: augmentation code commonly calls np.random.*.
    np.random.seed(seed)  # noqa: NPY002
    torch.manual_seed(seed)  # seeds every CUDA device as well
    return seeded_generator(seed)


def seeded_generator(seed: int) -> torch.Generator:
    """Return a CPU :class:`torch.Generator` seeded with ``seed`` (for a DataLoader).

    Args:
        seed: The seed.

    Returns:
        The generator.
    """
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


class DataLoaderKwargs(TypedDict):
    """Keyword arguments for :class:`torch.utils.data.DataLoader` from :func:`dataloader_kwargs`."""

    num_workers: int
    pin_memory: bool
    persistent_workers: bool
    generator: torch.Generator


def dataloader_kwargs(
    device: torch.device,
    *,
    seed: int,
    num_workers: int | None = None,
    persistent_workers: bool = False,
) -> DataLoaderKwargs:
    """Device-aware, reproducible DataLoader settings.

    Use as ``DataLoader(dataset, batch_size=..., shuffle=True, **dataloader_kwargs(device,
    seed=0))``. Host memory is pinned when the target is a CUDA device so that
    :func:`move_to_device` can copy asynchronously.

    Args:
        device: The device the batches go to.
        seed: Seed of the loader's generator, which decides the shuffling order and the seeds
            of the workers' ``torch``, ``random`` and NumPy generators.
        num_workers: Worker processes; :func:`default_num_workers` when ``None``.
        persistent_workers: Keep workers alive between epochs. Faster with many workers, but
            resuming from a checkpoint then re-seeds the workers, so random augmentations drawn
            in workers after a resume differ from an uninterrupted run.

    Returns:
        The keyword arguments.

    Raises:
        ValueError: If ``num_workers`` is negative.
    """
    workers = default_num_workers() if num_workers is None else num_workers
    if workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {workers}")
    return DataLoaderKwargs(
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=persistent_workers and workers > 0,
        generator=seeded_generator(seed),
    )
