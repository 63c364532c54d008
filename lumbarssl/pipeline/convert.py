"""Checkpoints and their preprocessing recipes: read the typed recipe, convert old files.

A model a stage trains carries its :class:`~lumbarssl.data.recipes.RoiRecipe` or
:class:`~lumbarssl.data.recipes.LocalizerRecipe` in its metadata
(:data:`~lumbarssl.models.checkpoint.RECIPE_KEY`). Checkpoints written before recipes existed
have none and are refused where inputs are built (evaluation, ``predict``);
:func:`convert_checkpoint` adds the recipe they were trained with.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

from lumbarssl.data.cache import PreparedCache
from lumbarssl.data.recipes import (
    LocalizerRecipe,
    Recipe,
    RoiRecipe,
    recipe_from_metadata,
    recipe_to_metadata,
)
from lumbarssl.errors import InputError
from lumbarssl.models import Localizer2p5D, load_checkpoint, read_checkpoint, save_checkpoint
from lumbarssl.models.checkpoint import RECIPE_KEY
from lumbarssl.models.registry import ARCHITECTURE_KEY

__all__ = ["convert_checkpoint", "legacy_recipe", "load_recipe"]

_R = TypeVar("_R", RoiRecipe, LocalizerRecipe)
#: Metadata the checkpoint writer adds itself.
_WRITER_KEYS = ("lumbarssl_version", "torch_version")


def load_recipe(
    metadata: Mapping[str, object], expected: type[_R], path: str | os.PathLike[str]
) -> _R:
    """The typed recipe of a checkpoint, from the metadata :func:`load_checkpoint` returned.

    Args:
        metadata: The checkpoint's metadata.
        expected: :class:`~lumbarssl.data.recipes.RoiRecipe` (classifier, encoder) or
            :class:`~lumbarssl.data.recipes.LocalizerRecipe` (localizer).
        path: The checkpoint, for messages.

    Returns:
        The recipe.

    Raises:
        InputError: If the checkpoint has no recipe (the message says how to convert it), or
            one of the other kind.
    """
    return recipe_from_metadata(metadata.get(RECIPE_KEY), expected, str(path))


def convert_checkpoint(
    path: str | os.PathLike[str],
    recipe: Recipe,
    *,
    out: str | os.PathLike[str] | None = None,
) -> Path:
    """Add a preprocessing recipe to a checkpoint written before recipes existed.

    The recipe must be the one the model was trained with: for a classifier, its
    ``input_size`` and ``mean``/``std`` were stored as ``input_size``, ``roi_mean`` and
    ``roi_std`` in the old metadata, its ``roi_size`` and ``pad_value`` are those of the
    cache (``prepare_meta.json``); a localizer's ``input_size`` was stored as
    ``input_size`` and its ``stack_size`` is the cache's ``localizer_size``.

    Args:
        path: The old ``model.pt``.
        recipe: The recipe to store.
        out: Where to write the converted checkpoint; ``path`` itself (atomically) when
            ``None``.

    Returns:
        The path written.

    Raises:
        InputError: If the checkpoint already holds a different recipe, or the recipe's kind
            does not fit the model (a localizer needs a LocalizerRecipe, every other model a
            RoiRecipe).
    """
    model, metadata = load_checkpoint(path)
    wants_localizer = isinstance(model, Localizer2p5D)
    if wants_localizer != isinstance(recipe, LocalizerRecipe):
        kind = "LocalizerRecipe" if wants_localizer else "RoiRecipe"
        raise InputError(
            f"{path}: holds a {type(model).__name__}, which needs a {kind}, "
            f"got a {type(recipe).__name__}"
        )
    stored = recipe_to_metadata(recipe)
    existing = metadata.get(RECIPE_KEY)
    if existing is not None and existing != stored:
        raise InputError(f"{path}: already holds another recipe ({existing}); not replacing it")
    kept = {k: v for k, v in metadata.items() if k not in _WRITER_KEYS}
    return save_checkpoint(Path(path if out is None else out), model, metadata=kept, recipe=stored)


def legacy_recipe(path: str | os.PathLike[str], cache: PreparedCache | str | Path) -> Recipe:
    """The recipe an old checkpoint was trained with, from its loose metadata and its cache.

    Old classifier and encoder checkpoints stored ``input_size``, ``roi_mean`` and
    ``roi_std`` (and a classifier ``roi_size``); the padding and the localizer's stack side
    were never stored and are read from the cache the model was trained on. Pass the result
    to :func:`convert_checkpoint`.

    Args:
        path: The old ``model.pt``.
        cache: The prepared cache the model was trained on (or its directory).

    Returns:
        A :class:`~lumbarssl.data.recipes.LocalizerRecipe` for a localizer, a
        :class:`~lumbarssl.data.recipes.RoiRecipe` otherwise.

    Raises:
        InputError: If the metadata lacks a number the recipe needs.
        DataError: If the cache's ROIs are not the size the checkpoint says.
    """
    checkpoint = read_checkpoint(path)
    metadata = checkpoint.metadata
    if not isinstance(cache, PreparedCache):
        cache = PreparedCache.open(cache)

    def number(key: str) -> float:
        value = metadata.get(key)
        if not isinstance(value, int | float):
            raise InputError(
                f"{path}: old metadata has no number {key!r} (got {value!r}); build the "
                "recipe by hand and pass it to convert_checkpoint"
            )
        return float(value)

    if checkpoint.config.get(ARCHITECTURE_KEY) == "localizer_2p5d":
        return LocalizerRecipe.from_cache(cache, input_size=int(number("input_size")))
    recipe = RoiRecipe.from_cache(
        cache,
        input_size=int(number("input_size")),
        mean=number("roi_mean"),
        std=number("roi_std"),
    )
    if "roi_size" in metadata and int(number("roi_size")) != recipe.roi_size:
        raise InputError(
            f"{path}: trained on {int(number('roi_size'))}-px ROIs, the cache holds "
            f"{recipe.roi_size}-px ones; pass the cache the model was trained on"
        )
    return recipe
