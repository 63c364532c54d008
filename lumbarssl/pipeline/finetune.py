"""Stage 2: supervised grading (Sec. 3.5, 4.4): scratch, linear probe or fine-tuning."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import ReduceLROnPlateau

from lumbarssl import paper
from lumbarssl.data.cache import PreparedCache
from lumbarssl.data.datasets import DiscROIDataset
from lumbarssl.data.recipes import RoiRecipe, recipe_to_metadata
from lumbarssl.data.splits import Splits
from lumbarssl.errors import DataError, WrongKindError
from lumbarssl.losses import OrdinalLoss, WeightedFocalLoss
from lumbarssl.metrics import (
    RSNA_SAMPLE_WEIGHTS,
    Calibration,
    NonPositiveTemperatureError,
    fit_calibration,
)
from lumbarssl.models import (
    ConditionClassifier,
    ContrastiveModel,
    DiscClassifier,
    load_checkpoint,
    resnet18_encoder,
    save_checkpoint,
)
from lumbarssl.pipeline._common import (
    adamw,
    base_metadata,
    export_best,
    locked_stage,
    make_splits,
    require_cache_kind,
    start_stage,
    supervised_loaders,
    trainer_config,
    write_json,
)
from lumbarssl.pipeline.config import StageConfig, param
from lumbarssl.pipeline.evaluate import (
    CALIBRATION_KEY,
    ClassifierPredictions,
    epoch_metrics,
    predict_classifier,
    summarize,
)
from lumbarssl.pipeline.result import StageResult
from lumbarssl.training import DistributedInfo, EvaluateFn, Trainer, TrainStep

FinetuneMode = Literal["scratch", "linear_probe", "finetune"]
#: Grading head: the paper's softmax + focal loss, or an ordinal head + :class:`OrdinalLoss`.
FinetuneHead = Literal["softmax", "corn", "cumulative"]
#: Post-hoc calibration fitted on the validation split; ``"none"`` fits nothing.
CalibrationChoice = Literal["bcts", "bias", "vector", "temperature", "none"]
#: Sample weights of the calibration fit: ``"uniform"`` (NLL, calibration in Guo et al.'s
#: sense) or ``"rsna"`` (the competition's 1/2/4 by true grade).
CalibrationWeights = Literal["uniform", "rsna"]

_LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FinetuneConfig(StageConfig):
    """Supervised grading; defaults are the paper's (Sec. 4.4) where it gives them.

    Attributes:
        mode: ``"scratch"`` (random encoder, everything trained), ``"linear_probe"`` (frozen
            pretrained encoder, head only) or ``"finetune"`` (stem and layers 1-3 frozen,
            layer4 at ``backbone_lr``, head at ``head_lr``).
        encoder: ``model.pt`` of the pretraining stage; required unless ``mode="scratch"``.
        epochs: Training epochs (Sec. 4.4: 40).
        batch_size: Discs per step (Sec. 4.4: 24).
        backbone_lr: Learning rate of layer4 (Sec. 4.4: 5e-5).
        head_lr: Learning rate of the classification head (Sec. 4.4: 5e-4). The scratch
            baseline trains every parameter at this rate (the paper gives none for it).
        weight_decay: AdamW weight decay (not given in the paper; 0 makes it Adam).
        gamma: Focal-loss focusing parameter (Sec. 4.4: 2.0).
        alpha: Focal-loss class weights for Normal/Mild, Moderate, Severe (Sec. 4.4).
        plateau_patience: ReduceLROnPlateau patience on validation balanced accuracy (4).
        plateau_factor: ReduceLROnPlateau factor (0.5).
        input_size: Network input side after resizing the ROI (Sec. 4.2: 224).
        n_resamples: Bootstrap resamples for the test report's intervals.
        head: ``"softmax"`` (the paper's linear head and weighted focal loss, Eq. 2) or an
            ordinal head, ``"corn"`` or ``"cumulative"``
            (:class:`~lumbarssl.models.OrdinalHead`), trained with
            :class:`~lumbarssl.losses.OrdinalLoss` with the same ``alpha`` and ``gamma``.
        calibration: Calibration map fitted on the validation split at the end of training
            (:func:`~lumbarssl.metrics.fit_calibration`) and stored in ``model.pt`` under
            :data:`~lumbarssl.pipeline.evaluate.CALIBRATION_KEY`: ``"bcts"`` (default;
            bias-corrected temperature scaling: one temperature plus one offset per grade,
            the offsets being what undoes the prior shift log(alpha_c) of the class
            weights), ``"bias"`` (the offsets only), ``"vector"`` (per-grade scale and
            offset), ``"temperature"`` (one scale: cannot undo the shift) or ``"none"``.
            On held-out halves of the quick profile's test studies bcts lowered the RSNA
            spinal log loss most (``benchmarks/bench_calibration.py``; docs/benchmarks).
            Table 1 (``report_test.json["table1"]``) stays the uncalibrated argmax, the
            paper's reading; the calibrated reading is reported beside it.
        calibration_weights: ``"rsna"`` (default) weights the validation discs 1/2/4 by true
            grade, so the fit minimises the RSNA log loss itself, whose best answer is
            q_c proportional to w_c p_c, not the posterior p_c; ``"uniform"`` fits the
            plain NLL (posterior estimates in Guo et al.'s sense). With uniform weights bias
            scaling removes the whole shift log(alpha_c), overshooting the RSNA optimum
            log(w_c): on a 200-study synthetic run it raised the RSNA spinal log loss of the
            fine-tuned row (0.401 to 0.419) where RSNA weights lowered it (to 0.377).
    """

    mode: FinetuneMode = param("finetune", "scratch | linear_probe | finetune (Sec. 6)")
    encoder: str | None = param(None, "pretrained model.pt (required unless --mode scratch)")
    epochs: int = param(paper.FINETUNE_EPOCHS, "training epochs (Sec. 4.4)")
    batch_size: int = param(paper.FINETUNE_BATCH_SIZE, "discs per step (Sec. 4.4)")
    backbone_lr: float = param(paper.BACKBONE_LR, "layer4 learning rate (Sec. 4.4)")
    head_lr: float = param(paper.HEAD_LR, "head learning rate (Sec. 4.4); all layers when scratch")
    weight_decay: float = param(0.0, "AdamW weight decay (not given in the paper)")
    gamma: float = param(paper.FOCAL_GAMMA, "focal-loss gamma (Sec. 4.4)")
    alpha: tuple[float, ...] = param(paper.FOCAL_ALPHA, "focal-loss class weights (Sec. 4.4)")
    plateau_patience: int = param(
        paper.FINETUNE_PLATEAU_PATIENCE, "ReduceLROnPlateau patience (Sec. 4.4)"
    )
    plateau_factor: float = param(
        paper.FINETUNE_PLATEAU_FACTOR, "ReduceLROnPlateau factor (Sec. 4.4)"
    )
    input_size: int = param(paper.INPUT_SIZE, "input side after resizing the ROI (Sec. 4.2)")
    n_resamples: int = param(1000, "bootstrap resamples of the test report")
    head: FinetuneHead = param(
        "softmax", "softmax (the paper's, Eq. 2) | corn | cumulative (ordinal heads)"
    )
    calibration: CalibrationChoice = param(
        "bcts", "calibration fitted on the val split: bcts | bias | vector | temperature | none"
    )
    calibration_weights: CalibrationWeights = param(
        "rsna", "calibration fit weights: rsna (1/2/4 by grade, the RSNA log loss) | uniform"
    )

    def _check_encoder(self) -> None:
        """Refuse a pretrained mode without a pretrained encoder."""
        if self.mode != "scratch" and not self.encoder:
            raise ValueError(
                f"mode {self.mode!r} starts from a pretrained encoder: pass encoder= (the "
                "model.pt of `lumbarssl pretrain`)"
            )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in ("scratch", "linear_probe", "finetune"):
            raise ValueError(f"mode must be scratch, linear_probe or finetune, got {self.mode!r}")
        for name, allowed in (
            ("head", ("softmax", "corn", "cumulative")),
            ("calibration", ("bcts", "bias", "vector", "temperature", "none")),
            ("calibration_weights", ("uniform", "rsna")),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}"
                )
        self._check_encoder()
        self._require_positive("epochs", "batch_size", "input_size", "n_resamples")
        if self.backbone_lr < 0 or self.head_lr <= 0 or self.weight_decay < 0:
            raise ValueError(
                f"need backbone_lr >= 0, head_lr > 0, weight_decay >= 0; got "
                f"{self.backbone_lr}, {self.head_lr}, {self.weight_decay}"
            )
        if self.plateau_patience < 0 or not 0.0 < self.plateau_factor < 1.0:
            raise ValueError(
                f"need plateau_patience >= 0 and 0 < plateau_factor < 1; got "
                f"{self.plateau_patience}, {self.plateau_factor}"
            )


def load_pretrained_encoder(path: str) -> nn.Module:
    """The encoder of a pretraining checkpoint.

    Args:
        path: A ``model.pt`` holding a :class:`~lumbarssl.models.ContrastiveModel` (or a bare
            encoder).

    Returns:
        The encoder, ``(B, 1, H, W) -> (B, 512)``.

    Raises:
        TypeError: If the checkpoint holds something else.
    """
    model, _ = load_checkpoint(path)
    if isinstance(model, ContrastiveModel):
        return model.encoder
    if isinstance(model, DiscClassifier):
        raise WrongKindError(f"{path} holds a DiscClassifier; pass the pretraining model.pt")
    return model


class GradingData(NamedTuple):
    """What both grading stages start from (:func:`grading_data`)."""

    #: The process's distributed description.
    info: DistributedInfo
    #: The stage's output directory (created, config saved).
    out: Path
    #: The opened cache.
    cache: PreparedCache
    #: Train / validation / test rows of the cache.
    splits: Splits
    #: How ROIs become network inputs (``input_size``), stored in ``model.pt``.
    recipe: RoiRecipe
    #: Training batches (supervised items or device-made batches).
    train: Any
    #: Validation batches, 64 ROIs each.
    val: Any


def grading_data(config: FinetuneConfig, *, conditions: bool) -> GradingData:
    """Open the stage, check the cache's kind, split it and build the supervised batches.

    One recipe for ``lumbarssl finetune`` and ``lumbarssl finetune-conditions``, so both build
    their inputs alike (Sec. 4.2): the splits of :func:`~lumbarssl.data.splits.make_splits`,
    the :class:`~lumbarssl.data.recipes.RoiRecipe` of the cache at ``config.input_size``, and
    the loaders of ``supervised_loaders`` (training batches of ``config.batch_size``).

    Args:
        config: The stage config.
        conditions: Whether the stage grades all five conditions (it then needs a
            ``conditions="all"`` cache; the spinal stage needs a spinal one).

    Returns:
        The :class:`GradingData` of the run.

    Raises:
        ConfigError: If the cache is of the other kind.
    """
    info, out, cache = start_stage(config)
    require_cache_kind(cache, config.cache_dir, conditions=conditions)
    splits = make_splits(cache, config)
    recipe = RoiRecipe.from_cache(cache, input_size=config.input_size)
    train, val = supervised_loaders(
        cache,
        config,
        recipe,
        splits.train,
        splits.val,
        batch_size=config.batch_size,
        val_batch_size=64,
    )
    return GradingData(info, out, cache, splits, recipe, train, val)


def grading_encoder(mode: str, path: str | None) -> nn.Module:
    """The encoder a grading model starts from (Table 1's three rows, Sec. 6).

    Args:
        mode: ``"scratch"`` for a randomly initialised 1-channel ResNet-18, otherwise the
            encoder of the pretraining checkpoint at ``path``.
        path: A pretraining ``model.pt`` (:func:`load_pretrained_encoder`); unused from
            scratch.

    Returns:
        The encoder, ``(B, 1, H, W) -> (B, 512)``.
    """
    if mode == "scratch":
        return resnet18_encoder(in_chans=1)
    assert path is not None  # the configs refuse a pretrained mode without an encoder
    return load_pretrained_encoder(path)


def _classification_step(loss_fn: nn.Module) -> Any:
    def step(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        loss: Tensor = loss_fn(model(batch["image"]), batch["label"])
        return loss

    return step


def _evaluator(loss_fn: nn.Module) -> Any:
    def evaluate(model: nn.Module, batches: Iterable[Mapping[str, Tensor]]) -> dict[str, float]:
        return epoch_metrics(model, batches, loss_fn)

    return evaluate


def grading_loss(config: FinetuneConfig) -> nn.Module:
    """The grading loss of ``config.head`` (Sec. 4.4).

    Args:
        config: The stage config.

    Returns:
        The paper's weighted focal loss (Eq. 2) for the softmax head, else
        :class:`~lumbarssl.losses.OrdinalLoss` with the same alpha and gamma.
    """
    if config.head == "softmax":
        return WeightedFocalLoss(alpha=config.alpha, gamma=config.gamma)
    return OrdinalLoss(kind=config.head, alpha=config.alpha, gamma=config.gamma)


def grading_trainer(
    model: DiscClassifier | ConditionClassifier,
    config: FinetuneConfig,
    *,
    train_step: TrainStep[Any],
    evaluate: EvaluateFn[Any],
) -> Trainer[Any]:
    """The fine-tuning recipe of Sec. 4.4 around a grading model, for either grading stage.

    AdamW with the backbone and head learning rates (every parameter at ``head_lr`` from
    scratch), ReduceLROnPlateau on the validation balanced accuracy, and the best epoch by it.

    Args:
        model: A :class:`~lumbarssl.models.DiscClassifier` or
            :class:`~lumbarssl.models.ConditionClassifier` in ``config.mode``.
        config: The stage config.
        train_step: Loss of one batch.
        evaluate: Validation metrics, ``val_bal_acc`` among them.

    Returns:
        The trainer.
    """
    backbone_lr = config.head_lr if config.mode == "scratch" else config.backbone_lr
    optimizer = adamw(
        model.param_groups(backbone_lr=backbone_lr, head_lr=config.head_lr),
        config,
        weight_decay=config.weight_decay,
    )
    scheduler = ReduceLROnPlateau(
        optimizer, mode="max", patience=config.plateau_patience, factor=config.plateau_factor
    )
    return Trainer(
        model,
        optimizer,
        train_step=train_step,
        evaluate=evaluate,
        scheduler=scheduler,
        config=trainer_config(
            config,
            epochs=config.epochs,
            monitor="val_bal_acc",
            monitor_mode="max",
            scheduler_metric="val_bal_acc",
        ),
    )


def fit_val_calibration(
    predictions: ClassifierPredictions, config: FinetuneConfig
) -> Calibration | None:
    """Fit the configured calibration map on validation predictions.

    Args:
        predictions: The best epoch's predictions on the validation split (with logits).
        config: The stage config (``calibration``, ``calibration_weights``).

    Returns:
        The fitted map, or ``None`` for ``calibration="none"`` or when the validation split
        cannot support the fit (no discs, or no disc of some grade for bias/bcts/vector
        scaling); the latter is logged as a warning. A bcts fit whose best temperature is not
        positive (logits without signal) falls back to bias scaling, with a warning.
    """
    if config.calibration == "none":
        return None
    if predictions.logits is None or len(predictions.y_true) == 0:
        _LOG.warning("no validation discs: the checkpoint gets no calibration map")
        return None
    weights = None
    if config.calibration_weights == "rsna":
        weights = np.asarray(RSNA_SAMPLE_WEIGHTS, dtype=np.float64)[predictions.y_true]
    try:
        try:
            return fit_calibration(
                predictions.logits, predictions.y_true, config.calibration, sample_weight=weights
            )
        except NonPositiveTemperatureError as error:
            if config.calibration != "bcts":
                raise
            # Logits without signal on this split (an untrained or collapsed model): the best
            # temperature is not positive. The bias part alone is still a valid map.
            _LOG.warning("bcts calibration fell back to bias scaling: %s", error)
            return fit_calibration(
                predictions.logits, predictions.y_true, "bias", sample_weight=weights
            )
    except DataError as error:
        _LOG.warning("no calibration map stored in the checkpoint: %s", error)
        return None


@locked_stage
def run_finetuning(config: FinetuneConfig) -> StageResult:
    """Train a disc classifier in one of Table 1's three configurations.

    The model is a :class:`~lumbarssl.models.DiscClassifier` on a 1-channel ResNet-18 (a
    random one for ``scratch``, the pretrained one otherwise), trained with the weighted
    focal loss (Eq. 2), AdamW over :meth:`~lumbarssl.models.DiscClassifier.param_groups`, and
    ReduceLROnPlateau on validation balanced accuracy, which also selects the best epoch
    (Sec. 4.4, 4.6). The best epoch is exported as ``model.pt`` and scored on the held-out
    discs: ``report_test.json`` (Table 1 with bootstrap intervals over studies, the RSNA
    metric), ``predictions_test.csv`` and, for Figure 3, ``confusion_val.json``.

    With ``config.head`` ordinal the linear layer is an :class:`~lumbarssl.models.OrdinalHead`
    and the loss :class:`~lumbarssl.losses.OrdinalLoss` with the same class weights. Unless
    ``config.calibration="none"``, a calibration map is fitted on the best epoch's validation
    logits, stored in ``model.pt`` and ``calibration.json``, and the report holds the
    calibrated reading (``calibrated``) beside the uncalibrated Table 1.

    Args:
        config: The stage config.

    Returns:
        Paths and history of the run.

    Raises:
        ConfigError: If the cache was prepared with ``conditions="all"``.
    """
    info, out, cache, splits, recipe, train_loader, val_loader = grading_data(
        config, conditions=False
    )

    def dataset(rows: Any) -> DiscROIDataset:
        return DiscROIDataset(cache, "supervised", recipe=recipe, indices=rows)

    torch.manual_seed(config.seed)
    model = DiscClassifier(
        grading_encoder(config.mode, config.encoder),
        num_classes=len(config.alpha),
        mode=config.mode,
        head_kind=config.head,
    )
    loss_fn = grading_loss(config)
    trainer = grading_trainer(
        model, config, train_step=_classification_step(loss_fn), evaluate=_evaluator(loss_fn)
    )
    history = trainer.fit(train_loader, val_loader, resume=config.resume)
    metadata = base_metadata(config, "finetune") | {
        "mode": config.mode,
        "encoder": config.encoder,
        "head": config.head,
    }
    model_path = export_best(model, trainer.best_checkpoint, out, metadata, recipe)
    if info.rank == 0:
        val_predictions = predict_classifier(
            model, dataset(splits.val), device=config.runtime.device
        )
        write_json(
            out / "confusion_val.json",
            {"confusion": summarize(val_predictions, n_resamples=1)["confusion"]},
        )
        calibration = fit_val_calibration(val_predictions, config)
        if calibration is not None:
            # model.pt again, now with the map fitted on the exported weights' val logits.
            metadata[CALIBRATION_KEY] = calibration.to_dict()
            save_checkpoint(model_path, model, metadata=metadata, recipe=recipe_to_metadata(recipe))
            calibration.save(out / "calibration.json")
        test_predictions = predict_classifier(
            model, dataset(splits.test), device=config.runtime.device
        )
        test_predictions.write_csv(out / "predictions_test.csv")
        report = summarize(
            test_predictions,
            n_resamples=config.n_resamples,
            seed=config.seed,
            calibration=calibration,
        )
        report["provenance"] = metadata | {"recipe": recipe_to_metadata(recipe)}
        write_json(out / "report_test.json", report)
    return StageResult(out_dir=out, model_path=model_path, history=tuple(history))
