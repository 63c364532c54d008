"""Model checkpoints that cannot run code when loaded.

A checkpoint is written with :func:`torch.save` but holds only tensors and strings: the model's
``state_dict``, its config as JSON (see :mod:`lumbarssl.models.registry`) and metadata as JSON.
:func:`load_checkpoint` reads it with ``torch.load(..., weights_only=True)``, whose unpickler
refuses every object that is not a tensor or a plain container, and rebuilds the model from the
config, so no class is ever unpickled.

The metadata of a model a stage trained holds its **preprocessing recipe** under
:data:`RECIPE_KEY`: a JSON object ``{"kind": "roi" | "localizer", "config": {...}}``, the
fields of a :class:`~lumbarssl.data.recipes.RoiRecipe` or
:class:`~lumbarssl.data.recipes.LocalizerRecipe`. This module stores and returns it as plain
data; :func:`lumbarssl.data.recipes.recipe_from_metadata` rebuilds the typed recipe.

These files hold a trained model. The training loop's resumable state (optimizer, scheduler,
RNG) belongs to :mod:`lumbarssl.training`.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Final, NamedTuple

import torch
from torch import Tensor, nn

import lumbarssl
from lumbarssl._core.atomic import atomic_write
from lumbarssl._core.data_source import DATA_SOURCES as _DATA_SOURCES
from lumbarssl.errors import InputError
from lumbarssl.models.registry import ARCHITECTURE_KEY, build_model, model_config

__all__ = [
    "CHECKPOINT_FORMAT",
    "DATA_SOURCES",
    "RECIPE_KEY",
    "Checkpoint",
    "CheckpointError",
    "load_checkpoint",
    "read_checkpoint",
    "save_checkpoint",
]

#: Value of the ``"format"`` entry that marks a lumbarssl model checkpoint.
CHECKPOINT_FORMAT: Final[str] = "lumbarssl.model-checkpoint"
_FORMAT_VERSION: Final[int] = 1
#: Allowed values of ``metadata["data_source"]``.
DATA_SOURCES: Final[tuple[str, ...]] = _DATA_SOURCES
#: Metadata key of the preprocessing recipe: ``{"kind": ..., "config": {...}}``.
RECIPE_KEY: Final[str] = "recipe"
_MAX_LISTED_KEYS: Final[int] = 10


class CheckpointError(InputError):
    """A checkpoint file is unsafe, malformed, or does not fit its architecture."""


class Checkpoint(NamedTuple):
    """The contents of a checkpoint file, as :func:`read_checkpoint` returns them."""

    #: Config :func:`~lumbarssl.models.build_model` accepts, with ``"architecture"``.
    config: dict[str, object]
    #: Metadata saved with the weights, including ``"lumbarssl_version"``.
    metadata: dict[str, object]
    #: The model's weights and buffers.
    state_dict: dict[str, Tensor]


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    *,
    config: Mapping[str, object] | None = None,
    metadata: Mapping[str, object] | None = None,
    recipe: Mapping[str, object] | None = None,
) -> Path:
    """Write ``model`` to ``path`` atomically (:func:`lumbarssl._core.atomic.atomic_write`).

    The config is checked before anything is written: the model it builds must have exactly
    the keys and shapes of ``model.state_dict()``.

    Args:
        path: Destination file; missing parent folders are created.
        model: The model to save.
        config: JSON-serialisable config with ``"architecture"``; ``None`` asks the model
            (:func:`~lumbarssl.models.model_config`).
        metadata: JSON-serialisable facts about the run, e.g. ``data_source`` (``"real"`` or
            ``"synthetic"``), ``seed``, ``profile``, ``epoch``. ``lumbarssl_version`` and
            ``torch_version`` are added (and overwritten) automatically.
        recipe: The preprocessing recipe as JSON
            (:func:`~lumbarssl.data.recipes.recipe_to_metadata`), stored as
            ``metadata[RECIPE_KEY]``; ``None`` keeps what ``metadata`` holds there.

    Returns:
        The path written.

    Raises:
        ValueError: If the config or metadata is not JSON-serialisable, ``data_source`` is not
            one of :data:`DATA_SOURCES`, or the config does not describe ``model``
            (:class:`CheckpointError`).
    """
    config_dict = dict(config) if config is not None else model_config(model)
    meta = dict(metadata) if metadata is not None else {}
    if recipe is not None:
        meta[RECIPE_KEY] = dict(recipe)
    source = meta.get("data_source")
    if source is not None and source not in DATA_SOURCES:
        raise ValueError(f"metadata['data_source'] must be one of {DATA_SOURCES}, got {source!r}")
    meta["lumbarssl_version"] = lumbarssl.__version__
    meta["torch_version"] = torch.__version__
    config_json = _to_json(config_dict, "config")
    metadata_json = _to_json(meta, "metadata")
    state = model.state_dict()
    _check_fits(build_model(config_dict), state, source="the model being saved")

    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": _FORMAT_VERSION,
        "config": config_json,
        "metadata": metadata_json,
        "state_dict": state,
    }
    target = Path(path)
    atomic_write(target, lambda handle: torch.save(payload, handle))
    return target


def read_checkpoint(
    path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu"
) -> Checkpoint:
    """Read a checkpoint's config, metadata and weights without building the model.

    Args:
        path: A file written by :func:`save_checkpoint`.
        map_location: Device for the tensors.

    Returns:
        The :class:`Checkpoint`.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        CheckpointError: If the file holds anything but tensors and plain containers (a
            pickle payload that could run code), or is not a lumbarssl model checkpoint.
    """
    try:
        payload = torch.load(Path(path), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refused to load; the file contains objects other than tensors and plain "
            f"containers, which could run code when unpickled ({_unpickler_reason(exc)})"
        ) from exc
    except (RuntimeError, EOFError) as exc:
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path}: not a lumbarssl model checkpoint (no format entry {CHECKPOINT_FORMAT!r})"
        )
    version = payload.get("format_version")
    if not isinstance(version, int) or version > _FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version!r} is not supported by lumbarssl "
            f"{lumbarssl.__version__} (supports up to {_FORMAT_VERSION})"
        )
    config = _from_json(payload.get("config"), "config", path)
    metadata = _from_json(payload.get("metadata"), "metadata", path)
    state = payload.get("state_dict")
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()
    ):
        raise CheckpointError(f"{path}: 'state_dict' is not a mapping of names to tensors")
    return Checkpoint(config=config, metadata=metadata, state_dict=state)


def load_checkpoint(
    path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, object]]:
    """Rebuild a model from its config and load its weights.

    Args:
        path: A file written by :func:`save_checkpoint`.
        map_location: Device for the tensors and the model.

    Returns:
        ``(model, metadata)``; the model is in evaluation mode (call ``.train()`` to train on).

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        CheckpointError: If the file is unsafe or malformed (see :func:`read_checkpoint`), or
            its weights do not fit the architecture of its config; the message lists the
            missing, unexpected and mis-shaped keys.
    """
    checkpoint = read_checkpoint(path, map_location=map_location)
    try:
        model = build_model(checkpoint.config)
    except ValueError as exc:
        raise CheckpointError(f"{path}: cannot rebuild the model: {exc}") from exc
    _check_fits(model, checkpoint.state_dict, source=str(path))
    model.to(map_location).load_state_dict(checkpoint.state_dict, strict=True)
    return model.eval(), checkpoint.metadata


def _check_fits(model: nn.Module, state: Mapping[str, Tensor], *, source: str) -> None:
    """Raise CheckpointError naming every key where ``state`` does not fit ``model``."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{key} (checkpoint {tuple(state[key].shape)}, model {tuple(value.shape)})"
        for key, value in expected.items()
        if key in state and state[key].shape != value.shape
    ]
    if not (missing or unexpected or mismatched):
        return
    arch = getattr(model, "to_config", None)
    name = arch()[ARCHITECTURE_KEY] if callable(arch) else type(model).__name__
    problems = [
        f"{label}: {_listing(keys)}"
        for label, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mismatched),
        )
        if keys
    ]
    raise CheckpointError(
        f"{source}: weights do not fit architecture {name!r}; " + "; ".join(problems)
    )


def _unpickler_reason(exc: Exception) -> str:
    """The one line of torch's weights-only error that says what was refused."""
    marker = "WeightsUnpickler error:"
    for line in str(exc).splitlines():
        if marker in line:
            return line.split(marker, 1)[1].split(". Please", 1)[0].strip()
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED_KEYS])
    more = len(keys) - _MAX_LISTED_KEYS
    return shown + (f", ... and {more} more" if more > 0 else "")


def _to_json(value: Mapping[str, object], what: str) -> str:
    try:
        return json.dumps(value, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be JSON-serialisable: {exc}") from exc


def _from_json(text: object, what: str, path: str | os.PathLike[str]) -> dict[str, object]:
    if not isinstance(text, str):
        raise CheckpointError(f"{path}: {what!r} entry is missing or not a JSON string")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: {what!r} entry is not valid JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: {what!r} entry is not a JSON object")
    return value
