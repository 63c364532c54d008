"""Shared wiring of the training sub-commands (pretrain, finetune, train-localizer, evaluate)."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lumbarssl.cli._command import register_command
from lumbarssl.errors import TrainingDivergedError

#: File the stages save their settings in (``lumbarssl.pipeline._common.STAGE_CONFIG_FILE``).
_STAGE_CONFIG = "stage_config.json"


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

    def guarded(config: Any) -> Any:
        try:
            return run(config)
        except TrainingDivergedError as exc:
            if exc.resume_command is not None:
                raise
            raise exc.with_resume_command(
                resume_command(name, config, resume=exc.checkpoint is not None)
            ) from exc

    register_command(
        subparsers,
        name,
        config_cls,
        guarded,
        help=help,
        description=description,
        config_help="read settings from a stage_config.json; options typed here override it",
    )


def resume_command(name: str, config: Any, *, resume: bool) -> str:
    """The command line that runs stage ``name`` again with its learning rates divided by 10.

    It reads the settings the stage saved in its output directory and, when a checkpoint was
    kept, continues from it, allowing (and so recording) the learning-rate change.

    Args:
        name: The sub-command.
        config: The stage config of the run that diverged.
        resume: Whether to continue from ``last.pt`` (``--resume --allow-change``).

    Returns:
        The command line, quoted for a POSIX shell.
    """
    saved = Path(str(config.out_dir)) / _STAGE_CONFIG
    words = ["lumbarssl", name, "--config", str(saved)]
    rates = [
        field.name
        for field in dataclasses.fields(config)
        if field.name == "lr" or field.name.endswith("_lr")
    ]
    if resume:
        words += ["--resume", "--allow-change", ",".join(r.replace("_", "-") for r in rates)]
    for rate_name in rates:
        words += [f"--{rate_name.replace('_', '-')}", f"{getattr(config, rate_name) / 10:g}"]
    return " ".join(shlex.quote(word) for word in words)
