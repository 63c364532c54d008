"""Stage 2 for all five RSNA 2024 conditions: one :class:`ConditionClassifier` (issue 14).

The paper fine-tunes a spinal canal grader (Sec. 4.4). This stage trains the same recipe (focal
loss or an ordinal loss, AdamW over encoder and heads at two rates, ReduceLROnPlateau) on every
ROI of a ``PrepareConfig(conditions="all")`` cache at once: batches mix conditions, each ROI
goes through its sequence's encoder (or the shared one) and its condition's head. Model
selection uses the mean over conditions of the validation balanced accuracy; calibration is
fitted on the validation ROIs of all conditions together (one map) or of each condition; the
test report gives Table 1 per condition and the full RSNA 2024 score.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from lumbarssl.data.datasets import DiscROIDataset
from lumbarssl.data.recipes import recipe_to_metadata
from lumbarssl.layout import CONDITION_SLUGS, CONDITIONS, SERIES_DESCRIPTIONS
from lumbarssl.metrics import Calibration, confusion_matrix, report_from_confusion
from lumbarssl.models import ConditionClassifier, save_checkpoint
from lumbarssl.pipeline._common import (
    DeviceBatches,
    base_metadata,
    export_best,
    locked_stage,
    write_json,
)
from lumbarssl.pipeline.config import param
from lumbarssl.pipeline.evaluate import (
    CONDITION_CALIBRATION_KEY,
    ClassifierPredictions,
    _outputs_and_labels,
    calibrate_by_condition,
    class_logits,
    condition_summary,
    predict_classifier,
    write_condition_predictions,
)
from lumbarssl.pipeline.finetune import (
    FinetuneConfig,
    fit_val_calibration,
    grading_data,
    grading_encoder,
    grading_loss,
    grading_trainer,
)
from lumbarssl.pipeline.result import StageResult

__all__ = [
    "ConditionFinetuneConfig",
    "condition_epoch_metrics",
    "run_condition_finetuning",
]

#: ``"shared"``: one encoder for every condition; ``"per_sequence"``: one per sequence.
EncoderLayout = Literal["auto", "shared", "per_sequence"]
#: ``"shared"``: one calibration map fitted on every condition's validation ROIs;
#: ``"condition"``: one map per condition, fitted on its own validation ROIs.
CalibrationScope = Literal["shared", "condition"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConditionFinetuneConfig(FinetuneConfig):
    r"""Grading of all five conditions; every :class:`FinetuneConfig` setting means the same.

    ``cache_dir`` must hold a ``conditions="all"`` cache. The splits are those of
    :func:`~lumbarssl.data.splits.make_splits` on the whole cache (stratified by condition and
    grade; with ``split="study"`` every condition of a study lands in the same set). Use the
    same split settings as the pretraining run(s), so no encoder saw a held-out ROI.

    Attributes:
        encoder: One pretraining ``model.pt`` shared by all conditions.
        sequence_encoders: ``"SEQUENCE=PATH"`` entries, one per sequence of
            :data:`~lumbarssl.layout.SERIES_DESCRIPTIONS` (e.g.
            ``"Sagittal T1=runs/pre-t1/model.pt"``): per-sequence encoders, each the output of
            ``lumbarssl pretrain --sequences SEQUENCE``.
        encoder_layout: ``"auto"`` (per-sequence when ``sequence_encoders`` is given, shared
            otherwise), ``"shared"`` or ``"per_sequence"``; only ``mode="scratch"`` needs it
            to ask for per-sequence encoders, which it initialises at random.
        calibration_scope: ``"shared"`` (default): one map of the ``calibration`` method
            fitted on the validation ROIs of all five conditions together and stored for
            each; ``"condition"``: one map per condition on its own validation ROIs. The
            class weights ``alpha`` shift every condition's logits by the same
            :math:`\log\alpha_c` (:mod:`~lumbarssl.metrics.calibration`), so one map can
            undo the shift with five times the discs. In the quick all-condition
            reproduction (synthetic, seed 0) shared bcts maps fitted on the validation split
            lowered the full RSNA score by 8-14 %, per-condition maps by 2-5 %; refitted on
            held-out halves of the test studies (``benchmarks/bench_calibration.py``), shared
            bcts 8-14 % and per-condition bcts 5-9 %.
    """

    sequence_encoders: tuple[str, ...] = param(
        (), "per-sequence pretrained encoders, 'SEQUENCE=PATH' for each of the three sequences"
    )
    encoder_layout: EncoderLayout = param(
        "auto", "auto | shared | per_sequence (auto: per_sequence iff --sequence-encoders)"
    )
    calibration_scope: CalibrationScope = param(
        "shared", "shared (one map fitted on all conditions' val ROIs) | condition (one each)"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.calibration_scope not in ("shared", "condition"):
            raise ValueError(
                f"calibration_scope must be shared or condition, got {self.calibration_scope!r}"
            )

    def _check_encoder(self) -> None:
        object.__setattr__(self, "sequence_encoders", tuple(self.sequence_encoders))
        if self.encoder_layout not in ("auto", "shared", "per_sequence"):
            raise ValueError(
                f"encoder_layout must be auto, shared or per_sequence, got {self.encoder_layout!r}"
            )
        if self.encoder and self.sequence_encoders:
            raise ValueError(
                "pass encoder= (shared) or sequence_encoders= (per sequence), not both"
            )
        paths = self.sequence_encoder_paths()  # validates the entries
        if self.layout == "shared" and self.sequence_encoders:
            raise ValueError("encoder_layout 'shared' takes encoder=, not sequence_encoders=")
        if self.mode == "scratch":
            return
        if self.layout == "per_sequence" and set(paths) != set(SERIES_DESCRIPTIONS):
            missing = [s for s in SERIES_DESCRIPTIONS if s not in paths]
            raise ValueError(
                f"per-sequence encoders need one 'SEQUENCE=PATH' for each of "
                f"{SERIES_DESCRIPTIONS}; missing {missing}"
            )
        if self.layout == "shared" and not self.encoder:
            raise ValueError(
                f"mode {self.mode!r} starts from pretrained encoders: pass encoder= (the "
                "model.pt of `lumbarssl pretrain`) or sequence_encoders= (one per sequence)"
            )

    @property
    def layout(self) -> Literal["shared", "per_sequence"]:
        """The encoder layout, ``"auto"`` resolved."""
        if self.encoder_layout == "auto":
            return "per_sequence" if self.sequence_encoders else "shared"
        return self.encoder_layout

    def sequence_encoder_paths(self) -> dict[str, str]:
        """``{sequence: path}`` of :attr:`sequence_encoders`.

        Raises:
            ValueError: If an entry is not ``SEQUENCE=PATH`` with a known sequence, or a
                sequence is given twice.
        """
        paths: dict[str, str] = {}
        for entry in self.sequence_encoders:
            name, sep, path = str(entry).partition("=")
            name = name.strip()
            if not sep or not path or name not in SERIES_DESCRIPTIONS:
                raise ValueError(
                    f"sequence_encoders entry {entry!r} is not 'SEQUENCE=PATH' with SEQUENCE one "
                    f"of {SERIES_DESCRIPTIONS}"
                )
            if name in paths:
                raise ValueError(f"sequence_encoders names {name!r} twice")
            paths[name] = path
        return paths


def condition_epoch_metrics(
    model: nn.Module,
    batches: Iterable[Mapping[str, Tensor]],
    condition_of_row: np.ndarray,
    loss_fn: nn.Module | None = None,
) -> dict[str, float]:
    """Validation metrics of one epoch over ROIs of all conditions.

    Args:
        model: The :class:`~lumbarssl.models.ConditionClassifier`, in eval mode.
        batches: Supervised batches (``"image"``, ``"condition"``, ``"label"``, ``"index"``).
        condition_of_row: Condition index of every cache row, int64 (rows of the cache,).
        loss_fn: Optional loss averaged over all ROIs (reported as ``loss``).

    Returns:
        ``bal_acc``: the mean over conditions (those with ROIs) of the balanced accuracy;
        ``bal_acc_<condition slug>`` for each condition with ROIs; ``acc`` over all ROIs; and
        ``loss`` when ``loss_fn`` is given. Undefined values are NaN.
    """
    outputs, labels, rows = _outputs_and_labels(model, batches)
    predicted = class_logits(model, outputs).argmax(1).numpy()
    truth = labels.numpy()
    conditions = condition_of_row[rows.numpy()]
    metrics: dict[str, float] = {}
    for k, slug in enumerate(CONDITION_SLUGS):
        keep = conditions == k
        if keep.any():
            report = report_from_confusion(confusion_matrix(truth[keep], predicted[keep]))
            metrics[f"bal_acc_{slug}"] = float(report["Bal Acc"])
    values = [v for v in metrics.values() if not np.isnan(v)]
    metrics["bal_acc"] = float(np.mean(values)) if values else float("nan")
    metrics["acc"] = float((truth == predicted).mean()) if len(truth) else float("nan")
    if loss_fn is not None:
        metrics["loss"] = float(loss_fn(outputs, labels)) if len(labels) else float("nan")
    return metrics


def _load_encoders(config: ConditionFinetuneConfig) -> nn.Module | dict[str, nn.Module]:
    if config.layout == "shared":
        return grading_encoder(config.mode, config.encoder)
    paths = config.sequence_encoder_paths()
    return {name: grading_encoder(config.mode, paths.get(name)) for name in SERIES_DESCRIPTIONS}


def _condition_step(loss_fn: nn.Module) -> Any:
    def step(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        loss: Tensor = loss_fn(model(batch["image"], batch["condition"]), batch["label"])
        return loss

    return step


def _with_condition(batches: Any, condition_of_row: np.ndarray) -> Any:
    """Device-made batches gain ``"condition"`` (DataLoader items carry it already)."""
    if not isinstance(batches, DeviceBatches):
        return batches
    table = torch.as_tensor(condition_of_row, device=batches.device)
    make = batches.make_batch

    def make_with_condition(positions: Tensor, epoch: int) -> dict[str, Tensor]:
        batch = make(positions, epoch)
        batch["condition"] = table[batch["index"]]
        return batch

    batches.make_batch = make_with_condition
    return batches


@locked_stage
def run_condition_finetuning(config: ConditionFinetuneConfig) -> StageResult:
    """Train one :class:`~lumbarssl.models.ConditionClassifier` on all five conditions.

    Writes to ``out_dir``: ``model.pt`` (best epoch by mean validation balanced accuracy,
    with one calibration map per condition (see ``calibration_scope``) under
    :data:`~lumbarssl.pipeline.evaluate.CONDITION_CALIBRATION_KEY`), the trainer's
    ``best.pt``/``last.pt`` and history, ``predictions_test.csv``
    (:func:`write_condition_predictions`) and ``metrics.json``: for each condition Table 1's
    columns with 95 % study-bootstrap intervals (``raw`` and ``calibrated``), the mean
    balanced accuracy, and the full RSNA 2024 score (:func:`~lumbarssl.metrics.rsna_score`)
    of the raw and calibrated test probabilities.

    Args:
        config: The stage config.

    Returns:
        Paths and history of the run.

    Raises:
        ConfigError: If the cache was not prepared with ``conditions="all"``.
    """
    info, out, cache, splits, recipe, train, val = grading_data(config, conditions=True)
    condition_of_row = cache.table.condition_id
    train_batches = _with_condition(train, condition_of_row)
    val_batches = _with_condition(val, condition_of_row)

    torch.manual_seed(config.seed)
    model = ConditionClassifier(
        _load_encoders(config),
        num_classes=len(config.alpha),
        mode=config.mode,
        head_kind=config.head,
    )
    loss_fn = grading_loss(config)

    def evaluate(model: nn.Module, batches: Iterable[Mapping[str, Tensor]]) -> dict[str, float]:
        return condition_epoch_metrics(model, batches, condition_of_row, loss_fn)

    trainer = grading_trainer(model, config, train_step=_condition_step(loss_fn), evaluate=evaluate)
    history = trainer.fit(train_batches, val_batches, resume=config.resume)
    metadata = base_metadata(config, "finetune-conditions") | {
        "mode": config.mode,
        "encoder": config.encoder,
        "sequence_encoders": config.sequence_encoder_paths(),
        "encoder_layout": config.layout,
        "head": config.head,
        "calibration_scope": config.calibration_scope,
    }
    model_path = export_best(model, trainer.best_checkpoint, out, metadata, recipe)
    if info.rank == 0:

        def predict(rows: np.ndarray) -> ClassifierPredictions:
            dataset = DiscROIDataset(cache, "supervised", recipe=recipe, indices=rows)
            return predict_classifier(model, dataset, device=config.runtime.device)

        calibrations = _fit_calibrations(predict(splits.val), config)
        if calibrations:
            metadata[CONDITION_CALIBRATION_KEY] = {k: c.to_dict() for k, c in calibrations.items()}
            save_checkpoint(model_path, model, metadata=metadata, recipe=recipe_to_metadata(recipe))
        test = predict(splits.test)
        calibrated = calibrate_by_condition(test, calibrations) if calibrations else None
        write_condition_predictions(out / "predictions_test.csv", test, calibrated)
        report = condition_summary(
            test, n_resamples=config.n_resamples, seed=config.seed, calibrations=calibrations
        )
        report["provenance"] = metadata | {"recipe": recipe_to_metadata(recipe)}
        write_json(out / "metrics.json", report)
    return StageResult(out_dir=out, model_path=model_path, history=tuple(history))


def _fit_calibrations(
    predictions: ClassifierPredictions, config: ConditionFinetuneConfig
) -> dict[str, Calibration]:
    """One map per condition (:func:`fit_val_calibration`), by ``config.calibration_scope``.

    ``"shared"`` fits one map on the validation ROIs of every condition and stores it under
    each condition present there; ``"condition"`` fits each condition's map on its own ROIs.
    """
    assert predictions.conditions is not None
    maps: dict[str, Calibration] = {}
    if config.calibration_scope == "shared":
        fitted = fit_val_calibration(predictions, config)
        present = set(np.unique(predictions.conditions).tolist())
        if fitted is None:
            return maps
        return {name: fitted for k, name in enumerate(CONDITIONS) if k in present}
    for k, name in enumerate(CONDITIONS):
        fitted = fit_val_calibration(predictions.select(predictions.conditions == k), config)
        if fitted is not None:
            maps[name] = fitted
    return maps
