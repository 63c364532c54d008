"""Evaluating a disc classifier: predictions, Table 1 with bootstrap CIs, the RSNA metric."""

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
from lumbarssl.data.constants import LEVELS
from lumbarssl.data.datasets import DiscROIDataset
from lumbarssl.data.recipes import RoiRecipe
from lumbarssl.errors import WrongKindError
from lumbarssl.metrics import (
    TABLE1_COLUMNS,
    bootstrap_ci,
    confusion_matrix,
    report_from_confusion,
    rsna_spinal_score,
)
from lumbarssl.models import DiscClassifier, load_checkpoint
from lumbarssl.pipeline._common import make_splits, prepare_out_dir, write_json
from lumbarssl.pipeline.config import StageConfig, param
from lumbarssl.pipeline.convert import load_recipe
from lumbarssl.training import move_to_device, select_device

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
        probabilities: Softmax probabilities, float64 (N, C).
    """

    rows: np.ndarray
    study_ids: np.ndarray
    levels: np.ndarray
    y_true: np.ndarray
    probabilities: np.ndarray

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


@torch.no_grad()
def _logits_and_labels(
    model: nn.Module, batches: Iterable[Mapping[str, Tensor]]
) -> tuple[Tensor, Tensor, Tensor]:
    logits, labels, rows = [], [], []
    for batch in batches:
        logits.append(model(batch["image"]).float().cpu())
        labels.append(batch["label"].cpu())
        rows.append(batch["index"].cpu())
    if not logits:
        empty = torch.empty(0, dtype=torch.int64)
        return torch.empty(0, 3), empty, empty
    return torch.cat(logits), torch.cat(labels), torch.cat(rows)


def epoch_metrics(
    model: nn.Module, batches: Iterable[Mapping[str, Tensor]], loss_fn: nn.Module | None = None
) -> dict[str, float]:
    """Validation metrics for one epoch: Table 1's columns under short names, and the loss.

    Args:
        model: The classifier, in eval mode, on the batches' device.
        batches: Batches of a supervised :class:`~lumbarssl.data.DiscROIDataset`.
        loss_fn: Optional loss to average over the batches (reported as ``loss``).

    Returns:
        ``{"bal_acc", "acc", "recall_normal", "recall_moderate", "recall_severe", "sn_err"}``
        and ``"loss"`` when ``loss_fn`` is given. Undefined values are NaN.
    """
    logits, labels, _ = _logits_and_labels(model, batches)
    confusion = confusion_matrix(labels.numpy(), logits.argmax(1).numpy())
    report = report_from_confusion(confusion)
    metrics = {name: float(report[column]) for name, column in _COLUMN_OF_METRIC.items()}
    if loss_fn is not None:
        metrics["loss"] = float(loss_fn(logits, labels)) if len(labels) else float("nan")
    return metrics


def predict_classifier(
    model: nn.Module, dataset: DiscROIDataset, *, batch_size: int = 64, device: str = "auto"
) -> ClassifierPredictions:
    """Run a classifier over a supervised dataset.

    Args:
        model: A :class:`~lumbarssl.models.DiscClassifier` (or any ``(B, 1, H, W) -> (B, C)``).
        dataset: A supervised-mode dataset.
        batch_size: Discs per forward pass.
        device: Device to run on.

    Returns:
        The predictions with the discs' identities.
    """
    target = select_device(device)
    model = model.to(target).eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    logits, labels, rows = _logits_and_labels(model, (move_to_device(b, target) for b in loader))
    table = dataset.cache.table
    row_array = rows.numpy().astype(np.int64)
    return ClassifierPredictions(
        rows=row_array,
        study_ids=np.asarray(table.study_id[row_array], dtype=np.int64),
        levels=np.asarray(table.level_id[row_array], dtype=np.int64),
        y_true=labels.numpy().astype(np.int64),
        probabilities=torch.softmax(logits.double(), dim=1).numpy(),
    )


def summarize(
    predictions: ClassifierPredictions,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    cluster: bool = True,
) -> dict[str, Any]:
    """Table 1's columns with bootstrap intervals, the confusion matrix and the RSNA metric.

    Args:
        predictions: Output of :func:`predict_classifier`.
        n_resamples: Bootstrap resamples.
        confidence: Interval level.
        seed: Bootstrap seed.
        cluster: Resample whole studies (discs of a patient are correlated) instead of discs.

    Returns:
        A JSON-serialisable dictionary: ``table1`` ({column: [point, low, high]}),
        ``confusion`` (rows = truth), ``rsna`` (spinal, any_severe_spinal, score), ``n_discs``,
        ``n_studies``, ``class_counts`` and the bootstrap settings.
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
    rsna = rsna_spinal_score(y_true, predictions.probabilities, predictions.study_ids)
    return {
        "table1": {
            c: [intervals[c].point, intervals[c].low, intervals[c].high] for c in TABLE1_COLUMNS
        },
        "confusion": confusion_matrix(y_true, y_pred).tolist(),
        "rsna": {
            "spinal": rsna.spinal,
            "any_severe_spinal": rsna.any_severe_spinal,
            "score": rsna.score,
        },
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

    checkpoint: str = param("", "classifier model.pt from `lumbarssl finetune`")
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


def run_evaluation(config: EvaluateConfig) -> dict[str, Any]:
    """Score a classifier checkpoint on the held-out discs of the run's split.

    Writes ``predictions_<subset>.csv`` and ``report_<subset>.json`` in ``out_dir``.

    Args:
        config: The evaluation config (its split fields must match the training run's).

    Returns:
        The summary of :func:`summarize` plus provenance.

    Raises:
        TypeError: If the checkpoint is not a :class:`~lumbarssl.models.DiscClassifier`.
    """
    out = prepare_out_dir(config)
    model, metadata = load_checkpoint(config.checkpoint)
    if not isinstance(model, DiscClassifier):
        raise WrongKindError(
            f"{config.checkpoint} holds a {type(model).__name__}, expected a DiscClassifier"
        )
    cache = PreparedCache.open(config.cache_dir)
    splits = make_splits(cache, config)
    rows = splits.test if config.subset == "test" else splits.val
    predictions = predict_classifier(
        model,
        supervised_dataset(cache, rows, metadata, str(config.checkpoint)),
        batch_size=config.batch_size,
        device=config.runtime.device,
    )
    summary = summarize(
        predictions,
        n_resamples=config.n_resamples,
        confidence=config.confidence,
        seed=config.seed,
        cluster=config.bootstrap_unit == "study",
    )
    summary["provenance"] = {
        "data_source": config.data_source,
        "profile": config.profile,
        "seed": config.seed,
        "split": config.split,
        "subset": config.subset,
        "checkpoint": str(config.checkpoint),
        "mode": metadata.get("mode"),
    }
    predictions.write_csv(out / f"predictions_{config.subset}.csv")
    write_json(out / f"report_{config.subset}.json", summary)
    return summary
