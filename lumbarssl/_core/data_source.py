"""The one definition of where a run's data came from, recorded in every output."""

from __future__ import annotations

from typing import Final, Literal, get_args

__all__ = ["DATA_SOURCES", "DataSource", "check_data_source"]

DataSource = Literal["real", "synthetic"]
"""``"real"``: an RSNA 2024 download; ``"synthetic"``: the built-in phantom generator."""

#: The allowed values of :data:`DataSource`, in declaration order.
DATA_SOURCES: Final[tuple[DataSource, ...]] = get_args(DataSource)


def check_data_source(value: object, name: str = "data_source") -> None:
    """Raise unless ``value`` is one of :data:`DATA_SOURCES`.

    Args:
        value: The candidate.
        name: How the message names the setting.

    Raises:
        ValueError: Naming the value and the allowed ones.
    """
    if value not in DATA_SOURCES:
        allowed = " or ".join(repr(source) for source in DATA_SOURCES)
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
