"""``lumbarssl predict --conditions all``: the 25 targets of the RSNA 2024 task (issue 14).

The spinal canal is found as :class:`~lumbarssl.pipeline.inference.DiscGrader` finds it (the
localizer and slice selection on the Sagittal T2/STIR series, :class:`SpineLocator
<lumbarssl.pipeline.inference.SpineLocator>`). The other four conditions are placed from those
five points by the geometric baseline of :mod:`lumbarssl.data.condition_points` (a mean
patient-space offset per condition and level, projected into the study's Sagittal T1 series
for the foramina and its Axial T2 series for the lateral recesses; with several Axial T2
series, each target on the one whose slice is nearest,
:func:`~lumbarssl.data.condition_points.map_on_nearest_series`). One multi-condition
classifier (``forward(x (B, 1, H, W), condition (B,) index into CONDITIONS) -> (B, 3)``)
grades the crop of every target, cut with the :class:`~lumbarssl.data.recipes.RoiRecipe` of
its checkpoint on the target's own series and slice.

**A missing series.** A study without a Sagittal T2/STIR series is refused as in spinal mode
(:class:`~lumbarssl.pipeline.inference.NoSagittalT2Error`); one without a Sagittal T1 or an
Axial T2 series is refused with :class:`MissingSeriesError` (an
:class:`~lumbarssl.errors.InputError`, exit status 2; ``--batch`` records it as a study not
graded and goes on). No row is made up for a target that cannot be seen.

**A doubtful point** (outside the slab, ambiguous or mismatched axial level; see
:class:`~lumbarssl.data.condition_points.MappedPoint`) is still graded on the nearest slice,
and its code is kept in ``prediction.json`` (``point_skip``) for the reader to filter.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lumbarssl.data.condition_points import ConditionPointModel, map_on_nearest_series
from lumbarssl.data.constants import (
    AXIAL_T2,
    CONDITIONS,
    LEVELS,
    SAGITTAL_T1,
    SEVERITIES,
    SPINAL_CANAL,
)
from lumbarssl.data.dicom import DicomSeries
from lumbarssl.data.prepare.conditions import CONDITION_SEQUENCE
from lumbarssl.data.recipes import RoiRecipe
from lumbarssl.errors import DataError, InputError, MissingFileError, WrongKindError
from lumbarssl.metrics import Calibration
from lumbarssl.metrics.submission import SubmissionRow, study_rows
from lumbarssl.models import ConditionClassifier, load_checkpoint
from lumbarssl.pipeline.convert import load_recipe
from lumbarssl.pipeline.evaluate import (
    CONDITION_CALIBRATION_KEY,
    calibration_from_metadata,
    class_logits,
    condition_calibrations_from_metadata,
)
from lumbarssl.pipeline.inference import (
    LevelPrediction,
    SeriesCandidate,
    SeriesPrediction,
    SpineLocator,
    choose_series,
    find_series,
    grade_each_study,
    read_candidate,
    write_prediction,
)

__all__ = [
    "CONDITION_CALIBRATION_KEY",
    "ConditionBatchResult",
    "ConditionGrader",
    "MissingSeriesError",
    "StudyPrediction",
    "TargetPrediction",
    "grade_condition_directory",
    "study_prediction_rows",
    "write_study_prediction",
]


class MissingSeriesError(InputError):
    """A study lacks a series one of the conditions is graded on (Sagittal T1 or Axial T2)."""


@dataclasses.dataclass(frozen=True)
class TargetPrediction:
    """The grade of one (condition, level) target and where it was cut.

    Attributes:
        condition: As in the coordinates CSV (``"Left Subarticular Stenosis"``, ...).
        level: ``"L1/L2"`` ... ``"L5/S1"``.
        series_id: The series the crop was cut from.
        instance_number: Its slice's InstanceNumber.
        slice_index: That slice's place in spatial order.
        x: Column of the crop's centre in pixels.
        y: Row of the crop's centre in pixels.
        grade: The argmax of the classifier's uncalibrated outputs.
        probabilities: Severity -> probability (calibrated when the checkpoint carries a map).
        point_skip: ``None``, or why the mapped point is doubtful (still graded).
        point_detail: A clause about the point (distance from the slice plane, ...).
    """

    condition: str
    level: str
    series_id: str
    instance_number: int
    slice_index: int
    x: float
    y: float
    grade: str
    probabilities: dict[str, float]
    point_skip: str | None = None
    point_detail: str = ""


@dataclasses.dataclass(frozen=True)
class StudyPrediction:
    """All 25 targets of one study.

    Attributes:
        study_id: The study's id.
        series: Sequence (``"Sagittal T2/STIR"``, ``"Sagittal T1"``, ``"Axial T2"``) -> the
            ids of the series used for it (one, or several axial ones).
        targets: 25 predictions, condition-major in :data:`~lumbarssl.layout.CONDITIONS`
            order, levels L1/L2 first.
        spinal: The spinal canal part as spinal ``predict`` writes it (for the overlay).
        provenance: Facts about the checkpoints and the point model.
    """

    study_id: str
    series: dict[str, tuple[str, ...]]
    targets: tuple[TargetPrediction, ...]
    spinal: SeriesPrediction
    provenance: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dictionary."""
        return dataclasses.asdict(self)

    def probabilities(self, condition: str) -> np.ndarray:
        """Normal/Mild, Moderate, Severe probabilities of one condition, shape (5, 3).

        Args:
            condition: One of :data:`~lumbarssl.layout.CONDITIONS`.

        Returns:
            One row per level, L1/L2 first.
        """
        by_level = {t.level: t for t in self.targets if t.condition == condition}
        return np.array([[by_level[lv].probabilities[s] for s in SEVERITIES] for lv in LEVELS])


def study_prediction_rows(prediction: StudyPrediction) -> list[SubmissionRow]:
    """The 25 RSNA 2024 submission rows of one study (through the one submission writer).

    Args:
        prediction: Output of :meth:`ConditionGrader.predict`.

    Returns:
        Rows condition-major (:func:`~lumbarssl.metrics.submission.study_rows`).
    """
    return study_rows(prediction.study_id, {c: prediction.probabilities(c) for c in CONDITIONS})


def _calibrations(meta: Mapping[str, Any], source: str) -> dict[str, Calibration | None]:
    """Each condition's map: its own (``condition_calibration``), else the shared one, if any."""
    shared = calibration_from_metadata(meta, source)
    own = condition_calibrations_from_metadata(meta, source)
    return {c: own.get(c, shared) for c in CONDITIONS}


def _pick(candidates: Sequence[SeriesCandidate], name: str, study_id: str) -> list[SeriesCandidate]:
    """The series of type ``name`` (the largest first), or a one-line refusal if none."""
    found = [c for c in candidates if c.series_type.name == name]
    if found:
        return sorted(found, key=lambda c: (-len(c.files), c.series_id))
    graded = ", ".join(c for c in CONDITIONS if CONDITION_SEQUENCE[c] == name)
    have = "; ".join(f"series {c.series_id}: {c.series_type.describe()}" for c in candidates)
    raise MissingSeriesError(
        f"study {study_id}: no {name} series ({have}); --conditions all grades {graded} on "
        f"it: give the study's {name} series (or --series-csv if descriptions are missing), or "
        "grade the spinal canal alone without --conditions all"
    )


class ConditionGrader(SpineLocator):
    """A localizer, a point model and a multi-condition classifier that grade 25 targets.

    Args:
        localizer: As :class:`~lumbarssl.pipeline.inference.DiscGrader`'s.
        classifier: A multi-condition classifier checkpoint (``forward(x, condition)``) with
            a :class:`~lumbarssl.data.recipes.RoiRecipe`; a spinal
            :class:`~lumbarssl.models.DiscClassifier` is refused.
        points: The :class:`~lumbarssl.data.condition_points.ConditionPointModel` or its
            JSON file (``lumbarssl fit-condition-points``).
        slice_selector: As :class:`~lumbarssl.pipeline.inference.DiscGrader`'s.
        device: Device to run on.

    Attributes:
        roi_recipe: The classifier's recipe.
        calibrations: Condition -> its calibration map (or ``None``).

    Raises:
        MissingFileError: If a checkpoint or the point model does not exist.
        WrongKindError: If the classifier is a spinal ``DiscClassifier``.
    """

    def __init__(
        self,
        localizer: str | Path,
        classifier: str | Path,
        points: str | Path | ConditionPointModel,
        *,
        slice_selector: str | Path | None = None,
        device: str = "auto",
    ) -> None:
        super().__init__(localizer, slice_selector=slice_selector, device=device)
        if not Path(classifier).is_file():
            raise MissingFileError(f"{classifier}: no such classifier checkpoint (a model.pt file)")
        if isinstance(points, ConditionPointModel):
            self.points = points
        else:
            if not Path(points).is_file():
                raise MissingFileError(
                    f"{points}: no such condition point model; write one with "
                    "`lumbarssl fit-condition-points DATA_DIR OUT.json`"
                )
            self.points = ConditionPointModel.load(points)
        model, self.classifier_meta = load_checkpoint(classifier)
        if not isinstance(model, ConditionClassifier):
            raise WrongKindError(
                f"{classifier} holds a {type(model).__name__}, not a ConditionClassifier; "
                "--conditions all needs the model.pt of `lumbarssl finetune-conditions`"
            )
        self.roi_recipe = load_recipe(self.classifier_meta, RoiRecipe, classifier)
        self.calibrations = _calibrations(self.classifier_meta, str(classifier))
        self.classifier: nn.Module = model.to(self.device).eval()

    def classifier_input(self, image: np.ndarray, x: float, y: float) -> Tensor:
        """The classifier's input for a target at ``(x, y)`` (as the spinal grader's).

        Args:
            image: The slice, (H, W).
            x: Column in pixels.
            y: Row in pixels.

        Returns:
            float32 (1, S, S), ``S = roi_recipe.input_size``.
        """
        return self.roi_recipe.network_input(self.roi_recipe.extract(image, x, y))

    @torch.no_grad()
    def grade(
        self,
        series: Mapping[str, Sequence[tuple[SeriesCandidate, DicomSeries]]],
        *,
        study_id: str,
    ) -> tuple[StudyPrediction, np.ndarray]:
        """Grade the 25 targets of one study from its read series.

        A study may hold several Axial T2 series (one block of slices per level or two, as
        many RSNA studies do): each recess target is placed on the one whose slice plane is
        nearest, unflagged points first.

        Args:
            series: ``"Sagittal T2/STIR"``, ``"Sagittal T1"``, ``"Axial T2"`` -> the found
                candidates and their read series (the first one of each sagittal sequence is
                used; every axial one is considered).
            study_id: Recorded in the prediction and its rows.

        Returns:
            The prediction and the T2 slice its overlay shows.

        Raises:
            NotSagittalError: If the T2 slices are not sagittal.
            DataError: If a target's series has no usable geometry.
        """
        t2_candidate, t2 = series["Sagittal T2/STIR"][0]
        chosen, xy = self.locate(t2)
        headers = t2.geometry.slices
        canal = {
            level: (int(headers[int(chosen[k])].instance_number), float(xy[k, 0]), float(xy[k, 1]))
            for k, level in enumerate(LEVELS)
        }
        t1_candidate, t1 = series[SAGITTAL_T1][0]
        read = {(SAGITTAL_T1, t1_candidate.series_id): t1}
        for candidate, axial in series[AXIAL_T2]:
            read[AXIAL_T2, candidate.series_id] = axial
        geometries = {
            SAGITTAL_T1: [(t1_candidate.series_id, t1.geometry)],
            AXIAL_T2: [(c.series_id, axial.geometry) for c, axial in series[AXIAL_T2]],
        }
        mapped = map_on_nearest_series(self.points, t2.geometry, canal, geometries)
        places: list[tuple[str, str, str, DicomSeries, int, float, float, str | None, str]] = [
            (SPINAL_CANAL, level, t2_candidate.series_id, t2, int(chosen[k]),
             float(xy[k, 0]), float(xy[k, 1]), None, "")
            for k, level in enumerate(LEVELS)
        ]  # fmt: skip
        for m in mapped:
            if m.slice_index < 0:
                raise DataError(
                    f"study {study_id}, {m.condition} {m.level}: {m.detail}; the target cannot "
                    "be placed"
                )
            source = read[CONDITION_SEQUENCE[m.condition], m.series_id]
            places.append(
                (m.condition, m.level, m.series_id, source, m.slice_index, m.x, m.y, m.skip,
                 m.detail)
            )  # fmt: skip
        rois = torch.stack([self.classifier_input(p[3].pixels[p[4]], p[5], p[6]) for p in places])
        condition = torch.tensor([CONDITIONS.index(p[0]) for p in places], dtype=torch.int64)
        outputs = self.classifier(rois.to(self.device), condition.to(self.device))
        logits = class_logits(self.classifier, outputs.float().cpu().double())
        grades = logits.argmax(dim=1).tolist()  # uncalibrated, as spinal predict
        for c in CONDITIONS:
            calibration = self.calibrations[c]
            rows = [i for i, p in enumerate(places) if p[0] == c]
            if calibration is not None and rows:
                logits[rows] = calibration.apply(logits[rows])
        probabilities = torch.softmax(logits, dim=1).numpy()
        targets = []
        for i, (c, level, series_id, source, index, x, y, skip, detail) in enumerate(places):
            targets.append(
                TargetPrediction(
                    condition=c,
                    level=level,
                    series_id=series_id,
                    instance_number=int(source.geometry.slices[index].instance_number),
                    slice_index=index,
                    x=x,
                    y=y,
                    grade=SEVERITIES[grades[i]],
                    probabilities={
                        s: float(v) for s, v in zip(SEVERITIES, probabilities[i], strict=True)
                    },
                    point_skip=skip,
                    point_detail=detail,
                )
            )
        order = [(c, lv) for c in CONDITIONS for lv in LEVELS]
        targets.sort(key=lambda t: order.index((t.condition, t.level)))
        values, counts = np.unique(chosen, return_counts=True)
        shown = int(values[int(np.argmax(counts))])
        image = t2.pixels[shown]
        provenance = {
            "classifier": {
                k: self.classifier_meta.get(k) for k in ("data_source", "profile", "seed", "mode")
            }
            | {
                "kind": type(self.classifier).__name__,
                "calibration": {
                    c: None if cal is None else cal.method for c, cal in self.calibrations.items()
                },
            },
            "condition_points": {
                "min_level_count": self.points.min_level_count,
                "max_plane_distance_mm": self.points.max_plane_distance_mm,
            },
        } | self.locator_provenance()
        spinal = SeriesPrediction(
            series_dir=str(t2.geometry.series_dir),
            instance_number=int(headers[shown].instance_number),
            slice_shape=(int(image.shape[0]), int(image.shape[1])),
            levels=tuple(
                LevelPrediction(
                    level=t.level,
                    x=t.x,
                    y=t.y,
                    grade=t.grade,
                    probabilities=t.probabilities,
                    instance_number=t.instance_number,
                    slice_index=t.slice_index,
                )
                for t in targets
                if t.condition == SPINAL_CANAL
            ),
            provenance=provenance,
            study_id=study_id,
            series_id=t2_candidate.series_id,
            series_type=t2_candidate.series_type.describe(),
        )
        prediction = StudyPrediction(
            study_id=study_id,
            series={name: tuple(c.series_id for c, _ in pairs) for name, pairs in series.items()},
            targets=tuple(targets),
            spinal=spinal,
            provenance=provenance,
        )
        return prediction, image

    def predict(
        self,
        path: str | Path,
        *,
        force: bool = False,
        study_id: str | None = None,
        series_csv: Mapping[str, str] | None = None,
    ) -> tuple[StudyPrediction, np.ndarray]:
        """Find a study's three series under ``path`` and grade its 25 targets.

        Args:
            path: A study directory or a flat folder of its mixed series.
            force: As :func:`~lumbarssl.pipeline.inference.choose_series` (the T2 series).
            study_id: The study's id; ``path``'s name when ``None``.
            series_csv: RSNA series id -> description, consulted when headers do not decide.

        Returns:
            The prediction and the T2 slice its overlay shows.

        Raises:
            MissingFileError: If ``path`` holds no DICOM file.
            NoSagittalT2Error: If no series is Sagittal T2/STIR.
            MissingSeriesError: If the Sagittal T1 or the Axial T2 series is missing.
        """
        root = Path(path)
        candidates = find_series(root, series_csv=series_csv)
        study = root.name if study_id is None else study_id
        picked = {
            "Sagittal T2/STIR": [choose_series(candidates, force=force)],
            SAGITTAL_T1: _pick(candidates, SAGITTAL_T1, study)[:1],
            AXIAL_T2: _pick(candidates, AXIAL_T2, study),
        }
        read: dict[str, list[tuple[SeriesCandidate, DicomSeries]]] = {}
        for name, chosen in picked.items():
            for candidate in chosen:
                try:
                    read.setdefault(name, []).append((candidate, read_candidate(candidate)))
                except DataError as exc:
                    raise DataError(f"{candidate.directory or root}: {exc}") from exc
        return self.grade(read, study_id=study)


def write_study_prediction(
    prediction: StudyPrediction, image: np.ndarray, out_dir: str | Path
) -> tuple[Path, Path]:
    """Write ``prediction.json`` (all 25 targets) and ``overlay.png`` (the spinal canal).

    Args:
        prediction: Output of :meth:`ConditionGrader.predict`.
        image: The T2 slice the overlay shows.
        out_dir: Output directory (created).

    Returns:
        Paths of the JSON file and the PNG.
    """
    json_path, png_path = write_prediction(prediction.spinal, image, out_dir)
    json_path.write_text(json.dumps(prediction.to_dict(), indent=2) + "\n")
    return json_path, png_path


@dataclasses.dataclass(frozen=True)
class ConditionBatchResult:
    """What :func:`grade_condition_directory` did.

    Attributes:
        predictions: One prediction per graded study, in study order.
        failures: ``(study_id, message)`` of each study that could not be graded.
        rows: The 25 submission rows of each graded study.
    """

    predictions: tuple[StudyPrediction, ...]
    failures: tuple[tuple[str, str], ...]
    rows: tuple[SubmissionRow, ...]


def grade_condition_directory(
    grader: ConditionGrader,
    root: str | Path,
    *,
    out: str | Path | None = None,
    series_csv: Mapping[str, str] | None = None,
    force: bool = False,
    progress: bool = True,
    studies: Sequence[str] | None = None,
) -> ConditionBatchResult:
    """Grade all 25 targets of every study of an RSNA-layout directory.

    As :func:`~lumbarssl.pipeline.inference.grade_directory`: a study that cannot be graded
    (a missing series, unreadable files) is recorded in the failures and the others go on.

    Args:
        grader: The models.
        root: The dataset directory or a directory of study directories.
        out: Where each study's ``prediction.json`` and ``overlay.png`` go (``out/STUDY``).
        series_csv: RSNA series id -> description.
        force: As :func:`~lumbarssl.pipeline.inference.choose_series`.
        progress: Show a tqdm progress bar.
        studies: Only these study ids (all when ``None``).

    Returns:
        The predictions, failures and submission rows.
    """
    return ConditionBatchResult(
        *grade_each_study(
            grader.predict,
            study_prediction_rows,
            write_study_prediction,
            root,
            out=out,
            series_csv=series_csv,
            force=force,
            progress=progress,
            studies=studies,
        )
    )
