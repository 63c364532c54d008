"""Helpers shared by the config dataclasses of :mod:`lumbarssl.data`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from typing import Any


def known_fields(cls: type, data: Mapping[str, object]) -> dict[str, Any]:
    """Return ``data`` as keyword arguments of the dataclass ``cls``.

    Raises:
        ValueError: If ``data`` names a field ``cls`` does not have.
    """
    assert is_dataclass(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {unknown}; known: {sorted(names)}")
    return dict(data)
