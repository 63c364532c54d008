"""Deprecated: the unknown-key check moved to :class:`lumbarssl._core.config.ConfigBase`.

Only :class:`~lumbarssl.data.datasets.DiscDatasetConfig` still calls :func:`known_fields`;
delete this module once it derives from :class:`~lumbarssl._core.config.ConfigBase`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lumbarssl._core.config import check_known_keys


def known_fields(cls: type, data: Mapping[str, object]) -> dict[str, Any]:
    """Return ``data`` as keyword arguments of the dataclass ``cls``.

    Raises:
        ConfigError: If ``data`` names a field ``cls`` does not have (a :class:`ValueError`).
    """
    check_known_keys(cls, data)
    return dict(data)
