"""Fully automated grading of an unannotated study (paper Sec. 4.5, extended by issue 13).

The chain, per series:

1. **which series**: every ``.dcm`` under the given path is grouped by SeriesInstanceUID (a
   series directory, a study directory of series directories, or a flat folder of mixed
   series as a PACS exports it), each group is typed by
   :func:`~lumbarssl.data.series_type.classify_series`, and the Sagittal T2/STIR one is
   graded; anything else is refused unless forced;
2. **where in-plane**: the localizer (the paper's :class:`~lumbarssl.models.Localizer2p5D`, or
   the :class:`~lumbarssl.models.HeatmapLocalizer`) finds the five disc centres on the stack
   around the centre slice;
3. **which slice**: per level, the slice through the canal midline, chosen by a trained
   :class:`~lumbarssl.models.SliceSelector` or, without one, the CSF-brightness baseline
   (:func:`~lumbarssl.models.slice_select.baseline_slice_scores`);
4. the localizer runs again on each level's own slice stack, and the classifier grades the
   crop of each level on its own slice.

Both models' inputs are built by the recipes stored in their checkpoints
(:mod:`lumbarssl.data.recipes`), through the same functions the training datasets use.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.transforms import v2

from lumbarssl.data.constants import LEVELS, SEVERITIES
from lumbarssl.data.dicom import DicomSeries, read_series
from lumbarssl.data.recipes import LocalizerRecipe, RoiRecipe
from lumbarssl.data.series_type import (
    SeriesHeader,
    SeriesType,
    classify_series,
    read_series_header,
)
from lumbarssl.errors import DataError, InputError, MissingFileError, WrongKindError
from lumbarssl.metrics.submission import SubmissionRow, study_rows
from lumbarssl.models import (
    DiscClassifier,
    HeatmapLocalizer,
    Localizer2p5D,
    SliceSelector,
    load_checkpoint,
)
from lumbarssl.models.slice_select import (
    baseline_slice_scores,
    extract_level_patches,
    select_slices,
)
from lumbarssl.pipeline.convert import load_recipe
from lumbarssl.pipeline.evaluate import calibration_from_metadata, class_logits
from lumbarssl.reporting.figures import plot_prediction_overlay
from lumbarssl.training import select_device

__all__ = [
    "SELECTOR_SETTINGS_KEY",
    "BatchResult",
    "DiscGrader",
    "LevelPrediction",
    "NoSagittalT2Error",
    "NotSagittalError",
    "SeriesCandidate",
    "SeriesPrediction",
    "SpineLocator",
    "WrongSeriesTypeError",
    "choose_series",
    "find_series",
    "grade_directory",
    "grade_each_study",
    "prediction_rows",
    "read_candidate",
    "read_series_csv",
    "study_directories",
    "write_prediction",
]

#: Smallest |x component| of the slice normal accepted as sagittal (about 37 degrees of tilt).
_SAGITTAL_MIN_COSINE = 0.8
#: Checkpoint metadata key of a slice selector's patch settings (``patch_mm``, ``patch_px``).
SELECTOR_SETTINGS_KEY: Final = "slice_selection"
#: In-plane pixel size assumed when a series stores none (mm).
_DEFAULT_SPACING_MM: Final = 1.0


class NotSagittalError(InputError):
    """The series is not a sagittal acquisition, so disc centres cannot be localised."""


class WrongSeriesTypeError(InputError):
    """The series is not Sagittal T2/STIR (the paper grades only those); ``--force`` grades it."""


class NoSagittalT2Error(InputError):
    """A study directory or folder holds no Sagittal T2/STIR series."""


@dataclasses.dataclass(frozen=True)
class SeriesCandidate:
    """One series found under a path given to ``predict``.

    Attributes:
        series_id: The series directory's name when the series fills a directory of its own
            (the RSNA layout), else its SeriesInstanceUID.
        files: Its ``.dcm`` files, sorted.
        header: Series-level tags of its first file.
        series_type: The decided plane and contrast.
    """

    series_id: str
    files: tuple[Path, ...]
    header: SeriesHeader
    series_type: SeriesType

    @property
    def directory(self) -> Path | None:
        """The directory holding exactly this series' files, or ``None`` (a mixed folder)."""
        parents = {f.parent for f in self.files}
        if len(parents) != 1:
            return None
        parent = parents.pop()
        return parent if set(parent.glob("*.dcm")) == set(self.files) else None


def find_series(
    path: str | Path, *, series_csv: Mapping[str, str] | None = None
) -> list[SeriesCandidate]:
    """Group the ``.dcm`` files under ``path`` (recursively) by series and type each series.

    Args:
        path: A series directory, a study directory of series directories, or a flat folder
            of mixed series.
        series_csv: RSNA series id -> description (``train_series_descriptions.csv``) to use
            when a file's own SeriesDescription does not decide (see
            :func:`~lumbarssl.data.series_type.classify_series`).

    Returns:
        The series, ordered by id.

    Raises:
        MissingFileError: If ``path`` is not a directory or holds no ``.dcm`` file.
        InputError: If a file is not readable DICOM (the message names it).
    """
    root = Path(path)
    if not root.is_dir():
        raise MissingFileError(f"{root} is not a directory of DICOM files")
    files = sorted(p for p in root.rglob("*.dcm") if p.is_file())
    if not files:
        raise MissingFileError(f"{root}: no .dcm file in it or below it")
    groups: dict[str, list[tuple[Path, SeriesHeader]]] = {}
    for file in files:
        header = read_series_header(file)
        key = header.series_uid or f"dir:{file.parent}"
        groups.setdefault(key, []).append((file, header))
    candidates = []
    for key, members in groups.items():
        paths = tuple(p for p, _ in members)
        header = members[0][1]
        parents = {p.parent for p in paths}
        own_dir = len(parents) == 1 and set(next(iter(parents)).glob("*.dcm")) == set(paths)
        series_id = next(iter(parents)).name if own_dir else key.removeprefix("dir:")
        series_type = classify_series(header, series_csv=series_csv, series_id=series_id)
        candidates.append(SeriesCandidate(series_id, paths, header, series_type))
    return sorted(candidates, key=lambda c: c.series_id)


def choose_series(candidates: Sequence[SeriesCandidate], *, force: bool = False) -> SeriesCandidate:
    """The Sagittal T2/STIR series to grade among ``candidates``.

    With several Sagittal T2 series the one with the most slices is taken. With none,
    ``force`` takes the only series there is, or else the only sagittal one.

    Args:
        candidates: Output of :func:`find_series`.
        force: Grade a series that is not Sagittal T2/STIR rather than refuse.

    Returns:
        The chosen series.

    Raises:
        WrongSeriesTypeError: If the only series is not Sagittal T2/STIR and ``force`` is off.
        NoSagittalT2Error: If several series are there and none is Sagittal T2/STIR (and
            ``force`` cannot pick a single sagittal one).
    """
    if not candidates:
        raise NoSagittalT2Error("no series given")
    t2 = [c for c in candidates if c.series_type.is_sagittal_t2]
    if t2:
        return max(t2, key=lambda c: (len(c.files), c.series_id))
    if force:
        if len(candidates) == 1:
            return candidates[0]
        sagittal = [c for c in candidates if c.series_type.plane == "sagittal"]
        if len(sagittal) == 1:
            return sagittal[0]
    found = "; ".join(f"series {c.series_id}: {c.series_type.describe()}" for c in candidates)
    if len(candidates) == 1:
        raise WrongSeriesTypeError(
            f"{found}; predict grades Sagittal T2/STIR series only (paper Sec. 3.1): give the "
            "study's T2 series, or pass --force to grade this one anyway"
        )
    raise NoSagittalT2Error(
        f"no Sagittal T2/STIR series among {len(candidates)} ({found}); give the study's T2 "
        "series, the RSNA series CSV (--series-csv) if the descriptions are missing, or --force "
        "with a single series"
    )


def read_candidate(candidate: SeriesCandidate) -> DicomSeries:
    """Read a found series, pixels included, in spatial order.

    A series spread over a mixed folder is read through a temporary directory of links to
    its files, so it is ordered and decoded exactly like a series directory.

    Args:
        candidate: One of :func:`find_series`.

    Returns:
        The series.
    """
    directory = candidate.directory
    if directory is not None:
        return read_series(directory)
    with tempfile.TemporaryDirectory(prefix="lumbarssl-series-") as tmp:
        for i, file in enumerate(candidate.files):
            os.symlink(file.resolve(), Path(tmp) / f"{i:06d}_{file.name}")
        return read_series(tmp)


@dataclasses.dataclass(frozen=True)
class LevelPrediction:
    """The localizer's centre and the classifier's grade for one disc level.

    Attributes:
        level: ``"L1/L2"`` ... ``"L5/S1"``.
        x: Column of the predicted centre on the level's slice, in pixels.
        y: Row of the predicted centre on the level's slice, in pixels.
        grade: Predicted severity (``"Normal/Mild"``, ``"Moderate"``, ``"Severe"``): the argmax
            of the classifier's uncalibrated outputs, the decision rule Table 1 measures.
        probabilities: Severity -> probability, calibrated by the classifier's
            validation-fitted map when its checkpoint carries one.
        instance_number: InstanceNumber of the slice the level was graded on (its chosen
            mid-sagittal slice); ``-1`` in predictions written before slice selection.
        slice_index: That slice's place in spatial order; ``-1`` likewise.
    """

    level: str
    x: float
    y: float
    grade: str
    probabilities: dict[str, float]
    instance_number: int = -1
    slice_index: int = -1


@dataclasses.dataclass(frozen=True)
class SeriesPrediction:
    """Predictions for one series.

    Attributes:
        series_dir: Where the series was read (its directory, or the folder it was found in).
        instance_number: InstanceNumber of the slice shown in the overlay (the one most levels
            were graded on).
        slice_shape: ``(H, W)`` of that slice.
        levels: One prediction per level, L1/L2 first; each names its own slice.
        provenance: Facts about the checkpoints (data source, profile, seed) and the chain.
        study_id: The study's id (its directory name, or as given).
        series_id: The series' id (directory name or SeriesInstanceUID).
        series_type: What the series-type check decided (``"Sagittal T2/STIR (from ...)"``).
    """

    series_dir: str
    instance_number: int
    slice_shape: tuple[int, int]
    levels: tuple[LevelPrediction, ...]
    provenance: dict[str, Any]
    study_id: str = ""
    series_id: str = ""
    series_type: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dictionary."""
        return dataclasses.asdict(self)

    def probabilities(self) -> np.ndarray:
        """Normal/Mild, Moderate, Severe probabilities per level, shape (5, 3)."""
        return np.array([[lv.probabilities[s] for s in SEVERITIES] for lv in self.levels])


def prediction_rows(
    prediction: SeriesPrediction, study_id: str | None = None
) -> list[SubmissionRow]:
    """The RSNA 2024 submission rows of one graded study (spinal canal stenosis, 5 levels).

    Args:
        prediction: Output of :meth:`DiscGrader.predict`.
        study_id: The row ids' study; ``prediction.study_id`` when ``None``.

    Returns:
        Five rows, L1/L2 first (:func:`~lumbarssl.metrics.submission.study_rows`).
    """
    study = prediction.study_id if study_id is None else study_id
    return study_rows(study, {"spinal_canal_stenosis": prediction.probabilities()})


def _check_sagittal(series: DicomSeries) -> None:
    normal = series.geometry.slices[len(series) // 2].normal
    if normal is None:
        return  # no orientation stored: nothing to check against
    if abs(float(normal[0])) < _SAGITTAL_MIN_COSINE:
        raise NotSagittalError(
            f"{series.geometry.series_dir}: slice normal {np.round(normal, 3).tolist()} is not "
            "along the patient's left-right axis; expected a sagittal series"
        )


def _require(path: str | Path, what: str) -> None:
    if not Path(path).is_file():
        raise MissingFileError(f"{path}: no such {what} checkpoint (a model.pt file)")


class SpineLocator:
    """A localizer and optionally a slice selector: the disc centres of a Sagittal T2 series.

    The part of :class:`DiscGrader` that finds where each level is (steps 2 to 4 of the
    module docstring); :class:`~lumbarssl.pipeline.condition_inference.ConditionGrader`
    uses it too.

    Args:
        localizer: The ``model.pt`` of ``lumbarssl train-localizer`` (the paper's regressor)
            or of ``lumbarssl train-heatmap`` (the heatmap localizer).
        slice_selector: The ``model.pt`` of ``lumbarssl train-slice-selector``, or ``None``
            for the CSF-brightness baseline.
        device: Device to run on.

    Attributes:
        localizer_recipe: The localizer's :class:`~lumbarssl.data.recipes.LocalizerRecipe`.

    Raises:
        MissingFileError: If a checkpoint does not exist.
        WrongKindError: If a checkpoint holds the wrong kind of model.
        InputError: If a checkpoint has no recipe or is unreadable.
    """

    def __init__(
        self,
        localizer: str | Path,
        *,
        slice_selector: str | Path | None = None,
        device: str = "auto",
    ) -> None:
        self.device = select_device(device)
        _require(localizer, "localizer")
        self._load_locator(localizer, slice_selector)

    def _load_locator(self, localizer: str | Path, slice_selector: str | Path | None) -> None:
        loc_model, self.localizer_meta = load_checkpoint(localizer)
        if not isinstance(loc_model, Localizer2p5D | HeatmapLocalizer):
            raise WrongKindError(
                f"{localizer} holds a {type(loc_model).__name__}, not a Localizer2p5D or a "
                "HeatmapLocalizer"
            )
        self.localizer_recipe = load_recipe(self.localizer_meta, LocalizerRecipe, localizer)
        self.localizer: nn.Module = loc_model.to(self.device).eval()
        self.selector: SliceSelector | None = None
        self.selector_meta: dict[str, object] = {}
        self.patch_mm, self.patch_px = 48.0, 32
        if slice_selector is not None:
            _require(slice_selector, "slice selector")
            sel_model, self.selector_meta = load_checkpoint(slice_selector)
            if not isinstance(sel_model, SliceSelector):
                raise WrongKindError(
                    f"{slice_selector} holds a {type(sel_model).__name__}, not a SliceSelector"
                )
            settings = self.selector_meta.get(SELECTOR_SETTINGS_KEY)
            if not isinstance(settings, Mapping):
                raise InputError(
                    f"{slice_selector}: no {SELECTOR_SETTINGS_KEY!r} settings in its metadata; "
                    "train it with lumbarssl train-slice-selector"
                )
            self.patch_mm = float(settings["patch_mm"])
            self.patch_px = int(settings["patch_px"])
            self.selector = sel_model.to(self.device).eval()

    @property
    def localizer_kind(self) -> Literal["regression", "heatmap"]:
        """``"heatmap"`` for a :class:`~lumbarssl.models.HeatmapLocalizer`, else ``"regression"``.

        Returns:
            The kind.
        """
        return "heatmap" if isinstance(self.localizer, HeatmapLocalizer) else "regression"

    @property
    def localizer_size(self) -> int:
        """Side of the localizer's input (the localizer recipe's)."""
        return self.localizer_recipe.input_size

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

    @torch.no_grad()
    def localize(
        self,
        slices: list[np.ndarray],
        centers: Sequence[int],
        *,
        memo: dict[int, np.ndarray] | None = None,
    ) -> np.ndarray:
        """Disc centres, each level on the stack around its own slice.

        The stacks of all distinct slices go through the network as one batch.

        Args:
            slices: The series in spatial order, each (H_i, W_i).
            centers: Per level (5), the index of its slice.
            memo: Heatmap localizer only: slice index -> its (5, 2) centres, read and filled
                (a second call on the same series reuses the stacks already run).

        Returns:
            float64 (5, 2): ``(x, y)`` in pixels of each level's slice.
        """
        out = np.zeros((len(LEVELS), 2))
        size = self.localizer_recipe.input_size
        memo = {} if memo is None else memo
        heatmap = self.localizer if isinstance(self.localizer, HeatmapLocalizer) else None
        distinct = sorted({int(c) for c in centers} - (set(memo) if heatmap else set()))
        recipe = self.localizer_recipe
        if distinct:
            stacks = torch.from_numpy(np.stack([recipe.stack(slices, c) for c in distinct]))
            inputs = recipe.network_input(stacks).to(self.device)
        if heatmap is not None:
            if distinct:
                # With a refiner, each coarse peak is refined on the stored-resolution stack.
                full = stacks.to(self.device).float() / 255.0
                xy, _ = heatmap.predict(inputs, stack=full)
                points = xy.float().cpu().numpy()
                for n, center in enumerate(distinct):
                    height, width = slices[center].shape
                    memo[center] = np.stack(
                        [
                            (points[n, :, 0] + 0.5) * width / size - 0.5,
                            (points[n, :, 1] + 0.5) * height / size - 0.5,
                        ],
                        axis=1,
                    )
            for k, center in enumerate(centers):
                out[k] = memo[int(center)][k]
            return out
        position = {c: n for n, c in enumerate(distinct)}
        batch = inputs[[position[int(c)] for c in centers]]
        levels = torch.arange(len(centers), device=self.device)
        centres = self.localizer(batch, levels).float().cpu().numpy()
        for k, center in enumerate(centers):
            height, width = slices[int(center)].shape
            out[k] = (centres[k, 0] * width, centres[k, 1] * height)
        return out

    @torch.no_grad()
    def select(self, slices: list[np.ndarray], xy: np.ndarray, spacing: float) -> np.ndarray:
        """Per level, the index of the slice through the canal midline.

        Args:
            slices: The series in spatial order; all slices must share one shape (else the
                centre slice is returned for every level).
            xy: (5, 2) in-plane points (pixels).
            spacing: In-plane pixel size (mm).

        Returns:
            int64 (5,) spatial indices.
        """
        if len({s.shape for s in slices}) != 1:
            return np.full(len(LEVELS), len(slices) // 2, dtype=np.int64)
        volume = np.stack(slices).astype(np.float32)
        if self.selector is None:
            scores = baseline_slice_scores(volume, xy, spacing)
        else:
            patches = extract_level_patches(
                torch.from_numpy(volume),
                torch.from_numpy(np.asarray(xy, dtype=np.float32)),
                spacing,
                patch_mm=self.patch_mm,
                patch_px=self.patch_px,
            )
            scores = self.selector(patches.to(self.device)).float().cpu().numpy()
        index, _ = select_slices(scores)
        return index

    @torch.no_grad()
    def locate(self, series: DicomSeries) -> tuple[np.ndarray, np.ndarray]:
        """Each level's slice and disc centre on a sagittal series (steps 2 to 4).

        Args:
            series: The series (:func:`~lumbarssl.data.dicom.read_series`).

        Returns:
            ``(chosen, xy)``: int64 (5,) spatial slice indices and float64 (5, 2) ``(x, y)``
            pixels of each level on its slice.

        Raises:
            NotSagittalError: If the slices are not sagittal.
        """
        _check_sagittal(series)
        slices = list(series.pixels)
        center = len(series) // 2
        memo: dict[int, np.ndarray] = {}
        first = self.localize(slices, [center] * len(LEVELS), memo=memo)
        spacing_pair = series.geometry.slices[center].pixel_spacing
        spacing = float(spacing_pair[1]) if spacing_pair else _DEFAULT_SPACING_MM
        chosen = self.select(slices, first, spacing)
        xy = self.localize(slices, chosen.tolist(), memo=memo)
        return chosen, xy

    def locator_provenance(self) -> dict[str, Any]:
        """Facts about the localizer and the slice selection, for a prediction's provenance.

        Returns:
            ``{"localizer": ..., "slice_selection": ...}``.
        """
        return {
            "localizer": {k: self.localizer_meta.get(k) for k in ("data_source", "profile", "seed")}
            | {"kind": self.localizer_kind},
            "slice_selection": (
                {k: self.selector_meta.get(k) for k in ("data_source", "profile", "seed")}
                | {"kind": "model"}
                if self.selector is not None
                else {"kind": "csf_baseline"}
            ),
        }


class DiscGrader(SpineLocator):
    """A localizer, a classifier and optionally a slice selector that grade whole studies.

    Args:
        localizer: The ``model.pt`` of ``lumbarssl train-localizer`` (the paper's regressor)
            or of ``lumbarssl train-heatmap`` (the heatmap localizer).
        classifier: The ``model.pt`` of ``lumbarssl finetune``.
        slice_selector: The ``model.pt`` of ``lumbarssl train-slice-selector``, or ``None``
            for the CSF-brightness baseline.
        device: Device to run on.

    Attributes:
        roi_recipe: The classifier's :class:`~lumbarssl.data.recipes.RoiRecipe`.
        localizer_recipe: The localizer's :class:`~lumbarssl.data.recipes.LocalizerRecipe`.
        calibration: The classifier's validation-fitted
            :class:`~lumbarssl.metrics.Calibration` (``None`` if its checkpoint has none),
            applied to the probabilities.

    Raises:
        MissingFileError: If a checkpoint does not exist.
        WrongKindError: If a checkpoint holds the wrong kind of model.
        InputError: If a checkpoint has no recipe (older format; the message says how to
            convert it) or is unreadable.
    """

    def __init__(
        self,
        localizer: str | Path,
        classifier: str | Path,
        *,
        slice_selector: str | Path | None = None,
        device: str = "auto",
    ) -> None:
        self.device = select_device(device)
        _require(localizer, "localizer")
        _require(classifier, "classifier")
        self._load_locator(localizer, slice_selector)
        cls_model, self.classifier_meta = load_checkpoint(classifier)
        if not isinstance(cls_model, DiscClassifier):
            raise WrongKindError(
                f"{classifier} holds a {type(cls_model).__name__}, not a DiscClassifier"
            )
        self.roi_recipe = load_recipe(self.classifier_meta, RoiRecipe, classifier)
        self.calibration = calibration_from_metadata(self.classifier_meta, str(classifier))
        self.classifier: nn.Module = cls_model.to(self.device).eval()

    @property
    def roi_size(self) -> int:
        """Side of the ROI cut around each disc (the classifier recipe's)."""
        return self.roi_recipe.roi_size

    @property
    def preprocess(self) -> v2.Transform:
        """The classifier's deterministic ROI transform (the recipe's ``eval_transform``)."""
        return self.roi_recipe.eval_transform()

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
    def grade(
        self, series: DicomSeries, *, study_id: str = "", series_id: str = "", series_type: str = ""
    ) -> tuple[SeriesPrediction, np.ndarray]:
        """Select slices, localise and grade the five discs of one read series.

        Args:
            series: The series (:func:`~lumbarssl.data.dicom.read_series`).
            study_id: Recorded in the prediction (and its submission rows).
            series_id: Recorded in the prediction.
            series_type: Recorded in the prediction.

        Returns:
            The prediction and the slice its overlay shows, float32 (H, W).

        Raises:
            NotSagittalError: If the slices are not sagittal.
        """
        chosen, xy = self.locate(series)
        slices = list(series.pixels)
        rois = torch.stack(
            [
                self.classifier_input(slices[int(chosen[k])], float(xy[k, 0]), float(xy[k, 1]))
                for k in range(len(LEVELS))
            ]
        ).to(self.device)
        logits = class_logits(self.classifier, self.classifier(rois).float().cpu().double())
        grades = logits.argmax(dim=1).tolist()  # uncalibrated: the rule of Table 1
        if self.calibration is not None:
            logits = self.calibration.apply(logits)
        probabilities = torch.softmax(logits, dim=1).numpy()
        headers = series.geometry.slices
        predictions = tuple(
            LevelPrediction(
                level=LEVELS[i],
                x=float(xy[i, 0]),
                y=float(xy[i, 1]),
                grade=SEVERITIES[grades[i]],
                probabilities={
                    s: float(p) for s, p in zip(SEVERITIES, probabilities[i], strict=True)
                },
                instance_number=int(headers[int(chosen[i])].instance_number),
                slice_index=int(chosen[i]),
            )
            for i in range(len(LEVELS))
        )
        values, counts = np.unique(chosen, return_counts=True)
        shown = int(values[int(np.argmax(counts))])
        image = slices[shown]
        provenance = {
            "classifier": {
                k: self.classifier_meta.get(k) for k in ("data_source", "profile", "seed", "mode")
            }
            | {
                "head": self.classifier_meta.get("head", "softmax"),
                "calibration": None if self.calibration is None else self.calibration.method,
            },
        } | self.locator_provenance()
        result = SeriesPrediction(
            series_dir=str(series.geometry.series_dir),
            instance_number=int(headers[shown].instance_number),
            slice_shape=(int(image.shape[0]), int(image.shape[1])),
            levels=predictions,
            provenance=provenance,
            study_id=study_id,
            series_id=series_id,
            series_type=series_type,
        )
        return result, image

    def predict(
        self,
        path: str | Path,
        *,
        force: bool = False,
        study_id: str | None = None,
        series_csv: Mapping[str, str] | None = None,
    ) -> tuple[SeriesPrediction, np.ndarray]:
        """Find the Sagittal T2 series under ``path`` and grade it.

        Args:
            path: A series directory, a study directory or a flat folder of mixed series.
            force: Grade a series that is not Sagittal T2/STIR (see :func:`choose_series`).
            study_id: The study's id; ``path``'s name for a study directory or folder, its
                parent's name for a series directory, when ``None``.
            series_csv: RSNA series id -> description, consulted when headers do not decide.

        Returns:
            The prediction and the slice its overlay shows.

        Raises:
            MissingFileError: If ``path`` holds no DICOM file.
            WrongSeriesTypeError: If the series is not Sagittal T2/STIR (without ``force``).
            NoSagittalT2Error: If no series is Sagittal T2/STIR.
            NotSagittalError: If the chosen slices are not sagittal.
        """
        root = Path(path)
        candidate = choose_series(find_series(root, series_csv=series_csv), force=force)
        if study_id is None:
            study_id = root.parent.name if candidate.directory == root else root.name
        series = read_candidate(candidate)
        try:
            prediction, image = self.grade(
                series,
                study_id=study_id,
                series_id=candidate.series_id,
                series_type=candidate.series_type.describe(),
            )
        except DataError as exc:
            raise DataError(f"{candidate.directory or root}: {exc}") from exc
        if candidate.directory is None:
            prediction = dataclasses.replace(prediction, series_dir=str(root))
        return prediction, image

    def predict_series(self, series_dir: str | Path) -> tuple[SeriesPrediction, np.ndarray]:
        """Grade one series directory as it is (no series-type check; kept for callers).

        Args:
            series_dir: Directory of ``*.dcm`` files of one sagittal series.

        Returns:
            The prediction and the slice its overlay shows.

        Raises:
            NotSagittalError: If the slices are not sagittal.
            lumbarssl.data.dicom.DicomReadError: If a file is corrupt or not DICOM.
            lumbarssl.data.dicom.SeriesGeometryError: If the directory holds no DICOM slice.
        """
        directory = Path(series_dir)
        try:
            return self.grade(
                read_series(directory), study_id=directory.parent.name, series_id=directory.name
            )
        except DataError as exc:
            raise DataError(f"{directory}: {exc}") from exc


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


def read_series_csv(path: str | Path) -> dict[str, str]:
    """``series_id -> series_description`` of an RSNA ``train_series_descriptions.csv``.

    Args:
        path: The CSV.

    Returns:
        The mapping.

    Raises:
        MissingFileError: If the file does not exist.
        InputError: If it lacks the ``series_id``/``series_description`` columns.
    """
    import csv

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such series CSV")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        fields = set(reader.fieldnames or ())
        if not {"series_id", "series_description"} <= fields:
            raise InputError(
                f"{path}: expected columns series_id and series_description, got "
                f"{sorted(fields)}; give the RSNA train_series_descriptions.csv"
            )
        return {row["series_id"].strip(): row["series_description"] for row in reader}


@dataclasses.dataclass(frozen=True)
class BatchResult:
    """What :func:`grade_directory` did.

    Attributes:
        predictions: One prediction per graded study, in study order.
        failures: ``(study_id, message)`` of each study that could not be graded.
        rows: The submission rows of the graded studies.
    """

    predictions: tuple[SeriesPrediction, ...]
    failures: tuple[tuple[str, str], ...]
    rows: tuple[SubmissionRow, ...]


def study_directories(
    root: str | Path,
    *,
    series_csv: Mapping[str, str] | None = None,
    studies: Sequence[str] | None = None,
) -> tuple[list[Path], Mapping[str, str] | None]:
    """The study directories of an RSNA-layout directory, and its series descriptions.

    Args:
        root: The dataset directory (``train_images/STUDY``) or a directory of studies.
        series_csv: RSNA series id -> description; the dataset's
            ``train_series_descriptions.csv`` when ``None`` and it exists.
        studies: Only these study ids (all when ``None``).

    Returns:
        The study directories by name, and the series descriptions (or ``None``).

    Raises:
        MissingFileError: If ``root`` holds no study directory.
    """
    from lumbarssl.layout import IMAGES_DIR, SERIES_CSV

    root = Path(root)
    images = root / IMAGES_DIR if (root / IMAGES_DIR).is_dir() else root
    if series_csv is None and (root / SERIES_CSV).is_file():
        series_csv = read_series_csv(root / SERIES_CSV)
    study_dirs = sorted((p for p in images.iterdir() if p.is_dir()), key=lambda p: p.name)
    if studies is not None:
        wanted = {str(s) for s in studies}
        study_dirs = [p for p in study_dirs if p.name in wanted]
    if not study_dirs:
        raise MissingFileError(f"{images}: no study directory to grade")
    return study_dirs, series_csv


def grade_directory(
    grader: DiscGrader,
    root: str | Path,
    *,
    out: str | Path | None = None,
    series_csv: Mapping[str, str] | None = None,
    force: bool = False,
    progress: bool = True,
    studies: Sequence[str] | None = None,
) -> BatchResult:
    """Grade every study of an RSNA-layout directory.

    ``root`` is either the dataset directory (``train_images/STUDY/SERIES`` under it, and its
    ``train_series_descriptions.csv`` consulted unless ``series_csv`` is given) or a
    directory of study directories. A study that cannot be graded (no Sagittal T2 series,
    unreadable files) is recorded in :attr:`BatchResult.failures` and the others go on.

    Args:
        grader: The models.
        root: The directory.
        out: Where each study's ``prediction.json`` and ``overlay.png`` go (``out/STUDY``);
            nothing is written when ``None``.
        series_csv: RSNA series id -> description.
        force: As in :func:`choose_series`.
        progress: Show a tqdm progress bar.
        studies: Only these study ids (all when ``None``).

    Returns:
        The predictions, failures and submission rows.

    Raises:
        MissingFileError: If ``root`` holds no study directory.
    """
    return BatchResult(
        *grade_each_study(
            grader.predict,
            prediction_rows,
            write_prediction,
            root,
            out=out,
            series_csv=series_csv,
            force=force,
            progress=progress,
            studies=studies,
        )
    )


_Prediction = TypeVar("_Prediction")


def grade_each_study(
    predict: Callable[..., tuple[_Prediction, np.ndarray]],
    rows_of: Callable[[_Prediction], Iterable[SubmissionRow]],
    write: Callable[[_Prediction, np.ndarray, Path], object],
    root: str | Path,
    *,
    out: str | Path | None,
    series_csv: Mapping[str, str] | None,
    force: bool,
    progress: bool,
    studies: Sequence[str] | None,
) -> tuple[tuple[_Prediction, ...], tuple[tuple[str, str], ...], tuple[SubmissionRow, ...]]:
    """The batch loop of :func:`grade_directory` for any grader (spinal or all conditions).

    Args:
        predict: The grader's ``predict(study_dir, *, force, study_id, series_csv)``, giving
            a prediction and the image of its overlay.
        rows_of: A prediction's submission rows.
        write: Writes a prediction and its overlay into a directory.
        root: As :func:`grade_directory`; the keywords too.
        out: As :func:`grade_directory`.
        series_csv: As :func:`grade_directory`.
        force: As :func:`grade_directory`.
        progress: As :func:`grade_directory`.
        studies: As :func:`grade_directory`.

    Returns:
        The predictions, the ``(study, one-line reason)`` of each study that could not be
        graded (an :class:`~lumbarssl.errors.InputError`), and the submission rows.
    """
    from tqdm import tqdm

    study_dirs, series_csv = study_directories(root, series_csv=series_csv, studies=studies)
    predictions: list[_Prediction] = []
    failures: list[tuple[str, str]] = []
    rows: list[SubmissionRow] = []
    for study_dir in tqdm(study_dirs, disable=not progress, unit="study", desc="predict"):
        try:
            prediction, image = predict(
                study_dir, force=force, study_id=study_dir.name, series_csv=series_csv
            )
        except InputError as exc:
            failures.append((study_dir.name, " ".join(str(exc).split())))
            continue
        predictions.append(prediction)
        rows.extend(rows_of(prediction))
        if out is not None:
            write(prediction, image, Path(out) / study_dir.name)
    return tuple(predictions), tuple(failures), tuple(rows)
