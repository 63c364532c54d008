"""Stage 3: the 2.5D disc localizer (paper Sec. 3.2, 4.5): training and RMSE in pixels."""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import GroupShuffleSplit
from torch import Tensor, nn
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torch.utils.data import DataLoader

from lumbarssl.data.cache import PreparedCache
from lumbarssl.data.constants import LEVELS
from lumbarssl.data.datasets import LocalizerDataset
from lumbarssl.metrics import localization_rmse
from lumbarssl.models import Localizer2p5D
from lumbarssl.pipeline._common import (
    base_metadata,
    export_best,
    make_loader,
    prepare_out_dir,
    trainer_config,
    write_json,
)
from lumbarssl.pipeline.config import StageConfig, param
from lumbarssl.pipeline.result import StageResult
from lumbarssl.training import (
    Trainer,
    init_distributed,
    move_to_device,
    seed_everything,
    select_device,
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LocalizerConfig(StageConfig):
    """Localizer training; defaults are the paper's (Sec. 4.5).

    Attributes:
        epochs: Training epochs (Sec. 5.3: 40).
        batch_size: Samples per step (Sec. 4.5: 32).
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

    epochs: int = param(40, "training epochs (Sec. 5.3)")
    batch_size: int = param(32, "samples per step (Sec. 4.5)")
    lr: float = param(1e-4, "AdamW learning rate (Sec. 4.5)")
    weight_decay: float = param(0.01, "AdamW weight decay (Sec. 4.5)")
    plateau_patience: int = param(3, "ReduceLROnPlateau patience (Sec. 4.5)")
    plateau_factor: float = param(0.1, "ReduceLROnPlateau factor (Sec. 4.5)")
    input_size: int = param(256, "side of the 3-slice input (Sec. 4.5)")
    weights: str | None = param(None, "backbone weights, e.g. IMAGENET1K_V1 (paper; downloads)")

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("epochs", "batch_size", "input_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(
                f"need lr > 0 and weight_decay >= 0, got {self.lr}, {self.weight_decay}"
            )
        if self.plateau_patience < 0 or not 0.0 < self.plateau_factor < 1.0:
            raise ValueError(
                f"need plateau_patience >= 0 and 0 < plateau_factor < 1; got "
                f"{self.plateau_patience}, {self.plateau_factor}"
            )


def localizer_splits(
    study_ids: np.ndarray, *, val_size: float, test_size: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split every disc with a coordinate into train/val/test, grouped by study.

    The five levels of a series share one input image, so the localizer is always split by
    study (whatever the grading split), keeping a test image out of training entirely.

    Args:
        study_ids: Study of each cache row, shape (N,).
        val_size: Approximate fraction of rows for validation.
        test_size: Approximate fraction of rows for testing.
        seed: Random seed.

    Returns:
        ``(train, val, test)``: sorted int64 row indices.
    """
    rows = np.arange(len(study_ids))
    outer = GroupShuffleSplit(n_splits=1, test_size=test_size, random_state=seed)
    rest, test = next(outer.split(rows, groups=study_ids))
    inner = GroupShuffleSplit(n_splits=1, test_size=val_size / (1.0 - test_size), random_state=seed)
    train, val = next(inner.split(rest, groups=study_ids[rest]))
    return (
        np.sort(rest[train]).astype(np.int64),
        np.sort(rest[val]).astype(np.int64),
        np.sort(test).astype(np.int64),
    )


def _resize(images: Tensor, size: int) -> Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True)


def _localizer_step(size: int) -> Any:
    def step(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        pred = model(_resize(batch["image"], size), batch["level"])
        return F.smooth_l1_loss(pred, batch["target"])

    return step


@torch.no_grad()
def _predict(
    model: nn.Module, batches: Iterable[Mapping[str, Tensor]], size: int
) -> dict[str, Tensor]:
    preds, targets, scales, spacings, rows, levels = [], [], [], [], [], []
    for batch in batches:
        preds.append(model(_resize(batch["image"], size), batch["level"]).float().cpu())
        targets.append(batch["target"].cpu())
        scales.append(batch["scale"].cpu())
        spacings.append(batch["spacing"].cpu())
        rows.append(batch["index"].cpu())
        levels.append(batch["level"].cpu())
    return {
        "pred": torch.cat(preds),
        "target": torch.cat(targets),
        "scale": torch.cat(scales),
        "spacing": torch.cat(spacings),
        "row": torch.cat(rows),
        "level": torch.cat(levels),
    }


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
    info = init_distributed(device=config.device)
    seed_everything(config.seed + info.rank)
    out = prepare_out_dir(config)
    cache = PreparedCache.open(config.cache_dir)
    train, val, test = localizer_splits(
        np.asarray(cache.table.study_id),
        val_size=config.val_size,
        test_size=config.test_size,
        seed=config.seed,
    )
    train_loader = make_loader(
        LocalizerDataset(cache, indices=train),
        config,
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=len(train) > config.batch_size,
    )
    val_loader = make_loader(
        LocalizerDataset(cache, indices=val), config, batch_size=64, shuffle=False
    )
    torch.manual_seed(config.seed)
    model = Localizer2p5D(weights=config.weights)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    scheduler = ReduceLROnPlateau(
        optimizer, mode="min", patience=config.plateau_patience, factor=config.plateau_factor
    )
    trainer = Trainer(
        model,
        optimizer,
        train_step=_localizer_step(config.input_size),
        evaluate=_evaluator(config.input_size),
        scheduler=scheduler,
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
        device = select_device(config.device)
        model.to(device).eval()
        loader = DataLoader(LocalizerDataset(cache, indices=test), batch_size=64)
        outputs = _predict(model, (move_to_device(b, device) for b in loader), config.input_size)
        _write_predictions(out / "predictions_test.csv", outputs)
        write_json(
            out / "report_test.json",
            _rmse(outputs) | {"n_discs": len(test), "provenance": metadata},
        )
    return StageResult(out_dir=out, model_path=model_path, history=tuple(history))
