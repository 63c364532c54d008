"""One base class for every configuration of lumbarssl.

A configuration is a frozen, keyword-only dataclass. :class:`ConfigBase` gives it one way to
become a JSON-compatible dictionary and back (tuples become lists and lists tuples again where
a field is declared as a tuple; paths become strings and strings paths again; nested configs
become nested dictionaries), one way to be saved and loaded (atomically, as indented JSON),
and one unknown-key check whose message names the key and the known ones.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any, BinaryIO, TypeVar

from lumbarssl._core.atomic import atomic_write
from lumbarssl.errors import ConfigError

__all__ = ["ConfigBase", "check_known_keys"]

_C = TypeVar("_C", bound="ConfigBase")


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


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConfigBase:
    """Base of every configuration: frozen, keyword-only, JSON round trip, save and load.

    Subclasses are declared ``@dataclasses.dataclass(frozen=True, kw_only=True)`` and validate
    their values in ``__post_init__``.
    """

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
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"{cls.__name__} expects a JSON object, got {type(data).__name__}")
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
