"""Shared wiring of the training sub-commands (pretrain, finetune, train-localizer, evaluate)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from lumbarssl.cli._command import register_command


def rate(value: float) -> str:
    """A learning rate as the paper writes it, for help texts: ``5e-5``."""
    return f"{value:.0e}".replace("e-0", "e-")


def register_stage(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    config_cls: type[Any],
    run: Callable[[Any], Any],
    *,
    help: str,
    description: str,
) -> None:
    """Add a sub-command whose options are the fields of ``config_cls``.

    Args:
        subparsers: The ``lumbarssl`` sub-parsers.
        name: Sub-command name.
        config_cls: The stage's config dataclass (defaults = the paper's values).
        run: The stage function, called with the config.
        help: One line for ``lumbarssl --help``.
        description: Text for ``lumbarssl NAME --help``.
    """
    register_command(
        subparsers,
        name,
        config_cls,
        run,
        help=help,
        description=description,
        config_help="read settings from a stage_config.json; options typed here override it",
    )
