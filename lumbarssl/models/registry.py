"""A small registry that rebuilds models from JSON-serialisable configs.

A config is a mapping with an ``"architecture"`` key naming a registered builder; the other keys
are the builder's keyword arguments, and a nested part (the encoder of a classifier, say) is
itself a config. Checkpoints (:mod:`lumbarssl.models.checkpoint`) store such a config next to
the weights, so loading never has to unpickle a class.

Example:
    >>> from lumbarssl.models import build_model, model_config, resnet18_encoder
    >>> config = model_config(resnet18_encoder(in_chans=1))
    >>> config
    {'architecture': 'resnet18_encoder', 'in_chans': 1}
    >>> encoder = build_model(config)
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Mapping
from typing import Final, Protocol, TypeVar, runtime_checkable

from torch import nn

__all__ = [
    "ARCHITECTURE_KEY",
    "ConfigurableModel",
    "available_models",
    "build_model",
    "model_config",
    "register_describer",
    "register_model",
]

#: Key of a config that names the registered builder.
ARCHITECTURE_KEY: Final[str] = "architecture"

ModelBuilder = Callable[..., nn.Module]
#: Describes a module that has no ``to_config`` (a torchvision network, say), or returns None.
ModelDescriber = Callable[[nn.Module], dict[str, object] | None]
_BuilderT = TypeVar("_BuilderT", bound=ModelBuilder)
_DescriberT = TypeVar("_DescriberT", bound=ModelDescriber)
_BUILDERS: dict[str, ModelBuilder] = {}
_DESCRIBERS: list[ModelDescriber] = []


@runtime_checkable
class ConfigurableModel(Protocol):
    """A module that can describe itself as a config :func:`build_model` accepts."""

    def to_config(self) -> dict[str, object]:
        """Return a JSON-serialisable config whose ``"architecture"`` is registered."""
        ...


def register_model(name: str) -> Callable[[_BuilderT], _BuilderT]:
    """Register a builder under ``name`` (decorator).

    The builder takes the config's other keys as keyword arguments and returns a freshly
    initialised module. It must never download weights: checkpoints supply them.

    Args:
        name: Architecture name stored in configs.

    Returns:
        A decorator that registers the builder and returns it unchanged.

    Raises:
        ValueError: If ``name`` is empty or already registered.
    """
    if not name:
        raise ValueError("architecture name must be a non-empty string")

    def decorator(builder: _BuilderT) -> _BuilderT:
        if name in _BUILDERS:
            raise ValueError(f"architecture {name!r} is already registered")
        _BUILDERS[name] = builder
        return builder

    return decorator


def register_describer(describer: _DescriberT) -> _DescriberT:
    """Register a function that describes modules without ``to_config`` (decorator).

    :func:`model_config` asks each registered describer in turn; the first config returned
    wins. This is how a builder of a foreign class (the torchvision ResNet-18 of
    :func:`~lumbarssl.models.resnet18_encoder`) makes its modules describable.

    Args:
        describer: Returns the module's config, or ``None`` if it does not recognise it.

    Returns:
        ``describer`` unchanged.
    """
    if describer not in _DESCRIBERS:
        _DESCRIBERS.append(describer)
    return describer


def available_models() -> tuple[str, ...]:
    """Names of the registered architectures, sorted."""
    return tuple(sorted(_BUILDERS))


def build_model(config: Mapping[str, object]) -> nn.Module:
    """Build a randomly initialised model from a config.

    Args:
        config: Mapping with ``"architecture"`` and the builder's keyword arguments.

    Returns:
        The module, in training mode, with freshly initialised weights.

    Raises:
        ValueError: If the architecture is missing or unknown, or the arguments do not fit the
            builder's signature.
    """
    name = config.get(ARCHITECTURE_KEY)
    if not isinstance(name, str):
        raise ValueError(f"config needs a string {ARCHITECTURE_KEY!r} key, got {dict(config)!r}")
    if name not in _BUILDERS:
        raise ValueError(
            f"unknown architecture {name!r}; registered: {', '.join(available_models())}"
        )
    builder = _BUILDERS[name]
    kwargs = {k: v for k, v in config.items() if k != ARCHITECTURE_KEY}
    try:
        inspect.signature(builder).bind(**kwargs)
    except TypeError as exc:
        raise ValueError(f"config does not fit architecture {name!r}: {exc}") from exc
    return builder(**kwargs)


def model_config(model: nn.Module) -> dict[str, object]:
    """Describe ``model`` as a JSON-serialisable config for :func:`build_model`.

    Works for every module of :mod:`lumbarssl.models` (they implement
    :class:`ConfigurableModel`) and for any module a registered describer recognises
    (:func:`register_describer`: the torchvision ResNet-18 that
    :func:`~lumbarssl.models.resnet18_encoder` returns).

    Args:
        model: The module to describe.

    Returns:
        The config, including ``"architecture"``.

    Raises:
        ValueError: If the module cannot describe itself, or its config is not JSON-serialisable.
    """
    if isinstance(model, ConfigurableModel):
        config = model.to_config()
    else:
        found = next(
            (c for c in (describe(model) for describe in _DESCRIBERS) if c is not None), None
        )
        if found is None:
            raise ValueError(
                f"cannot describe a {type(model).__name__} as a config; implement "
                "to_config() and register a builder, or pass config= explicitly"
            )
        config = found
    try:
        json.dumps(config)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"config of {type(model).__name__} is not JSON-serialisable: {exc}"
        ) from exc
    return config
