"""Full training-state checkpoints: atomic writes, RNG capture, safe loading.

A checkpoint holds everything needed to continue a run as if it had never stopped: model,
optimizer, scheduler and gradient-scaler states, every random number generator (torch CPU and
CUDA, NumPy's global generator, Python's ``random``, and the generators of the training
DataLoader; the trainer re-seeds those from their initial seed and the epoch, so that the
shuffle does not depend on how many workers drew from them), the epoch counter, the history
and the trainer configuration. Everything is stored as tensors, numbers, strings, lists and
dicts, so checkpoints load with ``torch.load(weights_only=True)``, which never runs pickled
code.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import BinaryIO, TypedDict, cast

import numpy as np
import torch
from torch import Tensor

from lumbarssl._core.atomic import atomic_write
from lumbarssl.errors import InputError, MissingFileError
from lumbarssl.training.history import JSONValue

__all__ = [
    "CHECKPOINT_FORMAT_VERSION",
    "NumpyRngState",
    "PythonRngState",
    "RngState",
    "TrainerProgress",
    "TrainingState",
    "atomic_save",
    "capture_rng_state",
    "load_training_state",
    "restore_rng_state",
]

CHECKPOINT_FORMAT_VERSION = 1
"""Version of the :class:`TrainingState` layout; bumped on incompatible changes."""

_NUMPY_BIT_GENERATOR = "MT19937"


class NumpyRngState(TypedDict):
    """NumPy's legacy global generator state (``np.random.get_state()``) as plain values."""

    key: list[int]
    pos: int
    has_gauss: int
    cached_gaussian: float


class PythonRngState(TypedDict):
    """Python's ``random.getstate()`` as plain values."""

    version: int
    internal: list[int]
    gauss_next: float | None


class RngState(TypedDict):
    """Every random number generator a training step may draw from, for one process."""

    torch: Tensor
    cuda: list[Tensor]
    numpy: NumpyRngState
    python: PythonRngState
    loader: list[Tensor]


class TrainerProgress(TypedDict):
    """Bookkeeping for best-checkpoint selection and early stopping."""

    best_value: float | None
    best_epoch: int | None
    bad_epochs: int
    stopped_early: bool


class TrainingState(TypedDict):
    """What ``last.pt`` and ``best.pt`` contain.

    Attributes:
        format_version: :data:`CHECKPOINT_FORMAT_VERSION` of the writer.
        epoch: Number of completed epochs.
        model: The model's ``state_dict`` (unwrapped from DDP or ``torch.compile``).
        optimizer: The optimizer's ``state_dict``.
        scheduler: The scheduler's ``state_dict``, or ``None`` without a scheduler.
        scaler: The gradient scaler's ``state_dict``, or ``None`` when it is not in use.
        rng: One :class:`RngState` per process, indexed by rank.
        history: :meth:`~lumbarssl.training.EpochRecord.to_dict` of each completed epoch.
        config: :meth:`~lumbarssl.training.TrainerConfig.to_dict` of the run.
        progress: Best monitored value, its epoch, epochs without improvement, and whether
            early stopping ended the run.
    """

    format_version: int
    epoch: int
    model: dict[str, Tensor]
    optimizer: dict[str, object]
    scheduler: dict[str, object] | None
    scaler: dict[str, object] | None
    rng: list[RngState]
    history: list[dict[str, JSONValue]]
    config: dict[str, object]
    progress: TrainerProgress


def capture_rng_state(generators: Sequence[torch.Generator] = ()) -> RngState:
    """Snapshot the global random number generators and some extra ones.

    Args:
        generators: Additional generators, e.g. those of a DataLoader and its sampler.

    Returns:
        The states, as tensors and plain Python values only.
    """
    _, key, pos, has_gauss, cached_gaussian = cast(
        tuple[str, np.ndarray, int, int, float],
        np.random.get_state(legacy=True),  # noqa: NPY002 (saving the global generator)
    )
    version, internal, gauss_next = random.getstate()
    # An uninitialised CUDA context has drawn nothing; initialising it here would cost memory.
    cuda_used: bool = torch.cuda.is_initialized()  # type: ignore[no-untyped-call]
    return RngState(
        torch=torch.get_rng_state(),
        cuda=list(torch.cuda.get_rng_state_all()) if cuda_used else [],
        numpy=NumpyRngState(
            key=[int(k) for k in key],
            pos=int(pos),
            has_gauss=int(has_gauss),
            cached_gaussian=float(cached_gaussian),
        ),
        python=PythonRngState(version=int(version), internal=list(internal), gauss_next=gauss_next),
        loader=[generator.get_state() for generator in generators],
    )


def restore_rng_state(state: RngState, generators: Sequence[torch.Generator] = ()) -> None:
    """Put the generators back into a state from :func:`capture_rng_state`.

    CUDA states are restored when this machine has as many CUDA devices as the one that saved
    them, and skipped otherwise (e.g. a GPU run continued on a CPU cannot be bit-exact anyway).

    Args:
        state: The saved states.
        generators: The extra generators, in the order given to :func:`capture_rng_state`.

    Raises:
        ValueError: If the number of extra generators differs from the saved one.
    """
    if len(generators) != len(state["loader"]):
        raise ValueError(
            f"the checkpoint holds {len(state['loader'])} DataLoader generator state(s) but "
            f"the training loader has {len(generators)} generator(s); build the loader the "
            "same way as in the interrupted run"
        )
    torch.set_rng_state(state["torch"])
    cuda_states = state["cuda"]
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
    numpy_state = state["numpy"]
    np.random.set_state(  # noqa: NPY002 (restoring the global generator)
        (
            _NUMPY_BIT_GENERATOR,
            np.asarray(numpy_state["key"], dtype=np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    python_state = state["python"]
    random.setstate(
        (python_state["version"], tuple(python_state["internal"]), python_state["gauss_next"])
    )
    for generator, saved in zip(generators, state["loader"], strict=True):
        generator.set_state(saved)


def atomic_save(obj: object, path: str | Path) -> None:
    """Save with :func:`torch.save` so that ``path`` is either fully old or fully new.

    The object is written to a temporary file in the same directory, flushed and fsynced, then
    renamed over ``path`` (:func:`os.replace` is atomic). A failure or a crash part-way leaves
    any previous file at ``path`` untouched.

    Args:
        obj: What to save; use only tensors and plain containers to keep it loadable with
            ``weights_only=True``.
        path: The destination; parent directories are created.
    """

    def write(handle: BinaryIO) -> None:
        torch.save(obj, handle)

    atomic_write(Path(path), write)


_REQUIRED_KEYS = tuple(sorted(TrainingState.__required_keys__))


def load_training_state(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> TrainingState:
    """Load a training checkpoint written by the :class:`~lumbarssl.training.Trainer`.

    Loading uses ``torch.load(weights_only=True)``: no code stored in the file is executed.

    Args:
        path: ``last.pt`` or ``best.pt`` of a run.
        map_location: Where to put the tensors.

    Returns:
        The checkpoint contents.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the file is not a readable checkpoint of this format (one line naming
            the file and what torch refused).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"no training checkpoint at {path}")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise InputError(
            f"{path} is not a readable training checkpoint ({_load_failure(err)}): only "
            "tensors and plain containers are loaded, never code; continue from a last.pt "
            "that lumbarssl wrote, or start again in a new out_dir"
        ) from err
    if not isinstance(data, Mapping):
        raise InputError(f"{path} holds a {type(data).__name__}, not a training checkpoint")
    missing = [key for key in _REQUIRED_KEYS if key not in data]
    if missing:
        raise InputError(f"{path} is not a training checkpoint: it lacks the keys {missing}")
    if data["format_version"] != CHECKPOINT_FORMAT_VERSION:
        raise InputError(
            f"{path} has checkpoint format version {data['format_version']}; this version of "
            f"lumbarssl reads version {CHECKPOINT_FORMAT_VERSION}"
        )
    return cast(TrainingState, dict(data))


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# Lines of torch's weights-only message that explain the option rather than the file.
_BOILERPLATE = (
    "weights only load failed",
    "in pytorch 2.6",
    "re-running `torch.load`",
    "please file an issue",
    "check the documentation",
    "do it only if",
    "you can use",
    "or use",
    "weights_only",
)


def _load_failure(err: BaseException) -> str:
    """The first meaningful line of a ``torch.load`` error, without ANSI codes or advice.

    torch's weights-only refusal spans several lines, may carry terminal colour codes and
    suggests ``weights_only=False``, which would run the file's code: that advice is dropped.
    """
    text = _ANSI.sub("", str(err))
    for raw in text.splitlines():
        line = raw.split("WeightsUnpickler error:", 1)[-1].strip()
        if line and not any(marker in line.lower() for marker in _BOILERPLATE):
            return line.split(". ", 1)[0].rstrip(".")
    return type(err).__name__
