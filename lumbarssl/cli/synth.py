"""``lumbarssl synth``: write a synthetic dataset in the RSNA 2024 layout."""

from __future__ import annotations

import argparse
import dataclasses

from lumbarssl._core.config import ConfigBase
from lumbarssl.cli._command import register_command
from lumbarssl.synthetic import SyntheticConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class SynthRunOptions(ConfigBase):
    """How ``lumbarssl synth`` runs; the output does not depend on these.

    Attributes:
        out_dir: Directory to write.
        workers: Worker processes.
        overwrite: Replace a dataset already in ``out_dir``.
        progress: Show a progress bar.
    """

    out_dir: str
    workers: int = 1
    overwrite: bool = False
    progress: bool = True


def run(config: SyntheticConfig, options: SynthRunOptions) -> None:
    """Generate the dataset and print its summary (counts and the Bayes ceiling).

    Args:
        config: Generator parameters, seed included.
        options: Output directory, workers, overwrite, progress.
    """
    from lumbarssl.synthetic import generate_dataset

    summary = generate_dataset(
        options.out_dir,
        config,
        workers=options.workers,
        progress=options.progress,
        overwrite=options.overwrite,
    )
    print(summary.describe())


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``synth`` sub-command."""
    register_command(
        subparsers,
        "synth",
        SyntheticConfig,
        run,
        options_cls=SynthRunOptions,
        positional=("out_dir",),
        aliases={"n_studies": ("--studies",)},
        negations={"progress": ("--quiet",)},
        help="write a synthetic sagittal-T2 dataset in the RSNA 2024 layout",
        description=(
            "Write N synthetic studies (DICOM files and the three RSNA CSVs, plus "
            "synthetic_truth.csv and synthetic_meta.json) and print the Bayes ceiling: the best "
            "balanced accuracy any classifier can reach on them. The same seed and parameters "
            "give the same files, whatever --workers."
        ),
        config_help="read SyntheticConfig fields from JSON; options typed here override it",
    )
