"""Stage 3: the 2.5D disc localizer (paper Sec. 3.2, 4.5): training and RMSE in pixels."""

from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torch.utils.data import DataLoader

from lumbarssl import paper
from lumbarssl.data.cache import PreparedCache
from lumbarssl.data.constants import LEVELS
from lumbarssl.data.datasets import SeriesLocalizerDataset
from lumbarssl.data.device_data import StackBank
from lumbarssl.data.recipes import LocalizerRecipe, recipe_to_metadata
from lumbarssl.data.splits import localizer_splits
from lumbarssl.metrics import localization_rmse
from lumbarssl.models import Localizer2p5D
from lumbarssl.pipeline._common import (
    DeviceBatches,
    adamw,
    base_metadata,
    device_batch_pair,
    export_best,
    locked_stage,
    make_loader,
    start_stage,
    trainer_config,
    use_device_data,
    write_json,
)
from lumbarssl.pipeline.config import StageConfig, param
from lumbarssl.pipeline.result import StageResult
from lumbarssl.training import (
    Trainer,
    move_to_device,
    select_device,
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LocalizerConfig(StageConfig):
    """Localizer training; defaults are the paper's (Sec. 4.5).

    Attributes:
        epochs: Training epochs (Sec. 5.3: 40).
        batch_size: Discs per step (Sec. 4.5: 32). Steps take whole series, so a step holds
            ``ceil(batch_size / 5)`` input stacks and their (up to) five discs each.
        lr: AdamW learning rate (Sec. 4.5: 1e-4).
        weight_decay: AdamW weight decay (Sec. 4.5: 0.01).
        plateau_patience: ReduceLROnPlateau patience on validation RMSE (Sec. 4.5: 3).
        plateau_factor: ReduceLROnPlateau factor (Sec. 4.5: 0.1).
        input_size: Side of the 3-slice input (Sec. 4.5: 256); the cache stores its
            ``localizer_size`` stack and the
            :class:`~lumbarssl.data.recipes.LocalizerRecipe` resizes it for other values, in
            training and in ``predict`` alike.
        weights: torchvision weights of the backbone. The paper starts from
            ``"IMAGENET1K_V1"``; the default ``None`` starts from random weights because
            nothing may be downloaded by default.
    """

    epochs: int = param(paper.LOCALIZER_EPOCHS, "training epochs (Sec. 5.3)")
    batch_size: int = param(
        paper.LOCALIZER_BATCH_SIZE, "discs per step, taken as whole series (Sec. 4.5)"
    )
    lr: float = param(paper.LOCALIZER_LR, "AdamW learning rate (Sec. 4.5)")
    weight_decay: float = param(paper.LOCALIZER_WEIGHT_DECAY, "AdamW weight decay (Sec. 4.5)")
    plateau_patience: int = param(
        paper.LOCALIZER_PLATEAU_PATIENCE, "ReduceLROnPlateau patience (Sec. 4.5)"
    )
    plateau_factor: float = param(
        paper.LOCALIZER_PLATEAU_FACTOR, "ReduceLROnPlateau factor (Sec. 4.5)"
    )
    input_size: int = param(paper.LOCALIZER_SIZE, "side of the 3-slice input (Sec. 4.5)")
    weights: str | None = param(None, "backbone weights, e.g. IMAGENET1K_V1 (paper; downloads)")

    def __post_init__(self) -> None:
        super().__post_init__()
        self._require_positive("epochs", "batch_size", "input_size")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(
                f"need lr > 0 and weight_decay >= 0, got {self.lr}, {self.weight_decay}"
            )
        if self.plateau_patience < 0 or not 0.0 < self.plateau_factor < 1.0:
            raise ValueError(
                f"need plateau_patience >= 0 and 0 < plateau_factor < 1; got "
                f"{self.plateau_patience}, {self.plateau_factor}"
            )


def _stacks_per_step(discs_per_step: int) -> int:
    # The paper's batch counts discs; a batch of series carries len(LEVELS) discs each.
    return max(1, math.ceil(discs_per_step / len(LEVELS)))


def _localizer_step() -> Any:
    def step(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        pred = model(batch["image"], batch["level"])  # (B, 5, 2)
        mask = batch["mask"]
        return F.smooth_l1_loss(pred[mask], batch["target"][mask])

    return step


@torch.no_grad()
def _predict(model: nn.Module, batches: Iterable[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Per-disc predictions, flattened over the annotated levels of each stack."""
    keys = ("pred", "target", "scale", "spacing", "row", "level")
    out: dict[str, list[Tensor]] = {key: [] for key in keys}
    for batch in batches:
        mask = batch["mask"]
        pred = model(batch["image"], batch["level"]).float()
        per_level = {
            "pred": pred,
            "target": batch["target"],
            "scale": batch["scale"].unsqueeze(1).expand(-1, mask.shape[1], -1),
            "spacing": batch["spacing"].unsqueeze(1).expand(-1, mask.shape[1], -1),
            "row": batch["row"],
            "level": batch["level"],
        }
        for key in keys:
            out[key].append(per_level[key][mask].cpu())
    return {key: torch.cat(values) for key, values in out.items()}


def _pixels(normalised: Tensor, scale: Tensor) -> np.ndarray:
    return np.asarray((normalised * scale).double().numpy())


def _rmse(outputs: Mapping[str, Tensor]) -> dict[str, float]:
    pred_px = _pixels(outputs["pred"], outputs["scale"])
    true_px = _pixels(outputs["target"], outputs["scale"])
    # spacing is (column, row) in mm; the metric takes (row, column)
    spacing = outputs["spacing"].double().numpy()[:, ::-1]
    rmse_mm = (
        localization_rmse(pred_px, true_px, pixel_spacing=spacing)
        if np.isfinite(spacing).all()
        else float("nan")
    )
    return {"rmse_px": localization_rmse(pred_px, true_px), "rmse_mm": float(rmse_mm)}


def _evaluator() -> Any:
    def evaluate(model: nn.Module, batches: Iterable[Mapping[str, Tensor]]) -> dict[str, float]:
        outputs = _predict(model, batches)
        loss = float(F.smooth_l1_loss(outputs["pred"], outputs["target"]))
        return {"loss": loss} | _rmse(outputs)

    return evaluate


def _stacks_in_batch(batch: Mapping[str, Tensor]) -> int:
    return int(batch["image"].shape[0])


def _write_predictions(path: Path, outputs: Mapping[str, Tensor]) -> None:
    pred_px = _pixels(outputs["pred"], outputs["scale"])
    true_px = _pixels(outputs["target"], outputs["scale"])
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["row", "level", "x_true", "y_true", "x_pred", "y_pred", "error_px"])
        for i in range(len(pred_px)):
            error = float(np.hypot(*(pred_px[i] - true_px[i])))
            writer.writerow(
                [
                    int(outputs["row"][i]),
                    LEVELS[int(outputs["level"][i])],
                    f"{true_px[i, 0]:.2f}",
                    f"{true_px[i, 1]:.2f}",
                    f"{pred_px[i, 0]:.2f}",
                    f"{pred_px[i, 1]:.2f}",
                    f"{error:.2f}",
                ]
            )


#: Stacks per validation and test batch.
_VAL_STACKS = 16


def stack_batch(bank: StackBank, recipe: LocalizerRecipe, positions: Tensor) -> dict[str, Tensor]:
    """A batch of ``SeriesLocalizerDataset`` items gathered from a bank on its device.

    The image is the stored stack made a network input by
    :meth:`LocalizerRecipe.network_input <lumbarssl.data.recipes.LocalizerRecipe.network_input>`,
    as the dataset makes it; the batch equals the DataLoader's on the same device.

    Args:
        bank: The stacks on the device.
        recipe: The localizer recipe.
        positions: int64 (B,) positions in the bank, on its device.

    Returns:
        The batch, with the keys of ``SeriesLocalizerDataset``.
    """
    batch = bank.gather(positions)
    if batch["image"].shape[-1] != recipe.input_size:
        batch["image"] = recipe.network_input(bank.images[positions])
    return batch


def _device_batches(
    cache: PreparedCache,
    config: LocalizerConfig,
    recipe: LocalizerRecipe,
    train: np.ndarray,
    val: np.ndarray,
    stacks: int,
) -> tuple[DeviceBatches, DeviceBatches]:
    """Training and validation batches gathered from stacks held on the device."""
    device = select_device(config.runtime.device)
    train_bank = StackBank.from_cache(cache, device, rows=train)
    val_bank = StackBank.from_cache(cache, device, rows=val)

    def gather(bank: StackBank) -> Any:
        def make(positions: Tensor, epoch: int) -> dict[str, Tensor]:
            return stack_batch(bank, recipe, positions)

        return make

    return device_batch_pair(
        config,
        device,
        (len(train_bank), gather(train_bank)),
        (len(val_bank), gather(val_bank)),
        batch_size=stacks,
        val_batch_size=_VAL_STACKS,
        drop_last=len(train_bank) > stacks,
    )


@locked_stage
def run_localizer_training(config: LocalizerConfig) -> StageResult:
    """Train :class:`~lumbarssl.models.Localizer2p5D` to regress disc centres.

    Inputs are the annotated slice and its two spatial neighbours (2.5D, Sec. 3.2), targets
    the centre normalised by the image size; Smooth L1 loss, AdamW and ReduceLROnPlateau on
    validation RMSE (Sec. 4.5). The best epoch is exported as ``model.pt`` and scored on the
    test studies: ``report_test.json`` (RMSE in original pixels and in mm) and
    ``predictions_test.csv``.

    Args:
        config: The stage config.

    Returns:
        Paths and history of the run.
    """
    info, out, cache = start_stage(config)
    train, val, test = localizer_splits(
        np.asarray(cache.table.study_id),
        val_size=config.val_size,
        test_size=config.test_size,
        seed=config.seed,
    )
    stacks = _stacks_per_step(config.batch_size)
    recipe = LocalizerRecipe.from_cache(cache, input_size=config.input_size)
    train_loader: Iterable[dict[str, Tensor]]
    val_loader: Iterable[dict[str, Tensor]]
    n_stacks = len(np.unique(cache.table.localizer_index[np.concatenate([train, val])]))
    if use_device_data(config, StackBank.nbytes_for(cache, n_stacks)):
        train_loader, val_loader = _device_batches(cache, config, recipe, train, val, stacks)
    else:
        train_set = SeriesLocalizerDataset(cache, train, recipe=recipe)
        train_loader = make_loader(
            train_set,
            config,
            batch_size=stacks,
            shuffle=True,
            drop_last=len(train_set) > stacks,
            deterministic=True,
        )
        val_loader = make_loader(
            SeriesLocalizerDataset(cache, val, recipe=recipe),
            config,
            batch_size=_VAL_STACKS,
            shuffle=False,
            deterministic=True,
        )
    torch.manual_seed(config.seed)
    model = Localizer2p5D(weights=config.weights)
    optimizer = adamw(model.parameters(), config, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = ReduceLROnPlateau(
        optimizer, mode="min", patience=config.plateau_patience, factor=config.plateau_factor
    )
    trainer = Trainer(
        model,
        optimizer,
        train_step=_localizer_step(),
        evaluate=_evaluator(),
        scheduler=scheduler,
        batch_size_fn=_stacks_in_batch,
        config=trainer_config(
            config,
            epochs=config.epochs,
            monitor="val_rmse_px",
            monitor_mode="min",
            scheduler_metric="val_rmse_px",
        ),
    )
    history = trainer.fit(train_loader, val_loader, resume=config.resume)
    metadata = base_metadata(config, "localizer")
    model_path = export_best(model, trainer.best_checkpoint, out, metadata, recipe)
    if info.rank == 0:
        device = select_device(config.runtime.device)
        model.to(device).eval()
        loader = DataLoader(
            SeriesLocalizerDataset(cache, test, recipe=recipe), batch_size=_VAL_STACKS
        )
        outputs = _predict(model, (move_to_device(b, device) for b in loader))
        _write_predictions(out / "predictions_test.csv", outputs)
        write_json(
            out / "report_test.json",
            _rmse(outputs)
            | {
                "n_discs": len(test),
                "provenance": metadata | {"recipe": recipe_to_metadata(recipe)},
            },
        )
    return StageResult(out_dir=out, model_path=model_path, history=tuple(history))
