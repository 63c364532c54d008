"""``lumbarssl predict``: grade an unannotated study end to end (one, or a whole directory)."""

from __future__ import annotations

import argparse
from pathlib import Path

from lumbarssl.cli._command import register_command
from lumbarssl.errors import InputError, MissingFileError
from lumbarssl.metrics.submission import write_submission
from lumbarssl.pipeline.condition_inference import (
    ConditionGrader,
    grade_condition_directory,
    study_prediction_rows,
    write_study_prediction,
)
from lumbarssl.pipeline.inference import (
    DiscGrader,
    grade_directory,
    prediction_rows,
    read_series_csv,
    write_prediction,
)
from lumbarssl.pipeline.predict_config import PredictConfig


def run_predict(config: PredictConfig) -> None:
    """Grade ``config.series_dir``; write ``prediction.json``, ``overlay.png`` and the rows.

    Args:
        config: The settings.

    Raises:
        MissingFileError: If ``series_dir`` is not a directory, or a checkpoint is missing.
        lumbarssl.errors.InputError: For an unreadable series or checkpoint, a series that
            is not Sagittal T2/STIR (without ``--force``), or a study with none; in batch
            mode only when no study at all could be graded.
    """
    root = Path(config.series_dir)
    if not root.is_dir():
        raise MissingFileError(f"{root} is not a directory of DICOM files")
    if config.conditions == "all":
        _run_all_conditions(config, root)
        return
    grader = DiscGrader(
        config.localizer,
        config.classifier,
        slice_selector=config.slice_selector,
        device=config.device,
    )
    series_csv = read_series_csv(config.series_csv) if config.series_csv else None
    out = Path(config.out) if config.out else Path("predictions") / root.name
    if config.batch:
        result = grade_directory(grader, root, out=out, series_csv=series_csv, force=config.force)
        for study, message in result.failures:
            print(f"study {study}: not graded: {message}")
        print(f"graded {len(result.predictions)} studies, {len(result.failures)} not; wrote {out}")
        if not result.predictions:
            raise InputError(f"{root}: no study could be graded (see the lines above)")
        if config.submission:
            n = write_submission(config.submission, result.rows)
            print(f"wrote {n} submission rows to {config.submission}")
        return
    prediction, image = grader.predict(
        root, force=config.force, study_id=config.study_id, series_csv=series_csv
    )
    json_path, png_path = write_prediction(prediction, image, out)
    print(f"study {prediction.study_id}, series {prediction.series_id}: {prediction.series_type}")
    for level in prediction.levels:
        probability = level.probabilities[level.grade]
        print(
            f"{level.level}: {level.grade:<11} p={probability:.2f}  "
            f"at (x={level.x:.1f}, y={level.y:.1f}) on instance {level.instance_number}"
        )
    print(f"wrote {json_path} and {png_path}")
    if config.submission:
        n = write_submission(config.submission, prediction_rows(prediction))
        print(f"wrote {n} submission rows to {config.submission}")


def _run_all_conditions(config: PredictConfig, root: Path) -> None:
    """``--conditions all``: the 25 targets of each study (see ``condition_inference``)."""
    assert config.condition_points is not None  # PredictConfig checks it
    grader = ConditionGrader(
        config.localizer,
        config.classifier,
        config.condition_points,
        slice_selector=config.slice_selector,
        device=config.device,
    )
    series_csv = read_series_csv(config.series_csv) if config.series_csv else None
    out = Path(config.out) if config.out else Path("predictions") / root.name
    if config.batch:
        result = grade_condition_directory(
            grader, root, out=out, series_csv=series_csv, force=config.force
        )
        for study, message in result.failures:
            print(f"study {study}: not graded: {message}")
        print(f"graded {len(result.predictions)} studies, {len(result.failures)} not; wrote {out}")
        if not result.predictions:
            raise InputError(f"{root}: no study could be graded (see the lines above)")
        rows = list(result.rows)
    else:
        prediction, image = grader.predict(
            root, force=config.force, study_id=config.study_id, series_csv=series_csv
        )
        json_path, png_path = write_study_prediction(prediction, image, out)
        used = "; ".join(f"{name} {', '.join(ids)}" for name, ids in prediction.series.items())
        print(f"study {prediction.study_id}: {used}")
        for t in prediction.targets:
            flag = f"  [{t.point_skip}]" if t.point_skip else ""
            print(
                f"{t.condition} {t.level}: {t.grade:<11} p={t.probabilities[t.grade]:.2f}  "
                f"series {t.series_id} instance {t.instance_number}{flag}"
            )
        print(f"wrote {json_path} and {png_path}")
        rows = study_prediction_rows(prediction)
    if config.submission:
        n = write_submission(config.submission, rows)
        print(f"wrote {n} submission rows to {config.submission}")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``predict`` sub-command."""
    register_command(
        subparsers,
        "predict",
        PredictConfig,
        run_predict,
        positional=("series_dir",),
        help="grade the five discs of a study's sagittal T2 series (or of a whole directory)",
        description=(
            "Fully automated inference (paper Sec. 4.5, extended): finds the Sagittal T2/STIR "
            "series in a series directory, a study directory or a flat folder of mixed series "
            "(refusing other series unless --force), picks each level's mid-sagittal slice "
            "(slice selector or CSF baseline), localises the L1/L2-L5/S1 disc centres "
            "(regression or heatmap localizer) and grades each crop. Writes prediction.json, "
            "overlay.png and, with --submission, RSNA 2024 submission rows; --batch grades "
            "every study of an RSNA-layout directory. --conditions all grades the 25 targets "
            "of the RSNA 2024 task (foramina on the Sagittal T1 series, lateral recesses on the "
            "Axial T2 series, placed by --condition-points) with a multi-condition classifier. "
            "Research use only."
        ),
    )
