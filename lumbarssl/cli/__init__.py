"""The ``lumbarssl`` command line: one sub-command per pipeline stage.

Each sub-command lives in its own module of this package and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a callable taking the
parsed namespace and returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from lumbarssl import __version__

# Module names under lumbarssl.cli, in the order they appear in ``lumbarssl --help``.
_COMMAND_MODULES: tuple[str, ...] = (
    "synth",
    "prepare",
    "pretrain",
    "finetune",
    "train_localizer",
    "evaluate",
    "predict",
)


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every registered sub-command.

    Returns:
        The argument parser for ``lumbarssl``.
    """
    parser = argparse.ArgumentParser(
        prog="lumbarssl",
        description="Disc-centric self-supervised learning for lumbar spine MRI.",
    )
    parser.add_argument("--version", action="version", version=f"lumbarssl {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        module = importlib.import_module(f"lumbarssl.cli.{name}")
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``lumbarssl`` command line.

    Args:
        argv: Arguments without the program name; ``sys.argv[1:]`` when ``None``.

    Returns:
        The process exit code.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    code: int = func(args)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
