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
from torch.utils.data import DataLoader, Dataset

from lumbarssl import paper
from lumbarssl.data.cache import PreparedCache
from lumbarssl.data.constants import LEVELS
from lumbarssl.data.splits import localizer_splits
from lumbarssl.errors import DataError
from lumbarssl.metrics import localization_rmse
from lumbarssl.models import Localizer2p5D
from lumbarssl.pipeline._common import (
    adamw,
    base_metadata,
    export_best,
    make_loader,
    start_stage,
    trainer_config,
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
        input_size: Side of the 3-slice input (Sec. 4.5: 256); the cache stores 256 and is
            resized on the fly for other values.
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


class SeriesLocalizerDataset(Dataset[dict[str, Tensor]]):
    """All annotated levels of one 2.5D localizer input per item (paper Sec. 3.2, 4.5).

    The five discs of a series share one input stack, and the localizer's backbone features do
    not depend on the level, so each stack is passed through the backbone once and the head
    once per level (:meth:`~lumbarssl.models.Localizer2p5D.forward` with ``(B, K)`` levels).

    Each item is a dict: ``"image"`` float32 (3, L, L) in [0, 1]; ``"level"`` int64 (5,), the
    levels 0-4; ``"target"`` float32 (5, 2), the centres normalised by (W, H); ``"mask"`` bool
    (5,), which levels have a coordinate; ``"scale"`` float32 (2,), (W, H) of the slice;
    ``"spacing"`` float32 (2,), PixelSpacing (column, row) in mm; ``"row"`` int64 (5,), the
    cache row of each level or -1.

    Args:
        cache: The prepared cache.
        rows: Cache rows to include (their stacks are grouped).

    Raises:
        ValueError: If two included rows give the same level of the same stack.
    """

    def __init__(self, cache: PreparedCache, rows: np.ndarray) -> None:
        self.cache = cache
        table = cache.table
        groups: dict[int, list[int]] = {}
        for row in rows.tolist():
            groups.setdefault(int(table.localizer_index[row]), []).append(int(row))
        for index, members in groups.items():
            levels = table.level_id[members]
            if len(set(levels.tolist())) != len(members):
                raise DataError(f"localizer input {index}: two discs of one level {members}")
        self.groups = sorted(groups.items())

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, item: int) -> dict[str, Tensor]:
        index, members = self.groups[item]
        table = self.cache.table
        n = len(LEVELS)
        target = torch.zeros(n, 2)
        mask = torch.zeros(n, dtype=torch.bool)
        row_ids = torch.full((n,), -1, dtype=torch.int64)
        first = members[0]
        width, height = float(table.width[first]), float(table.height[first])
        for row in members:
            level = int(table.level_id[row])
            target[level, 0] = float(table.x[row]) / width
            target[level, 1] = float(table.y[row]) / height
            mask[level] = True
            row_ids[level] = row
        stack = np.asarray(self.cache.localizer_images[index])
        return {
            "image": torch.from_numpy(stack.astype(np.float32) / 255.0),
            "level": torch.arange(n),
            "target": target,
            "mask": mask,
            "scale": torch.tensor([width, height]),
            "spacing": torch.tensor(
                [float(table.col_spacing_mm[first]), float(table.row_spacing_mm[first])]
            ),
            "row": row_ids,
        }


def _stacks_per_step(discs_per_step: int) -> int:
    # The paper's batch counts discs; a batch of series carries len(LEVELS) discs each.
    return max(1, math.ceil(discs_per_step / len(LEVELS)))


def _resize(images: Tensor, size: int) -> Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True)


def _localizer_step(size: int) -> Any:
    def step(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        pred = model(_resize(batch["image"], size), batch["level"])  # (B, 5, 2)
        mask = batch["mask"]
        return F.smooth_l1_loss(pred[mask], batch["target"][mask])

    return step


@torch.no_grad()
def _predict(
    model: nn.Module, batches: Iterable[Mapping[str, Tensor]], size: int
) -> dict[str, Tensor]:
    """Per-disc predictions, flattened over the annotated levels of each stack."""
    keys = ("pred", "target", "scale", "spacing", "row", "level")
    out: dict[str, list[Tensor]] = {key: [] for key in keys}
    for batch in batches:
        mask = batch["mask"]
        pred = model(_resize(batch["image"], size), batch["level"]).float()
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


def _evaluator(size: int) -> Any:
    def evaluate(model: nn.Module, batches: Iterable[Mapping[str, Tensor]]) -> dict[str, float]:
        outputs = _predict(model, batches, size)
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
    train_set = SeriesLocalizerDataset(cache, train)
    train_loader = make_loader(
        train_set, config, batch_size=stacks, shuffle=True, drop_last=len(train_set) > stacks
    )
    val_loader = make_loader(
        SeriesLocalizerDataset(cache, val), config, batch_size=16, shuffle=False
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
        train_step=_localizer_step(config.input_size),
        evaluate=_evaluator(config.input_size),
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
    metadata = base_metadata(config, "localizer") | {"input_size": config.input_size}
    model_path = export_best(model, trainer.best_checkpoint, out, metadata)
    if info.rank == 0:
        device = select_device(config.runtime.device)
        model.to(device).eval()
        loader = DataLoader(SeriesLocalizerDataset(cache, test), batch_size=16)
        outputs = _predict(model, (move_to_device(b, device) for b in loader), config.input_size)
        _write_predictions(out / "predictions_test.csv", outputs)
        write_json(
            out / "report_test.json",
            _rmse(outputs) | {"n_discs": len(test), "provenance": metadata},
        )
    return StageResult(out_dir=out, model_path=model_path, history=tuple(history))
