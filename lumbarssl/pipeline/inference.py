"""Fully automated grading of an unannotated sagittal T2 series (paper Sec. 4.5).

The localizer finds the five disc centres on the mid-sagittal slice, the ROI extractor crops
them exactly as in training, and the classifier grades each crop. Both inputs are built by
the recipes stored in the two checkpoints (:mod:`lumbarssl.data.recipes`), through the same
functions the training datasets use.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.transforms import v2

from lumbarssl.data.constants import LEVELS, SEVERITIES
from lumbarssl.data.dicom import DicomSeries, read_series
from lumbarssl.data.recipes import LocalizerRecipe, RoiRecipe
from lumbarssl.errors import InputError, WrongKindError
from lumbarssl.models import DiscClassifier, Localizer2p5D, load_checkpoint
from lumbarssl.pipeline.convert import load_recipe
from lumbarssl.pipeline.evaluate import calibration_from_metadata, class_logits
from lumbarssl.reporting.figures import plot_prediction_overlay
from lumbarssl.training import select_device

#: Smallest |x component| of the slice normal accepted as sagittal (about 37 degrees of tilt).
_SAGITTAL_MIN_COSINE = 0.8


class NotSagittalError(InputError):
    """The series is not a sagittal acquisition, so disc centres cannot be localised."""


@dataclasses.dataclass(frozen=True)
class LevelPrediction:
    """The localizer's centre and the classifier's grade for one disc level.

    Attributes:
        level: ``"L1/L2"`` ... ``"L5/S1"``.
        x: Column of the predicted centre on the slice, in pixels.
        y: Row of the predicted centre on the slice, in pixels.
        grade: Predicted severity (``"Normal/Mild"``, ``"Moderate"``, ``"Severe"``): the argmax
            of the classifier's uncalibrated outputs, the decision rule Table 1 measures.
        probabilities: Severity -> probability, calibrated by the classifier's
            validation-fitted map when its checkpoint carries one.
    """

    level: str
    x: float
    y: float
    grade: str
    probabilities: dict[str, float]


@dataclasses.dataclass(frozen=True)
class SeriesPrediction:
    """Predictions for one series.

    Attributes:
        series_dir: The series directory.
        instance_number: InstanceNumber of the slice the centres refer to (the mid slice).
        slice_shape: ``(H, W)`` of that slice.
        levels: One prediction per level, L1/L2 first.
        provenance: Facts about the two checkpoints (data source, profile, seed).
    """

    series_dir: str
    instance_number: int
    slice_shape: tuple[int, int]
    levels: tuple[LevelPrediction, ...]
    provenance: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dictionary."""
        return dataclasses.asdict(self)


def _check_sagittal(series: DicomSeries) -> None:
    normal = series.geometry.slices[len(series) // 2].normal
    if normal is None:
        return  # no orientation stored: nothing to check against
    if abs(float(normal[0])) < _SAGITTAL_MIN_COSINE:
        raise NotSagittalError(
            f"{series.geometry.series_dir}: slice normal {np.round(normal, 3).tolist()} is not "
            "along the patient's left-right axis; expected a sagittal series"
        )


class DiscGrader:
    """A localizer and a classifier, loaded from checkpoints, that grade whole series.

    Args:
        localizer: The ``model.pt`` of ``lumbarssl train-localizer``.
        classifier: The ``model.pt`` of ``lumbarssl finetune``.
        device: Device to run on.

    Attributes:
        roi_recipe: The classifier's :class:`~lumbarssl.data.recipes.RoiRecipe`.
        localizer_recipe: The localizer's :class:`~lumbarssl.data.recipes.LocalizerRecipe`.
        calibration: The classifier's validation-fitted
            :class:`~lumbarssl.metrics.Calibration` (``None`` if its checkpoint has none),
            applied to the probabilities.

    Raises:
        TypeError: If a checkpoint holds the wrong kind of model.
        InputError: If a checkpoint has no recipe (older format; the message says how to
            convert it).
    """

    def __init__(
        self, localizer: str | Path, classifier: str | Path, *, device: str = "auto"
    ) -> None:
        self.device = select_device(device)
        loc_model, self.localizer_meta = load_checkpoint(localizer)
        cls_model, self.classifier_meta = load_checkpoint(classifier)
        if not isinstance(loc_model, Localizer2p5D):
            raise WrongKindError(
                f"{localizer} holds a {type(loc_model).__name__}, not a Localizer2p5D"
            )
        if not isinstance(cls_model, DiscClassifier):
            raise WrongKindError(
                f"{classifier} holds a {type(cls_model).__name__}, not a DiscClassifier"
            )
        self.localizer_recipe = load_recipe(self.localizer_meta, LocalizerRecipe, localizer)
        self.roi_recipe = load_recipe(self.classifier_meta, RoiRecipe, classifier)
        self.calibration = calibration_from_metadata(self.classifier_meta, str(classifier))
        self.localizer: nn.Module = loc_model.to(self.device).eval()
        self.classifier: nn.Module = cls_model.to(self.device).eval()

    @property
    def roi_size(self) -> int:
        """Side of the ROI cut around each disc (the classifier recipe's)."""
        return self.roi_recipe.roi_size

    @property
    def localizer_size(self) -> int:
        """Side of the localizer's input (the localizer recipe's)."""
        return self.localizer_recipe.input_size

    @property
    def preprocess(self) -> v2.Transform:
        """The classifier's deterministic ROI transform (the recipe's ``eval_transform``)."""
        return self.roi_recipe.eval_transform()

    def localizer_input(self, slices: list[np.ndarray], center: int) -> Tensor:
        """The localizer's input for one series, as the training dataset builds it.

        The stack ``lumbarssl prepare`` would cache (:meth:`LocalizerRecipe.stack
        <lumbarssl.data.recipes.LocalizerRecipe.stack>`), then
        :meth:`LocalizerRecipe.network_input
        <lumbarssl.data.recipes.LocalizerRecipe.network_input>`, on the CPU.

        Args:
            slices: The series in spatial order, each (H_i, W_i).
            center: Index of the slice whose centres are wanted.

        Returns:
            float32 (slices, S, S), ``S = localizer_recipe.input_size``.
        """
        recipe = self.localizer_recipe
        return recipe.network_input(recipe.stack(slices, center))

    def classifier_input(self, image: np.ndarray, x: float, y: float) -> Tensor:
        """The classifier's input for the disc at ``(x, y)``, as the training dataset builds it.

        The ROI ``lumbarssl prepare`` would cache (:meth:`RoiRecipe.extract
        <lumbarssl.data.recipes.RoiRecipe.extract>`, padding included), then
        :meth:`RoiRecipe.network_input <lumbarssl.data.recipes.RoiRecipe.network_input>`,
        on the CPU.

        Args:
            image: The slice, real-valued (H, W).
            x: Column of the disc centre in pixels.
            y: Row of the disc centre in pixels.

        Returns:
            float32 (1, S, S), ``S = roi_recipe.input_size``.
        """
        recipe = self.roi_recipe
        return recipe.network_input(recipe.extract(image, x, y))

    @torch.no_grad()
    def predict_series(self, series_dir: str | Path) -> tuple[SeriesPrediction, np.ndarray]:
        """Localise and grade the five discs of one series.

        Args:
            series_dir: Directory of ``*.dcm`` files of one sagittal T2 series.

        Returns:
            The prediction and the mid slice it refers to, float32 (H, W).

        Raises:
            NotSagittalError: If the slices are not sagittal.
            lumbarssl.data.dicom.DicomReadError: If a file is corrupt or not DICOM (the
                message names it).
            lumbarssl.data.dicom.SeriesGeometryError: If the directory holds no DICOM slice.
        """
        series = read_series(series_dir)
        _check_sagittal(series)
        center = len(series) // 2
        image = series.pixels[center]
        height, width = image.shape
        inputs = self.localizer_input(list(series.pixels), center).unsqueeze(0).to(self.device)
        levels = torch.arange(len(LEVELS), device=self.device)
        centres = self.localizer(inputs.expand(len(LEVELS), -1, -1, -1), levels).float().cpu()
        xs = (centres[:, 0] * width).tolist()
        ys = (centres[:, 1] * height).tolist()
        rois = torch.stack(
            [self.classifier_input(image, x, y) for x, y in zip(xs, ys, strict=True)]
        ).to(self.device)
        logits = class_logits(self.classifier, self.classifier(rois).float().cpu().double())
        grades = logits.argmax(dim=1).tolist()  # uncalibrated: the rule of Table 1
        if self.calibration is not None:
            logits = self.calibration.apply(logits)
        probabilities = torch.softmax(logits, dim=1).numpy()
        predictions = tuple(
            LevelPrediction(
                level=LEVELS[i],
                x=float(xs[i]),
                y=float(ys[i]),
                grade=SEVERITIES[grades[i]],
                probabilities={
                    s: float(p) for s, p in zip(SEVERITIES, probabilities[i], strict=True)
                },
            )
            for i in range(len(LEVELS))
        )
        provenance = {
            "classifier": {
                k: self.classifier_meta.get(k) for k in ("data_source", "profile", "seed", "mode")
            }
            | {
                "head": self.classifier_meta.get("head", "softmax"),
                "calibration": None if self.calibration is None else self.calibration.method,
            },
            "localizer": {
                k: self.localizer_meta.get(k) for k in ("data_source", "profile", "seed")
            },
        }
        result = SeriesPrediction(
            series_dir=str(series_dir),
            instance_number=series.geometry.slices[center].instance_number,
            slice_shape=(int(height), int(width)),
            levels=predictions,
            provenance=provenance,
        )
        return result, image


def write_prediction(
    prediction: SeriesPrediction, image: np.ndarray, out_dir: str | Path
) -> tuple[Path, Path]:
    """Write ``prediction.json`` and ``overlay.png`` (the slice with each level's grade).

    Args:
        prediction: Output of :meth:`DiscGrader.predict_series`.
        image: The slice the centres refer to, (H, W).
        out_dir: Output directory (created).

    Returns:
        Paths of the JSON file and the PNG.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "prediction.json"
    json_path.write_text(json.dumps(prediction.to_dict(), indent=2) + "\n")
    png_path = out / "overlay.png"
    plot_prediction_overlay(image, prediction, png_path)
    return json_path, png_path
