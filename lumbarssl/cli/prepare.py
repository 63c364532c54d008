"""``lumbarssl prepare DATA_DIR OUT_DIR``: build the ROI cache of an RSNA directory."""

from __future__ import annotations

import argparse
import sys

from lumbarssl.data.dicom import DicomReadError
from lumbarssl.data.prepare import PrepareConfig, format_summary, prepare_cache
from lumbarssl.data.roi import LOCALIZER_SIZE, ROI_SIZE
from lumbarssl.data.skips import RSNADataError


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``prepare`` sub-command.

    Args:
        subparsers: The sub-parsers of the ``lumbarssl`` parser.
    """
    parser = subparsers.add_parser(
        "prepare",
        help="extract the disc ROIs and localizer inputs of an RSNA directory",
        description=(
            "Read an RSNA 2024 directory (train.csv, train_label_coordinates.csv, "
            "train_series_descriptions.csv, train_images/) and write OUT_DIR/index.csv, "
            "rois.npy, one PNG per ROI, localizer_images.npy, skipped.csv and, last, "
            "prepare_meta.json. Re-run the same command to finish an interrupted run."
        ),
    )
    parser.add_argument("data_dir", metavar="DATA_DIR", help="RSNA 2024 layout directory")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="output directory")
    parser.add_argument(
        "--roi-size", type=int, default=ROI_SIZE, help="ROI side in pixels (paper: %(default)s)"
    )
    parser.add_argument(
        "--slices",
        type=int,
        default=1,
        help="odd number of neighbouring-slice ROIs per disc for rois_multislice.npy "
        "(1: none; default %(default)s)",
    )
    parser.add_argument(
        "--localizer-size",
        type=int,
        default=LOCALIZER_SIZE,
        help="side of the 2.5D localizer input (paper: %(default)s)",
    )
    parser.add_argument(
        "--png-compression",
        type=int,
        default=0,
        help="zlib level 0-9 of the ROI PNGs, lossless at every level (default %(default)s: "
        "stored; MR noise compresses little)",
    )
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument(
        "--on-error",
        choices=("skip", "raise"),
        default="skip",
        help="record bad rows and files in skipped.csv and go on, or stop (default skip)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``lumbarssl prepare``.

    Args:
        args: The parsed arguments.

    Returns:
        0 on success, 1 on a data error (with ``--on-error raise``), 2 on bad settings.
    """
    try:
        config = PrepareConfig(
            roi_size=args.roi_size,
            slices=args.slices,
            localizer_size=args.localizer_size,
            on_error=args.on_error,
            png_compress_level=args.png_compression,
        )
    except ValueError as exc:
        print(f"lumbarssl prepare: {exc}", file=sys.stderr)
        return 2
    try:
        result = prepare_cache(
            args.data_dir,
            args.out_dir,
            config,
            workers=args.workers,
            progress=not args.no_progress,
        )
    except (RSNADataError, DicomReadError, FileNotFoundError, ValueError) as exc:
        print(f"lumbarssl prepare: error: {exc}", file=sys.stderr)
        return 1
    print(format_summary(result))
    return 0
