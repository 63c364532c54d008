"""The ``lumbarssl`` command line: one sub-command per pipeline stage.

Each sub-command lives in its own module of this package and exposes
``register(subparsers)``, which adds a parser generated from the command's config (see
:mod:`lumbarssl.cli._command`) and sets ``func`` to a callable taking the parsed namespace.

Exit codes are decided in one place, :func:`main`: 0 on success; 2 for a usage error (argparse,
or a value the config rejects); for a :class:`~lumbarssl.errors.LumbarsslError` raised while
the command runs, one line ``lumbarssl COMMAND: error: MESSAGE`` on stderr and the error's
:attr:`~lumbarssl.errors.LumbarsslError.exit_code` (2 bad input, 3 environment, 4 training
diverged). Any other exception is a bug: it propagates with its traceback (exit status 1).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from lumbarssl import __version__
from lumbarssl.errors import LumbarsslError

# Module names under lumbarssl.cli, in the order they appear in ``lumbarssl --help``.
_COMMAND_MODULES: tuple[str, ...] = (
    "synth",
    "prepare",
    "pretrain",
    "finetune",
    "finetune_conditions",
    "train_localizer",
    "train_auto",
    "evaluate",
    "predict",
    "fit_condition_points",
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
        The process exit code: 0, or the ``exit_code`` of the
        :class:`~lumbarssl.errors.LumbarsslError` that stopped the command.

    Raises:
        SystemExit: With status 2 on a usage error (and 0 for ``--help``/``--version``).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        code: int = func(args)
    except LumbarsslError as exc:
        message = " ".join(str(exc).split("\n"))
        print(f"lumbarssl {args.command}: error: {message}", file=sys.stderr)
        return exc.exit_code
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
