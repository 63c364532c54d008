"""Generate argparse options from a config dataclass, and build the config back.

Every field becomes ``--field-name`` with the field's default and ``metadata["help"]`` (or,
when a field has no such metadata, its line in the class docstring's ``Attributes:`` or
``Args:`` section), so the command line offers every setting with the config's value as its
default. A field whose type is itself a config dataclass (``StageConfig.runtime:
RuntimeConfig``) is flattened: its fields become unprefixed options (``--device``, ``--amp``),
so the command line does not depend on how the settings are grouped.

The options are added with :data:`argparse.SUPPRESS` as their default, so the parsed namespace
holds exactly the options that were typed. :func:`config_from_args` lays them over the values
read from a saved config (``--config``) and those over the dataclass defaults: an explicitly
typed option always wins, even when its value equals the default.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any, TypeVar

from lumbarssl.errors import ConfigError

__all__ = [
    "add_dataclass_arguments",
    "config_from_args",
    "dataclass_from_args",
    "flatten_config_dict",
    "leaf_fields",
]

_T = TypeVar("_T")


@dataclasses.dataclass(frozen=True)
class Leaf:
    """One command-line option: a non-config field, possibly inside nested config fields.

    Attributes:
        name: The field's name, which is also the option's ``dest`` (``--name-with-dashes``).
        path: Field names from the top config down to this field, ``name`` last.
        hint: The field's type.
        field: The dataclass field.
        owner: The dataclass that declares the field.
        default: The default value (``dataclasses.MISSING`` when the field has none).
    """

    name: str
    path: tuple[str, ...]
    hint: Any
    field: dataclasses.Field[Any]
    owner: type
    default: Any


def _unwrap_optional(hint: Any) -> tuple[Any, bool]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return hint, False


def _is_config(hint: Any) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def _field_default(field: dataclasses.Field[Any]) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def leaf_fields(cls: type[Any]) -> dict[str, Leaf]:
    """Return every option of ``cls``: its fields, with nested config fields flattened.

    Args:
        cls: A config dataclass.

    Returns:
        Option name to :class:`Leaf`, in field order.

    Raises:
        TypeError: If two fields (at any depth) share a name, so their options would clash.
    """
    leaves: dict[str, Leaf] = {}
    _collect(cls, (), dataclasses.MISSING, leaves)
    return leaves


def _collect(cls: type[Any], prefix: tuple[str, ...], instance: Any, out: dict[str, Leaf]) -> None:
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        default = (
            getattr(instance, field.name)
            if instance is not dataclasses.MISSING
            else _field_default(field)
        )
        if _is_config(hints[field.name]):
            _collect(hints[field.name], (*prefix, field.name), default, out)
            continue
        if field.name in out:
            clash = ".".join(out[field.name].path)
            raise TypeError(
                f"{cls.__name__}.{field.name} and {clash} would both be --"
                + field.name.replace("_", "-")
            )
        out[field.name] = Leaf(
            field.name, (*prefix, field.name), hints[field.name], field, cls, default
        )


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


_SECTION = re.compile(r"^\s*(Attributes|Args|Arguments|Parameters):\s*$")


def _docstring_help(cls: type) -> dict[str, str]:
    """Map field names to their entry in the docstring of ``cls`` (or of a base class)."""
    found: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        doc = inspect.getdoc(klass) if "__doc__" in vars(klass) else None
        if not doc:
            continue
        in_section = False
        current: str | None = None
        for line in doc.splitlines():
            if _SECTION.match(line):
                in_section, current = True, None
                continue
            if not in_section:
                continue
            if line and not line.startswith(" "):
                in_section = False  # the next section (Raises:, Example:) begins
                continue
            entry = re.match(r"^    (\w+)(?: \([^)]*\))?: (.*)$", line)
            if entry:
                current = entry.group(1)
                found[current] = entry.group(2).strip()
            elif current and line.startswith("        "):
                found[current] += " " + line.strip()
    return {name: text.replace("``", "").rstrip(".") for name, text in found.items()}


def _shown(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, tuple | list):
        return " ".join(str(v) for v in value)
    return str(value)


def add_dataclass_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type[Any],
    *,
    skip: tuple[str, ...] = (),
    positional: tuple[str, ...] = (),
    aliases: Mapping[str, tuple[str, ...]] | None = None,
    negations: Mapping[str, tuple[str, ...]] | None = None,
) -> None:
    """Add one option per field of a config dataclass (nested configs flattened).

    Every option's default is :data:`argparse.SUPPRESS`: the namespace holds only what was
    typed, and :func:`config_from_args` supplies the rest. The help text shows the default.

    Args:
        parser: Parser (or argument group) to extend.
        cls: A config dataclass.
        skip: Field names not to expose (set by the command itself).
        positional: Field names given as positional arguments, in this order.
        aliases: Field name to extra option strings (``{"n_studies": ("--studies",)}``), so
            that older spellings keep working.
        negations: Boolean field name to extra option strings that set it to ``False``
            (``{"progress": ("--quiet",)}``).

    Raises:
        TypeError: If a field's type has no command-line form, or two options clash.
    """
    aliases = aliases or {}
    negations = negations or {}
    leaves = leaf_fields(cls)
    helps: dict[type, dict[str, str]] = {}
    for name in positional:
        leaf = leaves[name]
        kind, _ = _unwrap_optional(leaf.hint)
        parser.add_argument(
            leaf.name,
            metavar=name.upper(),
            type=kind if kind in (int, float, str) else str,
            help=_help_of(leaf, helps).replace("%", "%%"),
        )
    for leaf in leaves.values():
        if leaf.name in skip or leaf.name in positional:
            continue
        flags = ["--" + leaf.name.replace("_", "-"), *aliases.get(leaf.name, ())]
        kwargs = _option_kwargs(leaf)
        required = leaf.default is dataclasses.MISSING
        default_text = "required" if required else f"default: {_shown(leaf.default)}"
        kwargs["help"] = f"{_help_of(leaf, helps)} ({default_text})".strip().replace("%", "%%")
        # Not ``required=True`` for argparse: a --config file may supply the value; a value
        # still missing is reported by config_from_args.
        parser.add_argument(*flags, dest=leaf.name, default=argparse.SUPPRESS, **kwargs)
        if leaf.name in negations:
            parser.add_argument(
                *negations[leaf.name],
                dest=leaf.name,
                action="store_const",
                const=False,
                default=argparse.SUPPRESS,
                help=f"same as --no-{leaf.name.replace('_', '-')}",
            )


def _help_of(leaf: Leaf, cache: dict[type, dict[str, str]]) -> str:
    text = leaf.field.metadata.get("help")
    if text is not None:
        return str(text).replace("%%", "%")
    if leaf.owner not in cache:
        cache[leaf.owner] = _docstring_help(leaf.owner)
    return cache[leaf.owner].get(leaf.name, "")


def _option_kwargs(leaf: Leaf) -> dict[str, Any]:
    hint, optional = _unwrap_optional(leaf.hint)
    origin = typing.get_origin(hint)
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is typing.Literal:
        choices = [str(c) for c in typing.get_args(hint)]
        return {
            "choices": choices,
            "type": _dashes_to_underscores(choices),
            "metavar": "{" + ",".join(c.replace("_", "-") for c in choices) + "}",
        }
    if origin is tuple:
        items = typing.get_args(hint)
        item = items[0]
        if item not in (int, float, str) or any(i not in (item, Ellipsis) for i in items):
            raise TypeError(f"field {leaf.owner.__name__}.{leaf.name}: unsupported {hint!r}")
        nargs: int | str = "+" if Ellipsis in items else len(items)
        return {"nargs": nargs, "type": item, "metavar": item.__name__.upper()}
    if hint in (int, float, str):
        return {
            "type": _none_or(hint) if optional else hint,
            "metavar": hint.__name__.upper(),
        }
    if isinstance(hint, type) and issubclass(hint, PurePath):
        return {"type": _none_or(Path) if optional else Path, "metavar": "PATH"}
    raise TypeError(f"field {leaf.owner.__name__}.{leaf.name} has unsupported type {hint!r}")


def flatten_config_dict(cls: type[Any], data: Mapping[str, Any]) -> dict[str, Any]:
    """Turn a saved config (nested as :meth:`to_dict` writes it, or flat) into option values.

    A key may name a top-level field, a nested config field (whose value is then a mapping of
    its fields), or directly a field inside a nested config: so a config saved before its
    fields were grouped still reads.

    Args:
        cls: The config dataclass.
        data: The saved values.

    Returns:
        Option name to value.

    Raises:
        ConfigError: If a key is not a field at any depth; the message lists the known keys.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{cls.__name__} expects a JSON object, got {type(data).__name__}")
    leaves = leaf_fields(cls)
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in hints and _is_config(hints[key]) and isinstance(value, Mapping):
            out.update(flatten_config_dict(hints[key], value))
        elif key in leaves:
            out[key] = value
        else:
            known = sorted(f.name for f in dataclasses.fields(cls))
            raise ConfigError(f"unknown {cls.__name__} key {key!r}; known keys: {', '.join(known)}")
    return out


def config_from_args(
    cls: type[_T],
    args: argparse.Namespace,
    *,
    saved: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> _T:
    """Build a config: dataclass defaults, then ``saved``, then typed options, then overrides.

    Args:
        cls: The dataclass given to :func:`add_dataclass_arguments`.
        args: Parsed namespace; holds only the typed options (their default is SUPPRESS).
        saved: Values read from a ``--config`` file (nested or flat, see
            :func:`flatten_config_dict`).
        overrides: Values for fields the command sets itself, by option name.

    Returns:
        The config instance (its ``__post_init__`` validates the values).

    Raises:
        ConfigError: If ``saved`` names an unknown key, or a field without default has no value.
        ValueError: If the config rejects a value.
    """
    leaves = leaf_fields(cls)
    values: dict[str, Any] = flatten_config_dict(cls, saved) if saved else {}
    values.update({name: getattr(args, name) for name in leaves if hasattr(args, name)})
    values.update(overrides or {})
    missing = [n for n, leaf in leaves.items() if leaf.default is dataclasses.MISSING]
    missing = [n for n in missing if n not in values]
    if missing:
        flags = ", ".join("--" + n.replace("_", "-") for n in missing)
        raise ConfigError(
            f"the following settings are required: {flags} (or give them in --config)"
        )
    return cls(**_build_kwargs(cls, values, leaves, ()))


def _build_kwargs(
    cls: type[Any], values: Mapping[str, Any], leaves: Mapping[str, Leaf], prefix: tuple[str, ...]
) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        hint = hints[field.name]
        path = (*prefix, field.name)
        if _is_config(hint):
            inner = {n for n, leaf in leaves.items() if leaf.path[: len(path)] == path}
            if inner & set(values):
                default = _field_default(field)
                sub = _build_kwargs(hint, values, leaves, path)
                kwargs[field.name] = (
                    hint(**sub)
                    if default is dataclasses.MISSING
                    else dataclasses.replace(default, **sub)
                )
        elif field.name in values and leaves[field.name].path == path:
            kwargs[field.name] = _coerce(hint, values[field.name])
    return kwargs


def _coerce(hint: Any, value: Any) -> Any:
    kind, _ = _unwrap_optional(hint)
    if isinstance(value, list) and typing.get_origin(kind) is tuple:
        return tuple(value)
    if isinstance(value, str) and isinstance(kind, type) and issubclass(kind, PurePath):
        return Path(value)
    return value


def dataclass_from_args(cls: type[_T], args: argparse.Namespace, **overrides: Any) -> _T:
    """Build a config from parsed arguments (no saved config).

    Args:
        cls: The dataclass given to :func:`add_dataclass_arguments`.
        args: Parsed namespace.
        **overrides: Values for fields the command sets itself.

    Returns:
        The config instance (its ``__post_init__`` validates the values).
    """
    return config_from_args(cls, args, overrides=overrides)
