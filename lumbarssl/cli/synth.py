"""``lumbarssl synth``: write a synthetic dataset in the RSNA 2024 layout."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lumbarssl.synthetic import SyntheticConfig


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``synth`` sub-command."""
    parser = subparsers.add_parser(
        "synth",
        help="write a synthetic sagittal-T2 dataset in the RSNA 2024 layout",
        description=(
            "Write N synthetic studies (DICOM files and the three RSNA CSVs, plus "
            "synthetic_truth.csv and synthetic_meta.json) and print the Bayes ceiling: the best "
            "balanced accuracy any classifier can reach on them. The same seed and parameters "
            "give the same files, whatever --workers."
        ),
    )
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="directory to write")
    parser.add_argument(
        "--studies", type=int, default=None, help="number of studies (default: 100, or --config)"
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="root seed (default: 0, or --config)"
    )
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default: 1)")
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="JSON file of SyntheticConfig fields; --studies and --seed override it",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a dataset in OUT_DIR")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Generate the dataset described by the parsed arguments; return the exit code."""
    # Imported here so that building the parser for other commands stays fast.
    from lumbarssl.synthetic import generate_dataset

    try:
        config = _config(args)
        summary = generate_dataset(
            args.out_dir,
            config,
            workers=args.workers,
            progress=not args.quiet,
            overwrite=args.overwrite,
        )
    except (OSError, ValueError) as error:
        print(f"lumbarssl synth: error: {error}", file=sys.stderr)
        return 2
    print(summary.describe())
    return 0


def _config(args: argparse.Namespace) -> SyntheticConfig:
    from lumbarssl.synthetic import SyntheticConfig

    base = SyntheticConfig()
    if args.config is not None:
        base = SyntheticConfig.from_json(args.config.read_text(encoding="utf-8"))
    overrides: dict[str, Any] = {}
    if args.studies is not None:
        overrides["n_studies"] = args.studies
    if args.seed is not None:
        overrides["seed"] = args.seed
    return dataclasses.replace(base, **overrides)
