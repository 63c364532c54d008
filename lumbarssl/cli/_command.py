"""One way to turn a config dataclass and a function into a ``lumbarssl`` sub-command.

Every sub-command is generated here: its options are the fields of its config (see
:mod:`lumbarssl.cli._dataclass_args`), plus, for commands that need them, the fields of a
second dataclass of run options that are not part of the saved settings (``--workers``,
``--overwrite``). ``--config FILE`` reads saved settings (``stage_config.json``, a
``SyntheticConfig`` JSON file, ...); options typed on the command line override them.

A value the config rejects is a usage error (argparse's exit status 2 with the usage line);
errors raised while the command runs are handled once, in :func:`lumbarssl.cli.main`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from lumbarssl.cli._dataclass_args import add_dataclass_arguments, config_from_args, leaf_fields
from lumbarssl.errors import ConfigError

__all__ = ["read_saved_config", "register_command"]


def read_saved_config(path: str | Path) -> dict[str, Any]:
    """Read a ``--config`` file: a JSON object of config fields.

    Args:
        path: The file.

    Returns:
        Its object.

    Raises:
        ConfigError: If the file is missing, not JSON or not an object (the message names it).
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"--config {path}: no such file") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"--config {path}: not a readable JSON file ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a JSON object, got {type(data).__name__}")
    return data


def register_command(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    config_cls: type[Any],
    run: Callable[..., object],
    *,
    help: str,
    description: str,
    options_cls: type[Any] | None = None,
    positional: tuple[str, ...] = (),
    aliases: Mapping[str, tuple[str, ...]] | None = None,
    negations: Mapping[str, tuple[str, ...]] | None = None,
    config_help: str = "read settings from a saved config (JSON); options typed here override it",
) -> argparse.ArgumentParser:
    """Add a sub-command whose options are the fields of ``config_cls`` (and ``options_cls``).

    Args:
        subparsers: The ``lumbarssl`` sub-parsers.
        name: Sub-command name.
        config_cls: The command's config dataclass; ``--config`` reads one saved as JSON.
        run: Called with the config, or with ``(config, options)`` when ``options_cls`` is
            given. What it returns is ignored; it raises to fail.
        help: One line for ``lumbarssl --help``.
        description: Text for ``lumbarssl NAME --help``.
        options_cls: A dataclass of run options that are not saved settings, or ``None``.
        positional: Field names (of either dataclass) given as positional arguments.
        aliases: Field name to extra option strings (older spellings).
        negations: Boolean field name to extra option strings that set it to ``False``.
        config_help: Help text of ``--config``.

    Returns:
        The sub-command's parser.
    """
    parser = subparsers.add_parser(name, help=help, description=description)
    parser.add_argument("--config", metavar="JSON", default=None, help=config_help)
    config_names = _names(config_cls)
    option_names = _names(options_cls) if options_cls is not None else set()
    if clash := config_names & option_names:
        raise TypeError(f"{name}: {sorted(clash)} are both settings and run options")

    def split(mapping: Mapping[str, Any] | None, names: set[str]) -> dict[str, Any]:
        return {k: v for k, v in (mapping or {}).items() if k in names}

    for cls, names in ((config_cls, config_names), (options_cls, option_names)):
        if cls is not None:
            add_dataclass_arguments(
                parser,
                cls,
                positional=tuple(p for p in positional if p in names),
                aliases=split(aliases, names),
                negations=split(negations, names),
            )

    def handler(args: argparse.Namespace) -> int:
        try:
            saved = read_saved_config(args.config) if args.config else None
            config = config_from_args(config_cls, args, saved=saved)
            options = config_from_args(options_cls, args) if options_cls is not None else None
        except ValueError as exc:  # ConfigError, or a value the config's validation rejects
            parser.error(str(exc))  # exits with status 2 and the usage line
        if options_cls is None:
            run(config)
        else:
            run(config, options)
        return 0

    parser.set_defaults(func=handler)
    return parser


def _names(cls: type[Any]) -> set[str]:
    return set(leaf_fields(cls))
