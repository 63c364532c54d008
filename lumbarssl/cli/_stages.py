"""Shared wiring of the training sub-commands (pretrain, finetune, train-localizer, evaluate)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from lumbarssl.cli._dataclass_args import add_dataclass_arguments, dataclass_from_args

#: Exceptions that mean the input was wrong, reported without a traceback.
_USER_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    TypeError,
    FileNotFoundError,
    FileExistsError,
)


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
    parser = subparsers.add_parser(name, help=help, description=description)
    parser.add_argument(
        "--config",
        metavar="JSON",
        help="read settings from a stage_config.json; command-line options override it",
    )
    add_dataclass_arguments(parser, config_cls)

    def handler(args: argparse.Namespace) -> int:
        overrides: dict[str, Any] = {}
        if args.config:
            with open(args.config) as handle:
                # Nested configs (the runtime settings) map onto unprefixed options.
                saved = config_cls.flatten_dict(json.load(handle))
            defaults = {f: parser.get_default(f) for f in saved}
            overrides = {
                k: v for k, v in saved.items() if getattr(args, k, None) == defaults.get(k)
            }
        try:
            config = dataclass_from_args(config_cls, args, **overrides)
        except ValueError as exc:
            parser.error(str(exc))  # exits with status 2 and the usage line
        try:
            run(config)
        except _USER_ERRORS as exc:
            # Bad input (a wrong checkpoint, a missing cache, a resume with other settings):
            # one clear line instead of a traceback.
            print(f"lumbarssl {name}: error: {exc}", file=sys.stderr)
            return 2
        return 0

    parser.set_defaults(func=handler)
