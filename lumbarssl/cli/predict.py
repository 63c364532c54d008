"""``lumbarssl predict``: grade an unannotated sagittal T2 series end to end."""

from __future__ import annotations

import argparse
from pathlib import Path

from lumbarssl.cli._command import register_command
from lumbarssl.errors import MissingFileError
from lumbarssl.pipeline.inference import DiscGrader, write_prediction
from lumbarssl.pipeline.predict_config import PredictConfig


def run_predict(config: PredictConfig) -> None:
    """Grade ``config.series_dir``, write ``prediction.json`` and ``overlay.png``, print grades.

    Args:
        config: The settings.

    Raises:
        MissingFileError: If ``series_dir`` is not a directory.
        lumbarssl.errors.InputError: For an unreadable series or checkpoint, or a series that
            is not sagittal.
    """
    series_dir = Path(config.series_dir)
    if not series_dir.is_dir():
        raise MissingFileError(f"{series_dir} is not a directory of DICOM files")
    grader = DiscGrader(config.localizer, config.classifier, device=config.device)
    prediction, image = grader.predict_series(series_dir)
    out = Path(config.out) if config.out else Path("predictions") / series_dir.name
    json_path, png_path = write_prediction(prediction, image, out)
    for level in prediction.levels:
        probability = level.probabilities[level.grade]
        print(
            f"{level.level}: {level.grade:<11} p={probability:.2f}  "
            f"at (x={level.x:.1f}, y={level.y:.1f})"
        )
    print(f"wrote {json_path} and {png_path}")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``predict`` sub-command."""
    register_command(
        subparsers,
        "predict",
        PredictConfig,
        run_predict,
        positional=("series_dir",),
        help="localise and grade the five discs of a sagittal T2 series",
        description=(
            "Fully automated inference (paper Sec. 4.5): the localizer finds the L1/L2-L5/S1 "
            "disc centres on the mid-sagittal slice, the classifier grades the 96x96 crops. "
            "Writes prediction.json and overlay.png. Research use only."
        ),
    )
