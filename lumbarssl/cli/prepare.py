"""``lumbarssl prepare DATA_DIR OUT_DIR``: build the ROI cache of an RSNA directory."""

from __future__ import annotations

import argparse
import dataclasses

from lumbarssl._core.config import ConfigBase
from lumbarssl.cli._command import register_command
from lumbarssl.data.prepare import PrepareConfig, format_summary, prepare_cache


@dataclasses.dataclass(frozen=True, kw_only=True)
class PrepareRunOptions(ConfigBase):
    """How ``lumbarssl prepare`` runs; not part of the settings saved in ``prepare_meta.json``.

    Attributes:
        data_dir: RSNA 2024 layout directory.
        out_dir: Output directory.
        workers: Worker processes.
        progress: Show a progress bar.
    """

    data_dir: str
    out_dir: str
    workers: int = 1
    progress: bool = True


def run(config: PrepareConfig, options: PrepareRunOptions) -> None:
    """Run ``lumbarssl prepare`` and print its summary.

    Args:
        config: The cache settings.
        options: Directories, workers, progress.

    Raises:
        lumbarssl.errors.DataError: Bad data that stops the run (exit status 2).
        lumbarssl.errors.EnvironmentProblem: A full disk, a lock held by another run into the
            same directory, an unwritable directory (exit status 3).
    """
    result = prepare_cache(
        options.data_dir,
        options.out_dir,
        config,
        workers=options.workers,
        progress=options.progress,
    )
    print(format_summary(result))


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``prepare`` sub-command.

    Args:
        subparsers: The sub-parsers of the ``lumbarssl`` parser.
    """
    register_command(
        subparsers,
        "prepare",
        PrepareConfig,
        run,
        options_cls=PrepareRunOptions,
        positional=("data_dir", "out_dir"),
        aliases={"png_compress_level": ("--png-compression",)},
        help="extract the disc ROIs and localizer inputs of an RSNA directory",
        description=(
            "Read an RSNA 2024 directory (train.csv, train_label_coordinates.csv, "
            "train_series_descriptions.csv, train_images/) and write OUT_DIR/index.csv, "
            "rois.npy, one PNG per ROI, localizer_images.npy, skipped.csv and, last, "
            "prepare_meta.json. Re-run the same command to finish an interrupted run."
        ),
        config_help="read PrepareConfig settings from JSON (e.g. the 'config' object of a "
        "prepare_meta.json); options typed here override it",
    )
