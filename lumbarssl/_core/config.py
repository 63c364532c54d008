"""One base class for every configuration of lumbarssl.

A configuration is a frozen, keyword-only dataclass. :class:`ConfigBase` gives it one way to
become a JSON-compatible dictionary and back (tuples become lists and lists tuples again where
a field is declared as a tuple; paths become strings and strings paths again; nested configs
become nested dictionaries), one way to be saved and loaded (atomically, as indented JSON),
and one unknown-key check whose message names the key and the known ones.

Two compatibility paths keep older code and files working for one release:

* A config that used to be positional lists those fields, in their old order, in
  ``_positional_fields``; calling it positionally still works and warns
  (:class:`DeprecationWarning`).
* A config that composes another (a field whose type is a :class:`ConfigBase`, e.g. a stage
  config's ``runtime``) accepts the nested config's fields flat, as they were before the
  nesting: :meth:`ConfigBase.from_dict` reads old flat files silently, the constructor warns,
  and reading ``config.device`` where ``device`` moved to ``config.runtime`` warns too.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
import warnings
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any, BinaryIO, ClassVar, TypeVar

from lumbarssl._core.atomic import atomic_write
from lumbarssl.errors import ConfigError

__all__ = ["ConfigBase", "check_known_keys", "param"]

_C = TypeVar("_C", bound="ConfigBase")


def param(default: Any, help: str) -> Any:
    """A config field with a default and a one-line help text for the command line.

    Args:
        default: The default value (immutable; a nested config is fine, it is frozen).
        help: One line for ``--help``: what the value means and where it comes from.

    Returns:
        A :func:`dataclasses.field`.
    """
    return dataclasses.field(default=default, metadata={"help": help})


def check_known_keys(cls: type, data: Mapping[str, object]) -> None:
    """Raise if ``data`` names a key that is not a field of the dataclass ``cls``.

    Args:
        cls: A dataclass type.
        data: Candidate field values.

    Raises:
        ConfigError: Naming the first unknown key, and listing the known ones.
    """
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(
            f"unknown {cls.__name__} key {unknown[0]!r}"
            + (f" (and {len(unknown) - 1} more: {unknown[1:]})" if len(unknown) > 1 else "")
            + f"; known keys: {', '.join(sorted(names))}"
        )


class _ConfigMeta(type):
    """Maps deprecated call forms (positional, flat nested fields) onto keyword arguments."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        config_cls = typing.cast("type[ConfigBase]", cls)
        if args:
            kwargs = _positional_to_keywords(config_cls, args, kwargs)
        owners = _flat_owner(config_cls)
        moved = sorted(key for key in kwargs if key in owners)
        if moved:
            target = owners[moved[0]]
            warnings.warn(
                f"{cls.__name__}({', '.join(f'{k}=...' for k in moved)}): these settings moved "
                f"into the nested config {target!r}; pass {target}="
                f"{_nested_fields(config_cls)[target].__name__}(...) instead (the flat keywords "
                "stop working in a later release)",
                DeprecationWarning,
                stacklevel=2,
            )
            kwargs = _nest_flat(config_cls, kwargs)
        return super().__call__(**kwargs)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConfigBase(metaclass=_ConfigMeta):
    """Base of every configuration: frozen, keyword-only, JSON round trip, save and load.

    Subclasses are declared ``@dataclasses.dataclass(frozen=True, kw_only=True)`` and validate
    their values in ``__post_init__``. A field whose type is another :class:`ConfigBase`
    (with that config as its default) composes it; its dictionary form is nested.
    """

    #: Fields that older releases accepted positionally, in that order (deprecated).
    _positional_fields: ClassVar[tuple[str, ...]] = ()

    if not TYPE_CHECKING:
        # Runtime only, so that type checking still catches misspelt attributes.
        def __getattr__(self, name: str) -> Any:
            owner = None if name.startswith("_") else _flat_owner(type(self)).get(name)
            if owner is None or owner not in self.__dict__:
                raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
            warnings.warn(
                f"{type(self).__name__}.{name} moved to {type(self).__name__}.{owner}.{name}",
                DeprecationWarning,
                stacklevel=2,
            )
            return getattr(self.__dict__[owner], name)

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a JSON-compatible dictionary.

        Returns:
            Field name to value; tuples become lists, paths strings, nested configs dicts.
        """
        return {f.name: _to_json_value(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: type[_C], data: Mapping[str, Any]) -> _C:
        """Rebuild a config from :meth:`to_dict` output; missing keys take their defaults.

        Args:
            data: Field values.

        Returns:
            The validated config.

        Raises:
            ConfigError: If ``data`` names a key the config does not have.

        Fields of a nested config may also be given flat, as files written before the
        nesting hold them.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"a {cls.__name__} JSON must be an object, got {type(data).__name__}")
        data = _nest_flat(cls, data)
        check_known_keys(cls, data)
        hints = typing.get_type_hints(cls)
        values = {key: _from_json_value(hints[key], value) for key, value in data.items()}
        return cls(**values)

    def to_json(self) -> str:
        """Return the config as one line of JSON; :meth:`from_json` inverts it."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls: type[_C], text: str) -> _C:
        """Rebuild a config from :meth:`to_json` output.

        Args:
            text: A JSON object.

        Returns:
            The config.

        Raises:
            ConfigError: If the text is not a JSON object or names an unknown key.
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{cls.__name__}: not valid JSON ({err})") from err
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        """Write the config atomically as indented JSON.

        Args:
            path: The file to create or replace.
        """
        data = (json.dumps(self.to_dict(), indent=2) + "\n").encode()

        def write(handle: BinaryIO) -> None:
            handle.write(data)

        atomic_write(Path(path), write)

    @classmethod
    def load(cls: type[_C], path: str | Path) -> _C:
        """Read a config written by :meth:`save`.

        Args:
            path: The JSON file.

        Returns:
            The config.

        Raises:
            ConfigError: If the file is not valid JSON or names an unknown key (the message
                names the file).
        """
        path = Path(path)
        try:
            return cls.from_json(path.read_text(encoding="utf-8"))
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from err

    @classmethod
    def flatten_dict(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        """Lift the fields of nested configs to the top level, the inverse of the nesting.

        Useful to compare a saved config with another setting by setting, whether the file
        was written before or after a group of fields moved into a nested config.

        Args:
            data: A :meth:`to_dict`-style dictionary (nested or flat).

        Returns:
            One level of ``name: value``; nested configs' fields appear under their own names.
        """
        nested = _nested_fields(cls)
        flat: dict[str, Any] = {}
        for key, value in data.items():
            if key in nested and isinstance(value, Mapping):
                flat.update(nested[key].flatten_dict(value))
            else:
                flat[key] = value
        return flat


@functools.cache
def _nested_fields(cls: type[ConfigBase]) -> dict[str, type[ConfigBase]]:
    """Fields of ``cls`` whose type is a config, by name."""
    hints = typing.get_type_hints(cls)
    nested: dict[str, type[ConfigBase]] = {}
    for field in dataclasses.fields(cls):
        for candidate in _hint_options(hints[field.name]):
            if isinstance(candidate, type) and issubclass(candidate, ConfigBase):
                nested[field.name] = candidate
    return nested


@functools.cache
def _flat_owner(cls: type[ConfigBase]) -> dict[str, str]:
    """Name of each nested config's field that may be given flat -> the nested field's name."""
    own = {f.name for f in dataclasses.fields(cls)}
    owner: dict[str, str] = {}
    for name, nested in _nested_fields(cls).items():
        for field in dataclasses.fields(nested):
            if field.name not in own and field.name not in owner:
                owner[field.name] = name
    return owner


def _nest_flat(cls: type[ConfigBase], data: Mapping[str, Any]) -> dict[str, Any]:
    """Move flat keys of nested configs into their nested value (a dict or a config)."""
    owners = _flat_owner(cls)
    result = {k: v for k, v in data.items() if k not in owners}
    moved: dict[str, dict[str, Any]] = {}
    for key, value in data.items():
        if key in owners:
            moved.setdefault(owners[key], {})[key] = value
    for name, values in moved.items():
        current = result.get(name)
        if isinstance(current, ConfigBase):
            result[name] = dataclasses.replace(current, **values)
        elif isinstance(current, Mapping):
            result[name] = {**current, **values}
        elif current is None:
            result[name] = _nested_fields(cls)[name].from_dict(values)
        else:
            raise ConfigError(f"{cls.__name__}: {name} must be a config or a mapping")
    return result


def _positional_to_keywords(
    cls: type[ConfigBase], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, Any]:
    allowed = cls._positional_fields
    if not allowed:
        raise TypeError(f"{cls.__name__} takes keyword arguments only, got {len(args)} positional")
    if len(args) > len(allowed):
        raise TypeError(
            f"{cls.__name__} takes at most {len(allowed)} positional arguments ({allowed}), "
            f"got {len(args)}"
        )
    names = allowed[: len(args)]
    warnings.warn(
        f"positional arguments to {cls.__name__} are deprecated; pass "
        + ", ".join(f"{name}=..." for name in names),
        DeprecationWarning,
        stacklevel=3,
    )
    clash = sorted(set(names) & set(kwargs))
    if clash:
        raise TypeError(f"{cls.__name__} got multiple values for {clash[0]!r}")
    return {**dict(zip(names, args, strict=True)), **kwargs}


def _to_json_value(value: Any) -> Any:
    if isinstance(value, ConfigBase):
        return value.to_dict()
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, tuple | list):
        return [_to_json_value(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _to_json_value(v) for k, v in value.items()}
    return value


def _from_json_value(hint: Any, value: Any) -> Any:
    for candidate in _hint_options(hint):
        if isinstance(candidate, type) and issubclass(candidate, ConfigBase):
            if isinstance(value, Mapping):
                return candidate.from_dict(value)
        elif isinstance(value, str) and candidate in (Path, PurePath):
            return Path(value)
        elif isinstance(value, list) and (
            candidate is tuple or typing.get_origin(candidate) is tuple
        ):
            return tuple(value)
    return value


def _hint_options(hint: Any) -> tuple[Any, ...]:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)
