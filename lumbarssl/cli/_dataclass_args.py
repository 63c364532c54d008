"""Generate argparse options from a config dataclass, and build the config back.

Every field becomes ``--field-name`` with the field's default and ``metadata["help"]``, so
the command line offers every hyper-parameter with the paper's value as its default.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, TypeVar

from lumbarssl._core.config import ConfigBase

_T = TypeVar("_T")


def _unwrap_optional(hint: Any) -> tuple[Any, bool]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return hint, False


def _none_or(kind: Any) -> Any:
    def parse(text: str) -> Any:
        return None if text.lower() == "none" else kind(text)

    parse.__name__ = getattr(kind, "__name__", "value")
    return parse


def _dashes_to_underscores(choices: list[str]) -> Any:
    # Command lines spell choices with dashes (linear-probe); configs with underscores.
    def parse(text: str) -> str:
        candidate = text.replace("-", "_")
        return candidate if candidate in choices else text

    parse.__name__ = "choice"
    return parse


def _is_config(hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, ConfigBase)


def add_dataclass_arguments(
    parser: argparse.ArgumentParser, cls: type[Any], *, skip: tuple[str, ...] = ()
) -> None:
    """Add one ``--option`` per field of a dataclass.

    Args:
        parser: Parser (or argument group) to extend.
        cls: A dataclass whose fields have defaults.
        skip: Field names not to expose (set by the command itself).

    Raises:
        TypeError: If a field's type has no command-line form.
    """
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        if _is_config(hints[field.name]):
            # A nested config (e.g. a stage's runtime): its fields become unprefixed options.
            add_dataclass_arguments(parser, hints[field.name], skip=skip)
            continue
        flag = "--" + field.name.replace("_", "-")
        help_text = str(field.metadata.get("help", ""))
        default = field.default
        hint, optional = _unwrap_optional(hints[field.name])
        origin = typing.get_origin(hint)
        kwargs: dict[str, Any] = {"dest": field.name, "default": default}
        if hint is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif origin is typing.Literal:
            choices = [str(c) for c in typing.get_args(hint)]
            kwargs["choices"] = choices
            kwargs["type"] = _dashes_to_underscores(choices)
            kwargs["metavar"] = "{" + ",".join(c.replace("_", "-") for c in choices) + "}"
        elif origin is tuple:
            item = typing.get_args(hint)[0]
            kwargs.update(nargs="+", type=item, metavar=item.__name__.upper())
        elif hint in (int, float, str):
            kwargs["type"] = _none_or(hint) if optional else hint
            kwargs["metavar"] = hint.__name__.upper()
        else:
            raise TypeError(f"field {cls.__name__}.{field.name} has unsupported type {hint!r}")
        shown = "none" if default is None else default
        if isinstance(shown, tuple):
            shown = " ".join(str(v) for v in shown)
        kwargs["help"] = f"{help_text} (default: {shown})".strip()
        parser.add_argument(flag, **kwargs)


def dataclass_from_args(cls: type[_T], args: argparse.Namespace, **overrides: Any) -> _T:
    """Build a dataclass from parsed arguments.

    Args:
        cls: The dataclass given to :func:`add_dataclass_arguments`.
        args: Parsed namespace.
        **overrides: Values for fields the command sets itself.

    Returns:
        The config instance (its ``__post_init__`` validates the values).
    """
    values: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        if _is_config(hints[field.name]) and field.name not in overrides:
            values[field.name] = dataclass_from_args(hints[field.name], args, **overrides)
            continue
        if field.name in overrides:
            value = overrides[field.name]
        elif hasattr(args, field.name):
            value = getattr(args, field.name)
        else:
            continue
        values[field.name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)
