"""``lumbarssl predict``: grade an unannotated sagittal T2 series end to end."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lumbarssl.data.dicom import DicomReadError, SeriesGeometryError
from lumbarssl.pipeline.inference import DiscGrader, NotSagittalError, write_prediction


def _run(args: argparse.Namespace) -> int:
    series_dir = Path(args.series_dir)
    if not series_dir.is_dir():
        print(f"lumbarssl predict: {series_dir} is not a directory of DICOM files", file=sys.stderr)
        return 2
    grader = DiscGrader(args.localizer, args.classifier, device=args.device)
    try:
        prediction, image = grader.predict_series(series_dir)
    except (DicomReadError, SeriesGeometryError, NotSagittalError) as exc:
        print(f"lumbarssl predict: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path("predictions") / series_dir.name
    json_path, png_path = write_prediction(prediction, image, out)
    for level in prediction.levels:
        probability = level.probabilities[level.grade]
        print(
            f"{level.level}: {level.grade:<11} p={probability:.2f}  "
            f"at (x={level.x:.1f}, y={level.y:.1f})"
        )
    print(f"wrote {json_path} and {png_path}")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``predict`` sub-command."""
    parser = subparsers.add_parser(
        "predict",
        help="localise and grade the five discs of a sagittal T2 series",
        description=(
            "Fully automated inference (paper Sec. 4.5): the localizer finds the L1/L2-L5/S1 "
            "disc centres on the mid-sagittal slice, the classifier grades the 96x96 crops. "
            "Writes prediction.json and overlay.png. Research use only."
        ),
    )
    parser.add_argument(
        "series_dir", metavar="SERIES_DIR", help="directory of one series' .dcm files"
    )
    parser.add_argument(
        "--localizer", required=True, help="model.pt of `lumbarssl train-localizer`"
    )
    parser.add_argument("--classifier", required=True, help="model.pt of `lumbarssl finetune`")
    parser.add_argument("--out", help="output directory (default: predictions/<series>)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (default: auto)")
    parser.set_defaults(func=_run)
