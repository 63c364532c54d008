"""Evaluating a disc classifier: predictions, Table 1 with bootstrap CIs, the RSNA metric.

A classifier's checkpoint may carry a calibration map fitted on the validation split at the end
of fine-tuning (:data:`CALIBRATION_KEY`, a :class:`~lumbarssl.metrics.Calibration` as a dict).
The report then holds both readings: ``table1`` and ``rsna`` of the raw outputs (the paper's
argmax of the class-weighted model, Table 1) and, under ``calibrated``, the same columns and
the RSNA score of the calibrated probabilities, with the share of discs whose grade the map
changed.
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from lumbarssl.data.cache import PreparedCache
from lumbarssl.data.constants import CONDITIONS, LEVELS
from lumbarssl.data.datasets import DiscROIDataset
from lumbarssl.data.recipes import RoiRecipe
from lumbarssl.errors import InputError, WrongKindError
from lumbarssl.losses import OrdinalKind, ordinal_log_probabilities
from lumbarssl.metrics import (
    TABLE1_COLUMNS,
    Calibration,
    bootstrap_ci,
    confusion_matrix,
    report_from_confusion,
    rsna_score,
    rsna_spinal_score,
)
from lumbarssl.models import ConditionClassifier, DiscClassifier, load_checkpoint
from lumbarssl.pipeline._common import (
    locked_stage,
    make_splits,
    prepare_out_dir,
    require_cache_kind,
    write_json,
)
from lumbarssl.pipeline.config import StageConfig, param
from lumbarssl.pipeline.convert import load_recipe
from lumbarssl.training import move_to_device, select_device

#: Checkpoint metadata key of the calibration map fitted on the validation split at the end of
#: fine-tuning: ``Calibration.to_dict()`` (method, per-class scale and bias, NLL before and
#: after, number of validation discs). Absent when fine-tuning ran with ``calibration="none"``
#: or the checkpoint predates the option; evaluation and ``predict`` then use the raw outputs.
CALIBRATION_KEY = "calibration"
#: Checkpoint metadata key of the per-condition calibration maps of a
#: :class:`~lumbarssl.models.ConditionClassifier` (``lumbarssl finetune-conditions``):
#: ``{condition name: Calibration.to_dict()}``, one map per condition of
#: :data:`~lumbarssl.layout.CONDITIONS` (the same map for every condition under the stage's
#: default ``calibration_scope="shared"``); a condition without a map keeps its raw outputs.
CONDITION_CALIBRATION_KEY = "condition_calibration"

#: Names of the per-epoch validation metrics the fine-tuning stage logs (``val_<name>``).
EPOCH_METRICS: tuple[str, ...] = (
    "bal_acc",
    "acc",
    "recall_normal",
    "recall_moderate",
    "recall_severe",
    "sn_err",
)
_COLUMN_OF_METRIC = dict(
    zip(EPOCH_METRICS, ("Bal Acc", "Acc", "R(N)", "R(M)", "R(S)", "S-N Err"), strict=True)
)


@dataclasses.dataclass(frozen=True)
class ClassifierPredictions:
    """A classifier's outputs on a set of discs of the prepared cache.

    Attributes:
        rows: Cache rows, int64 (N,).
        study_ids: Study of each disc, int64 (N,).
        levels: Level index 0-4 of each disc, int64 (N,).
        y_true: True grades, int64 (N,).
        probabilities: Class probabilities, float64 (N, C): the softmax of ``logits``.
        logits: Class logits, float64 (N, C) (log class probabilities for an ordinal head;
            :func:`class_logits`); ``None`` where only probabilities are known.
        conditions: Condition of each row, int64 (N,), index into
            :data:`~lumbarssl.layout.CONDITIONS`; ``None`` for a spinal-only cache.
    """

    rows: np.ndarray
    study_ids: np.ndarray
    levels: np.ndarray
    y_true: np.ndarray
    probabilities: np.ndarray
    logits: np.ndarray | None = None
    conditions: np.ndarray | None = None

    def select(self, keep: np.ndarray) -> ClassifierPredictions:
        """The rows where ``keep`` (bool (N,)) is true, every field alike."""
        return ClassifierPredictions(
            rows=self.rows[keep],
            study_ids=self.study_ids[keep],
            levels=self.levels[keep],
            y_true=self.y_true[keep],
            probabilities=self.probabilities[keep],
            logits=None if self.logits is None else self.logits[keep],
            conditions=None if self.conditions is None else self.conditions[keep],
        )

    def calibrated(self, calibration: Calibration) -> ClassifierPredictions:
        """The same discs with calibrated logits and probabilities.

        Args:
            calibration: A fitted map, applied to :attr:`logits`.

        Returns:
            A copy whose ``logits`` are ``calibration.apply(logits)`` and ``probabilities``
            their softmax.

        Raises:
            ValueError: If the predictions hold no logits.
        """
        if self.logits is None:
            raise ValueError("these predictions hold no logits to calibrate")
        logits = calibration.apply(torch.from_numpy(self.logits).double())
        return dataclasses.replace(
            self,
            logits=logits.numpy(),
            probabilities=torch.softmax(logits, dim=1).numpy(),
        )

    @property
    def y_pred(self) -> np.ndarray:
        """Predicted grades (argmax of the probabilities), int64 (N,)."""
        return np.asarray(self.probabilities.argmax(axis=1), dtype=np.int64)

    def write_csv(self, path: str | Path) -> None:
        """Write one row per disc: row, study, level, truth, prediction, probabilities."""
        with Path(path).open("w", newline="") as handle:
            writer = csv.writer(handle)
            n_classes = self.probabilities.shape[1]
            writer.writerow(
                ["row", "study_id", "level", "label", "pred"] + [f"p{c}" for c in range(n_classes)]
            )
            for i in range(len(self.rows)):
                writer.writerow(
                    [
                        int(self.rows[i]),
                        int(self.study_ids[i]),
                        LEVELS[int(self.levels[i])],
                        int(self.y_true[i]),
                        int(self.y_pred[i]),
                    ]
                    + [f"{p:.6f}" for p in self.probabilities[i]]
                )


def class_logits(model: nn.Module, outputs: Tensor) -> Tensor:
    """Class logits ``(B, C)`` from a classifier's outputs, whatever its head.

    The softmax head's outputs are its logits. An ordinal head
    (:class:`~lumbarssl.models.OrdinalHead`) returns ``C - 1`` ordinal logits; their log class
    probabilities (:func:`~lumbarssl.losses.ordinal_log_probabilities`) are valid logits whose
    softmax is the ordinal model's class distribution.

    Args:
        model: The classifier that produced ``outputs`` (a
            :class:`~lumbarssl.models.DiscClassifier`; any other model counts as softmax).
        outputs: Its outputs, ``(B, C)`` or ``(B, C - 1)``.

    Returns:
        Logits of shape ``(B, C)``.
    """
    if isinstance(model, (DiscClassifier, ConditionClassifier)) and model.head_kind != "softmax":
        kind: OrdinalKind = "corn" if model.head_kind == "corn" else "cumulative"
        return ordinal_log_probabilities(outputs, kind)
    return outputs


@torch.no_grad()
def _outputs_and_labels(
    model: nn.Module, batches: Iterable[Mapping[str, Tensor]]
) -> tuple[Tensor, Tensor, Tensor]:
    """The model's raw outputs, the labels and the cache rows of the batches."""
    outputs, labels, rows = [], [], []
    for batch in batches:
        if isinstance(model, ConditionClassifier):
            output = model(batch["image"], batch["condition"])
        else:
            output = model(batch["image"])
        outputs.append(output.float().cpu())
        labels.append(batch["label"].cpu())
        rows.append(batch["index"].cpu())
    if not outputs:
        empty = torch.empty(0, dtype=torch.int64)
        ordinal = isinstance(model, (DiscClassifier, ConditionClassifier)) and model.is_ordinal
        width = 2 if ordinal else 3
        return torch.empty(0, width), empty, empty
    return torch.cat(outputs), torch.cat(labels), torch.cat(rows)


def epoch_metrics(
    model: nn.Module, batches: Iterable[Mapping[str, Tensor]], loss_fn: nn.Module | None = None
) -> dict[str, float]:
    """Validation metrics for one epoch: Table 1's columns under short names, and the loss.

    Args:
        model: The classifier, in eval mode, on the batches' device.
        batches: Batches of a supervised :class:`~lumbarssl.data.DiscROIDataset`.
        loss_fn: Optional loss to average over the batches (reported as ``loss``), applied to
            the model's raw outputs (ordinal logits for an ordinal head).

    Returns:
        ``{"bal_acc", "acc", "recall_normal", "recall_moderate", "recall_severe", "sn_err"}``
        and ``"loss"`` when ``loss_fn`` is given. Undefined values are NaN.
    """
    outputs, labels, _ = _outputs_and_labels(model, batches)
    logits = class_logits(model, outputs)
    confusion = confusion_matrix(labels.numpy(), logits.argmax(1).numpy())
    report = report_from_confusion(confusion)
    metrics = {name: float(report[column]) for name, column in _COLUMN_OF_METRIC.items()}
    if loss_fn is not None:
        metrics["loss"] = float(loss_fn(outputs, labels)) if len(labels) else float("nan")
    return metrics


def predict_classifier(
    model: nn.Module, dataset: DiscROIDataset, *, batch_size: int = 64, device: str = "auto"
) -> ClassifierPredictions:
    """Run a classifier over a supervised dataset.

    Args:
        model: A :class:`~lumbarssl.models.DiscClassifier` (or any ``(B, 1, H, W) -> (B, C)``),
            or a :class:`~lumbarssl.models.ConditionClassifier` (the dataset's cache then has
            conditions, which its items carry).
        dataset: A supervised-mode dataset.
        batch_size: Discs per forward pass.
        device: Device to run on.

    Returns:
        The predictions with the discs' identities.
    """
    target = select_device(device)
    model = model.to(target).eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    outputs, labels, rows = _outputs_and_labels(model, (move_to_device(b, target) for b in loader))
    logits = class_logits(model, outputs.double())
    table = dataset.cache.table
    row_array = rows.numpy().astype(np.int64)
    return ClassifierPredictions(
        rows=row_array,
        study_ids=np.asarray(table.study_id[row_array], dtype=np.int64),
        levels=np.asarray(table.level_id[row_array], dtype=np.int64),
        y_true=labels.numpy().astype(np.int64),
        probabilities=torch.softmax(logits, dim=1).numpy(),
        logits=logits.numpy(),
        conditions=(
            np.asarray(table.condition_id[row_array], dtype=np.int64)
            if table.has_conditions
            else None
        ),
    )


def summarize(
    predictions: ClassifierPredictions,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    cluster: bool = True,
    calibration: Calibration | None = None,
) -> dict[str, Any]:
    """Table 1's columns with bootstrap intervals, the confusion matrix and the RSNA metric.

    Args:
        predictions: Output of :func:`predict_classifier`.
        n_resamples: Bootstrap resamples.
        confidence: Interval level.
        seed: Bootstrap seed.
        cluster: Resample whole studies (discs of a patient are correlated) instead of discs.
        calibration: A map fitted on the validation split; the report then also holds the
            calibrated reading (``predictions`` must carry logits).

    Returns:
        A JSON-serialisable dictionary: ``table1`` ({column: [point, low, high]}),
        ``confusion`` (rows = truth), ``rsna`` (spinal, any_severe_spinal, score), ``n_discs``,
        ``n_studies``, ``class_counts`` and the bootstrap settings, all of the raw outputs.
        With ``calibration``: ``calibration`` (the map as a dict) and ``calibrated``
        (``table1``, ``confusion``, ``rsna`` of the calibrated probabilities and
        ``argmax_change_rate``, the share of discs whose grade the map changes).
    """
    report = _summary(predictions, n_resamples, confidence, seed, cluster)
    if calibration is not None:
        calibrated = _summary(
            predictions.calibrated(calibration), n_resamples, confidence, seed, cluster
        )
        assert predictions.logits is not None  # calibrated() checked it
        report["calibration"] = calibration.to_dict()
        report["calibrated"] = {key: calibrated[key] for key in ("table1", "confusion", "rsna")} | {
            "argmax_change_rate": (
                calibration.argmax_change_rate(torch.from_numpy(predictions.logits))
                if len(predictions.y_true)
                else float("nan")
            )
        }
    return report


def table1_summary(
    predictions: ClassifierPredictions,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    cluster: bool = True,
) -> dict[str, Any]:
    """Table 1's columns with bootstrap intervals and the confusion matrix, no RSNA metric.

    Args:
        predictions: Predictions of one condition (of any condition: no spinal term here).
        n_resamples: Bootstrap resamples.
        confidence: Interval level.
        seed: Bootstrap seed.
        cluster: Resample whole studies instead of discs.

    Returns:
        ``table1`` ({column: [point, low, high]}), ``confusion`` (rows = truth), ``n_discs``,
        ``n_studies``, ``class_counts`` and ``bootstrap`` (the settings), as in
        :func:`summarize`.
    """
    y_true, y_pred = predictions.y_true, predictions.y_pred
    intervals = bootstrap_ci(
        y_true,
        y_pred,
        groups=predictions.study_ids if cluster else None,
        n_resamples=n_resamples,
        confidence=confidence,
        seed=seed,
    )
    return {
        "table1": {
            c: [intervals[c].point, intervals[c].low, intervals[c].high] for c in TABLE1_COLUMNS
        },
        "confusion": confusion_matrix(y_true, y_pred).tolist(),
        "n_discs": len(y_true),
        "n_studies": len(np.unique(predictions.study_ids)),
        "class_counts": np.bincount(y_true, minlength=3).tolist(),
        "bootstrap": {
            "n_resamples": n_resamples,
            "confidence": confidence,
            "unit": "study" if cluster else "disc",
            "seed": seed,
        },
    }


def _summary(
    predictions: ClassifierPredictions,
    n_resamples: int,
    confidence: float,
    seed: int,
    cluster: bool,
) -> dict[str, Any]:
    table = table1_summary(
        predictions, n_resamples=n_resamples, confidence=confidence, seed=seed, cluster=cluster
    )
    rsna = rsna_spinal_score(predictions.y_true, predictions.probabilities, predictions.study_ids)
    rsna_terms = {
        "spinal": rsna.spinal,
        "any_severe_spinal": rsna.any_severe_spinal,
        "score": rsna.score,
    }
    # The key order of report_test.json as before.
    return {"table1": table["table1"], "confusion": table["confusion"], "rsna": rsna_terms} | {
        k: table[k] for k in ("n_discs", "n_studies", "class_counts", "bootstrap")
    }


def calibrate_by_condition(
    predictions: ClassifierPredictions, calibrations: Mapping[str, Calibration]
) -> ClassifierPredictions:
    """Apply each condition's calibration map to its rows (others keep their raw logits).

    Args:
        predictions: Predictions with ``logits`` and ``conditions``.
        calibrations: ``{condition name of CONDITIONS: map}``
            (:func:`condition_calibrations_from_metadata`).

    Returns:
        A copy with calibrated ``logits`` and their softmax as ``probabilities``.

    Raises:
        ValueError: If the predictions hold no logits or no conditions, or a key is not a
            condition.
    """
    if predictions.logits is None or predictions.conditions is None:
        raise ValueError("per-condition calibration needs predictions with logits and conditions")
    logits = torch.from_numpy(predictions.logits).double().clone()
    for name, calibration in calibrations.items():
        if name not in CONDITIONS:
            raise ValueError(f"unknown condition {name!r}; expected one of {CONDITIONS}")
        rows = torch.from_numpy(predictions.conditions == CONDITIONS.index(name))
        if bool(rows.any()):
            logits[rows] = calibration.apply(logits[rows])
    return dataclasses.replace(
        predictions, logits=logits.numpy(), probabilities=torch.softmax(logits, dim=1).numpy()
    )


def condition_summary(
    predictions: ClassifierPredictions,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    cluster: bool = True,
    calibrations: Mapping[str, Calibration] | None = None,
) -> dict[str, Any]:
    """Table 1 per condition, their mean balanced accuracy and the full RSNA 2024 score.

    The report of :class:`~lumbarssl.models.ConditionClassifier` predictions, written as
    ``metrics.json`` by ``lumbarssl finetune-conditions`` and as ``report_<subset>.json`` by
    ``lumbarssl evaluate``.

    Args:
        predictions: Predictions with ``conditions`` (and ``logits`` when calibrating).
        n_resamples: Bootstrap resamples of each condition's intervals.
        confidence: Interval level.
        seed: Bootstrap seed.
        cluster: Resample whole studies instead of ROIs.
        calibrations: ``{condition name: map}`` (:func:`calibrate_by_condition`); empty or
            ``None`` reports the raw reading only.

    Returns:
        ``conditions``: for each of :data:`~lumbarssl.layout.CONDITIONS`, ``raw`` and
        ``calibrated`` (``None`` without maps) readings of :func:`table1_summary` (just
        ``{"n_discs": 0}`` for a condition without ROIs); ``mean_bal_acc`` and ``rsna``
        (:func:`~lumbarssl.metrics.rsna_score`'s terms, ``None`` without ROIs), each ``raw``
        and ``calibrated``; ``calibration``: the maps as dicts.

    Raises:
        ValueError: If the predictions hold no conditions.
    """
    if predictions.conditions is None:
        raise ValueError("a condition summary needs the condition of each row")
    settings: dict[str, Any] = {
        "n_resamples": n_resamples,
        "confidence": confidence,
        "seed": seed,
        "cluster": cluster,
    }
    raw = _condition_reading(predictions, settings)
    calibrated = (
        _condition_reading(calibrate_by_condition(predictions, calibrations), settings)
        if calibrations
        else None
    )
    return {
        "conditions": {
            name: {
                "raw": raw["conditions"][name],
                "calibrated": calibrated["conditions"][name] if calibrated else None,
            }
            for name in CONDITIONS
        },
        "mean_bal_acc": {
            "raw": raw["mean_bal_acc"],
            "calibrated": calibrated["mean_bal_acc"] if calibrated else None,
        },
        "rsna": {"raw": raw["rsna"], "calibrated": calibrated["rsna"] if calibrated else None},
        "calibration": {k: m.to_dict() for k, m in (calibrations or {}).items()},
    }


def _condition_reading(
    predictions: ClassifierPredictions, settings: Mapping[str, Any]
) -> dict[str, Any]:
    """Table 1 per condition with bootstrap intervals, their mean balanced accuracy, RSNA."""
    assert predictions.conditions is not None
    per_condition: dict[str, Any] = {}
    bal_accs = []
    for k, name in enumerate(CONDITIONS):
        subset = predictions.select(predictions.conditions == k)
        if len(subset.y_true) == 0:
            per_condition[name] = {"n_discs": 0}
            continue
        per_condition[name] = table1_summary(subset, **settings)
        bal_accs.append(per_condition[name]["table1"]["Bal Acc"][0])
    finite = [b for b in bal_accs if not np.isnan(b)]
    rsna: dict[str, float] | None = None
    if len(predictions.y_true):
        score = rsna_score(
            predictions.y_true,
            predictions.probabilities,
            predictions.study_ids,
            [CONDITIONS[int(c)] for c in predictions.conditions],
        )
        rsna = score._asdict()
    return {
        "conditions": per_condition,
        "mean_bal_acc": float(np.mean(finite)) if finite else float("nan"),
        "rsna": rsna,
    }


def write_condition_predictions(
    path: str | Path, raw: ClassifierPredictions, calibrated: ClassifierPredictions | None
) -> None:
    """Write one row per ROI: ``row, study_id, condition, level, label, p0..p2, q0..q2``.

    ``p`` are the raw class probabilities, ``q`` the calibrated ones (equal to ``p`` where no
    calibration map exists).

    Args:
        path: The CSV to write.
        raw: Predictions with ``conditions``.
        calibrated: The same rows calibrated, or ``None``.

    Raises:
        ValueError: If ``raw`` holds no conditions.
    """
    if raw.conditions is None:
        raise ValueError("condition predictions need the condition of each row")
    q = raw.probabilities if calibrated is None else calibrated.probabilities
    n_classes = raw.probabilities.shape[1]
    with Path(path).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["row", "study_id", "condition", "level", "label"]
            + [f"p{c}" for c in range(n_classes)]
            + [f"q{c}" for c in range(n_classes)]
        )
        for i in range(len(raw.rows)):
            writer.writerow(
                [
                    int(raw.rows[i]),
                    int(raw.study_ids[i]),
                    CONDITIONS[int(raw.conditions[i])],
                    LEVELS[int(raw.levels[i])],
                    int(raw.y_true[i]),
                ]
                + [f"{p:.6f}" for p in raw.probabilities[i]]
                + [f"{p:.6f}" for p in q[i]]
            )


def condition_calibrations_from_metadata(
    metadata: Mapping[str, Any], source: str = "checkpoint"
) -> dict[str, Calibration]:
    """The per-condition maps a :class:`~lumbarssl.models.ConditionClassifier` checkpoint holds.

    Args:
        metadata: The checkpoint's metadata.
        source: The checkpoint's path, for messages.

    Returns:
        ``{condition name: map}`` under :data:`CONDITION_CALIBRATION_KEY`; empty if none.

    Raises:
        InputError: If a stored map or condition name is malformed.
    """
    stored = metadata.get(CONDITION_CALIBRATION_KEY) or {}
    try:
        maps = {str(name): Calibration.from_dict(value) for name, value in stored.items()}
    except (AttributeError, TypeError, ValueError) as error:
        raise InputError(
            f"{source}: metadata[{CONDITION_CALIBRATION_KEY!r}] is not a mapping of calibration "
            f"maps ({error}); re-run `lumbarssl finetune-conditions` or remove the key"
        ) from error
    unknown = [name for name in maps if name not in CONDITIONS]
    if unknown:
        raise InputError(
            f"{source}: metadata[{CONDITION_CALIBRATION_KEY!r}] names unknown conditions "
            f"{unknown}; expected names of {CONDITIONS}"
        )
    return maps


def supervised_dataset(
    cache: PreparedCache,
    rows: np.ndarray,
    metadata: Mapping[str, Any],
    source: str = "checkpoint",
) -> DiscROIDataset:
    """The deterministic dataset a classifier was trained with, from its checkpoint metadata.

    Args:
        cache: The prepared cache.
        rows: Cache rows to include.
        metadata: Checkpoint metadata holding the :class:`~lumbarssl.data.recipes.RoiRecipe`.
        source: The checkpoint's path, for messages.

    Returns:
        A supervised-mode dataset built by the checkpoint's recipe, exactly as in training.

    Raises:
        InputError: If the checkpoint has no recipe (older format; the message says how to
            convert it).
        DataError: If the cache's ROIs were not cut the way the recipe cuts them.
    """
    recipe = load_recipe(metadata, RoiRecipe, source)
    return DiscROIDataset(cache, "supervised", recipe=recipe, indices=rows)


def calibration_from_metadata(
    metadata: Mapping[str, Any], source: str = "checkpoint"
) -> Calibration | None:
    """The calibration map a classifier checkpoint carries under :data:`CALIBRATION_KEY`.

    Args:
        metadata: The checkpoint's metadata.
        source: The checkpoint's path, for messages.

    Returns:
        The map, or ``None`` if the checkpoint has none.

    Raises:
        InputError: If the stored map is malformed.
    """
    stored = metadata.get(CALIBRATION_KEY)
    if stored is None:
        return None
    try:
        return Calibration.from_dict(stored)
    except (TypeError, ValueError) as error:
        raise InputError(
            f"{source}: metadata[{CALIBRATION_KEY!r}] is not a calibration map ({error}); "
            "re-run `lumbarssl finetune` or remove the key"
        ) from error


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvaluateConfig(StageConfig):
    """Evaluate a fine-tuned classifier on a split of the prepared cache.

    Attributes:
        checkpoint: The classifier's ``model.pt`` (from the fine-tuning stage).
        subset: Which split to score: ``"test"`` (held out) or ``"val"``.
        batch_size: Discs per forward pass.
        n_resamples: Bootstrap resamples for the 95 % intervals.
        confidence: Interval level.
        bootstrap_unit: ``"study"`` resamples whole studies, ``"disc"`` single discs.
    """

    checkpoint: str = param(
        "", "classifier model.pt from `lumbarssl finetune` or `lumbarssl finetune-conditions`"
    )
    subset: Literal["test", "val"] = param("test", "split to score")
    batch_size: int = param(64, "discs per forward pass")
    n_resamples: int = param(1000, "bootstrap resamples")
    confidence: float = param(0.95, "confidence level of the intervals")
    bootstrap_unit: Literal["study", "disc"] = param("study", "resample studies or discs")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.checkpoint:
            raise ValueError("checkpoint is required: the model.pt of `lumbarssl finetune`")
        if self.n_resamples < 1 or self.batch_size < 1:
            raise ValueError(
                f"n_resamples and batch_size must be >= 1, got {self.n_resamples}, "
                f"{self.batch_size}"
            )
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")


@locked_stage
def run_evaluation(config: EvaluateConfig) -> dict[str, Any]:
    """Score a classifier checkpoint on the held-out discs of the run's split.

    Writes ``predictions_<subset>.csv`` and ``report_<subset>.json`` in ``out_dir``. For a
    :class:`~lumbarssl.models.DiscClassifier`: if the checkpoint carries a calibration map
    (:data:`CALIBRATION_KEY`), the report holds the calibrated reading beside the raw one and
    ``predictions_<subset>_calibrated.csv`` the calibrated probabilities. For a
    :class:`~lumbarssl.models.ConditionClassifier` (on a ``conditions="all"`` cache): the
    report is :func:`condition_summary` (Table 1 per condition, the full RSNA 2024 score, raw
    and calibrated by the maps under :data:`CONDITION_CALIBRATION_KEY`), the CSV that of
    :func:`write_condition_predictions`, as ``lumbarssl finetune-conditions`` writes them.

    Args:
        config: The evaluation config (its split fields must match the training run's).

    Returns:
        The summary of :func:`summarize` (or :func:`condition_summary`) plus provenance.

    Raises:
        WrongKindError: If the checkpoint holds no classifier.
        ConfigError: If the cache is of the other kind (a condition classifier on a spinal
            cache, a spinal one on a ``conditions="all"`` cache).
    """
    out = prepare_out_dir(config)
    model, metadata = load_checkpoint(config.checkpoint)
    if not isinstance(model, DiscClassifier | ConditionClassifier):
        raise WrongKindError(
            f"{config.checkpoint} holds a {type(model).__name__}, expected a DiscClassifier "
            "(`lumbarssl finetune`) or a ConditionClassifier (`lumbarssl finetune-conditions`)"
        )
    cache = PreparedCache.open(config.cache_dir)
    conditions = isinstance(model, ConditionClassifier)
    require_cache_kind(cache, config.cache_dir, conditions=conditions)
    splits = make_splits(cache, config)
    rows = splits.test if config.subset == "test" else splits.val
    predictions = predict_classifier(
        model,
        supervised_dataset(cache, rows, metadata, str(config.checkpoint)),
        batch_size=config.batch_size,
        device=config.runtime.device,
    )
    settings: dict[str, Any] = {
        "n_resamples": config.n_resamples,
        "confidence": config.confidence,
        "seed": config.seed,
        "cluster": config.bootstrap_unit == "study",
    }
    provenance = {
        "data_source": config.data_source,
        "profile": config.profile,
        "seed": config.seed,
        "split": config.split,
        "subset": config.subset,
        "checkpoint": str(config.checkpoint),
        "mode": metadata.get("mode"),
        "head": metadata.get("head", "softmax"),
    }
    csv_path = out / f"predictions_{config.subset}.csv"
    if conditions:
        calibrations = condition_calibrations_from_metadata(metadata, str(config.checkpoint))
        summary = condition_summary(predictions, calibrations=calibrations, **settings)
        provenance["calibration_scope"] = metadata.get("calibration_scope")
        calibrated = calibrate_by_condition(predictions, calibrations) if calibrations else None
        write_condition_predictions(csv_path, predictions, calibrated)
    else:
        calibration = calibration_from_metadata(metadata, str(config.checkpoint))
        summary = summarize(predictions, calibration=calibration, **settings)
        predictions.write_csv(csv_path)
        if calibration is not None:
            predictions.calibrated(calibration).write_csv(
                out / f"predictions_{config.subset}_calibrated.csv"
            )
    summary["provenance"] = provenance
    write_json(out / f"report_{config.subset}.json", summary)
    return summary
