"""``lumbarssl fit-condition-points``: fit where the other four conditions lie (issue 14)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from lumbarssl._core.config import ConfigBase
from lumbarssl.cli._command import register_command
from lumbarssl.data.condition_points import evaluate_condition_points, fit_condition_points
from lumbarssl.errors import MissingFileError


@dataclasses.dataclass(frozen=True, kw_only=True)
class FitConditionPointsConfig(ConfigBase):
    """Settings of ``lumbarssl fit-condition-points``.

    Attributes:
        data_dir: Annotated RSNA-layout directory to fit on.
        out: The JSON file to write (a
            :class:`~lumbarssl.data.condition_points.ConditionPointModel`).
        evaluate: An annotated RSNA-layout directory held out from the fit: print the errors
            of the points mapped from its spinal canal annotations.
        min_level_count: A level with fewer examples uses its condition's all-level offset.
        max_plane_distance_mm: A point farther from its nearest slice plane is flagged.
    """

    data_dir: str
    out: str
    evaluate: str | None = dataclasses.field(
        default=None, metadata={"help": "held-out annotated directory to measure the errors on"}
    )
    min_level_count: int = dataclasses.field(
        default=3, metadata={"help": "fewer examples at a level: use the all-level offset"}
    )
    max_plane_distance_mm: float = dataclasses.field(
        default=6.0, metadata={"help": "flag a point farther than this from its slice plane"}
    )


def run(config: FitConditionPointsConfig) -> None:
    """Fit, save and print the offsets (and the held-out errors with ``--evaluate``).

    Args:
        config: The settings.

    Raises:
        MissingFileError: If a directory does not exist.
        lumbarssl.errors.DataError: If the data has no study with the spinal canal and
            another condition annotated at one level.
    """
    for path in (config.data_dir, config.evaluate):
        if path is not None and not Path(path).is_dir():
            raise MissingFileError(f"{path}: no such RSNA-layout directory")
    model = fit_condition_points(
        config.data_dir,
        min_level_count=config.min_level_count,
        max_plane_distance_mm=config.max_plane_distance_mm,
    )
    model.save(config.out)
    for key, offset in model.offsets_mm.items():
        if key.endswith("|*"):
            dx, dy, dz = offset
            print(
                f"{key[:-2]}: offset ({dx:+.1f}, {dy:+.1f}, {dz:+.1f}) mm from the canal, "
                f"spread {model.spread_mm[key]:.1f} mm over {model.counts[key]} levels"
            )
    print(f"wrote {config.out}")
    if config.evaluate is not None:
        for condition, e in evaluate_condition_points(model, config.evaluate).items():
            print(
                f"{config.evaluate}: {condition}: {e.n} targets, {e.on_instance:.0%} on the "
                f"annotated instance, error mean {e.mean_mm:.1f} mm, median {e.median_mm:.1f} "
                f"mm ({e.n_flagged} flagged)"
            )


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``fit-condition-points`` sub-command."""
    register_command(
        subparsers,
        "fit-condition-points",
        FitConditionPointsConfig,
        run,
        positional=("data_dir", "out"),
        help="fit where the foramina and lateral recesses lie relative to the spinal canal",
        description=(
            "Reads an annotated RSNA-layout directory (train_label_coordinates.csv and the "
            "DICOM geometry) and writes, per condition and level, the mean offset in patient "
            "millimetres of the foraminal and subarticular annotations from the spinal canal "
            "annotation of the same study and level: the point model `lumbarssl predict "
            "--conditions all --condition-points` uses. --evaluate DIR prints the errors on "
            "held-out annotated studies."
        ),
    )
