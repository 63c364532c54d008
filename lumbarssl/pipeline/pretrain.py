"""Stage 1: multi-positive contrastive pretraining of the disc encoder (paper Sec. 3.4, 4.3)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import CosineAnnealingLR

from lumbarssl import paper
from lumbarssl.data.batch_augment import BatchAugment
from lumbarssl.data.cache import PreparedCache
from lumbarssl.data.datasets import (
    TRAIN_STREAM,
    VALIDATION_STREAM,
    DiscDatasetConfig,
    DiscROIDataset,
)
from lumbarssl.data.device_data import RoiBank
from lumbarssl.data.recipes import RoiRecipe
from lumbarssl.errors import ConfigError
from lumbarssl.layout import CONDITION_SEQUENCE, CONDITIONS, SERIES_DESCRIPTIONS
from lumbarssl.losses import MultiPositiveNTXent
from lumbarssl.models import ContrastiveModel
from lumbarssl.pipeline._common import (
    DeviceBatches,
    adamw,
    base_metadata,
    device_batch_pair,
    export_best,
    locked_stage,
    make_loader,
    make_splits,
    start_stage,
    trainer_config,
    use_device_data,
    write_json,
)
from lumbarssl.pipeline.config import StageConfig, param
from lumbarssl.pipeline.result import StageResult
from lumbarssl.training import Trainer, is_distributed, select_device


@dataclasses.dataclass(frozen=True, kw_only=True)
class PretrainConfig(StageConfig):
    """Contrastive pretraining; defaults are the paper's where it gives them.

    Attributes:
        epochs: Training epochs (Sec. 4.3: 60).
        batch_size: Discs per step, each contributing ``views`` images (not given in the
            paper; 64 discs = 192 images).
        views: Stochastic views per disc, V (Sec. 3.4: 3).
        temperature: NT-Xent temperature tau (Sec. 4.3: 0.1).
        lr: AdamW learning rate at the start of the cosine schedule (not given in the paper).
        weight_decay: AdamW weight decay (not given in the paper).
        max_grad_norm: Gradient-norm clipping threshold (Sec. 4.3 clips; value not given).
        input_size: Network input side after resizing the ROI (Sec. 4.2: 224).
        max_train_discs: Use at most this many training discs (a seeded subset); ``None`` uses
            all. For scaled-down CPU profiles.
        sequences: Pretrain on the ROIs of these sequences only (names of
            :data:`~lumbarssl.layout.SERIES_DESCRIPTIONS`; a row's sequence is that of its
            condition, :data:`~lumbarssl.layout.CONDITION_SEQUENCE`). Empty (default): every
            row of the cache, so one encoder learns from all ROIs of a ``conditions="all"``
            cache; one sequence per run gives per-sequence encoders for
            :class:`~lumbarssl.models.ConditionClassifier`. Left out of :meth:`to_dict` when
            empty, so spinal runs save the config they always did.
    """

    epochs: int = param(paper.PRETRAIN_EPOCHS, "training epochs (Sec. 4.3)")
    batch_size: int = param(64, "discs per step; V images each (not given in the paper)")
    views: int = param(paper.N_VIEWS, "views per disc V (Sec. 3.4)")
    temperature: float = param(paper.TEMPERATURE, "NT-Xent temperature (Sec. 4.3)")
    lr: float = param(1e-3, "AdamW learning rate, cosine-annealed (not given in the paper)")
    weight_decay: float = param(1e-4, "AdamW weight decay (not given in the paper)")
    max_grad_norm: float = param(1.0, "gradient-norm clipping (Sec. 4.3; value not given)")
    input_size: int = param(paper.INPUT_SIZE, "input side after resizing the ROI (Sec. 4.2)")
    max_train_discs: int | None = param(None, "cap on training discs (scaled-down profiles)")
    sequences: tuple[str, ...] = param(
        (), "pretrain only on ROIs of these sequences (e.g. 'Sagittal T1'); empty: all rows"
    )

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dictionary; ``sequences`` only when it is not empty."""
        data = super().to_dict()
        if not self.sequences:
            # Keeps stage_config.json of runs without the option as it was.
            del data["sequences"]
        return data

    def __post_init__(self) -> None:
        super().__post_init__()
        self._require_positive("epochs", "batch_size", "input_size")
        if self.views < 2:
            raise ValueError(f"views must be >= 2 (a disc needs a positive), got {self.views}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.lr <= 0 or self.weight_decay < 0 or self.max_grad_norm <= 0:
            raise ValueError(
                f"need lr > 0, weight_decay >= 0, max_grad_norm > 0; got {self.lr}, "
                f"{self.weight_decay}, {self.max_grad_norm}"
            )
        if self.max_train_discs is not None and self.max_train_discs < 2:
            raise ValueError(f"max_train_discs must be >= 2, got {self.max_train_discs}")
        object.__setattr__(self, "sequences", tuple(self.sequences))
        unknown = [s for s in self.sequences if s not in SERIES_DESCRIPTIONS]
        if unknown:
            raise ValueError(f"sequences must be names of {SERIES_DESCRIPTIONS}, got {unknown}")


def _contrastive_step(loss_fn: nn.Module) -> Any:
    def step(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        images = batch["image"]  # (B, V, 1, H, W)
        n, v = images.shape[:2]
        z = model(images.flatten(0, 1))  # (B*V, D)
        loss: Tensor = loss_fn(z.view(n, v, -1))
        return loss

    return step


def _contrastive_evaluator(loss_fn: nn.Module) -> Any:
    # Validation runs on the main process alone, so its loss must not gather across processes.
    step = _contrastive_step(loss_fn)

    def evaluate(model: nn.Module, batches: Iterable[dict[str, Tensor]]) -> dict[str, float]:
        total, count = 0.0, 0
        with torch.no_grad():
            for batch in batches:
                n = int(batch["image"].shape[0])
                total += float(step(model, batch)) * n
                count += n
        return {"loss": total / count if count else float("nan")}

    return evaluate


def _views_in_batch(batch: dict[str, Tensor]) -> int:
    return int(batch["image"].shape[0] * batch["image"].shape[1])


def pretraining_rows(cache: PreparedCache, config: PretrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """Rows used to pretrain and to validate the contrastive loss.

    Training uses the supervised training discs plus unlabeled discs (labels are not needed);
    validation and test discs are never seen, so the held-out metrics stay held out. With
    ``config.sequences``, both keep only the rows whose condition is graded on one of them.

    Args:
        cache: The prepared cache.
        config: The pretraining config.

    Returns:
        ``(train_rows, val_rows)``, int64.
    """
    splits = make_splits(cache, config)
    train = np.sort(np.concatenate([splits.train, splits.unlabeled]))
    val = splits.val
    if config.sequences:
        wanted = [i for i, c in enumerate(CONDITIONS) if CONDITION_SEQUENCE[c] in config.sequences]
        condition_id = cache.table.condition_id
        train, val = (rows[np.isin(condition_id[rows], wanted)] for rows in (train, val))
        if len(train) == 0:
            raise ConfigError(
                f"{config.cache_dir}: no ROI of sequences {list(config.sequences)} to pretrain "
                "on; prepare the cache with `lumbarssl prepare --conditions all`"
            )
    if config.max_train_discs is not None and len(train) > config.max_train_discs:
        rng = np.random.default_rng(config.seed)
        train = np.sort(rng.choice(train, size=config.max_train_discs, replace=False))
    return train.astype(np.int64), val


def _device_batches(
    cache: PreparedCache,
    config: PretrainConfig,
    recipe: RoiRecipe,
    data_config: DiscDatasetConfig,
    train_rows: np.ndarray,
    val_rows: np.ndarray,
) -> tuple[DeviceBatches, DeviceBatches]:
    """Training and validation batches made on the device (``runtime.device_data``).

    The ROIs are held on the device (:class:`~lumbarssl.data.device_data.RoiBank`) and
    augmented a batch at a time by :class:`~lumbarssl.data.batch_augment.BatchAugment` with
    the recipe's intensity statistics, views keyed by ``(seed, epoch, cache row, view)``;
    validation views use their own stream and a fixed epoch, so they never change.
    """
    device = select_device(config.runtime.device)
    mean, std = recipe.mean, recipe.std
    if mean is None or std is None:  # RoiRecipe.from_cache always sets them
        raise ValueError("the ROI recipe has no intensity statistics")
    train_bank = RoiBank.from_cache(cache, device, rows=train_rows)
    val_bank = RoiBank.from_cache(cache, device, rows=val_rows)

    def views(bank: RoiBank, augment: BatchAugment) -> Any:
        def make(positions: Tensor, epoch: int) -> dict[str, Tensor]:
            batch = bank.gather(positions)
            batch["image"] = augment(batch.pop("roi"), batch["index"], epoch)
            return batch

        return make

    train_augment = BatchAugment(
        data_config, mean=mean, std=std, seed=config.seed, stream=TRAIN_STREAM
    )
    val_augment = BatchAugment(
        data_config, mean=mean, std=std, seed=config.seed, stream=VALIDATION_STREAM
    )
    return device_batch_pair(
        config,
        device,
        (len(train_bank), views(train_bank, train_augment)),
        (len(val_bank), views(val_bank, val_augment)),
        batch_size=config.batch_size,
        val_batch_size=config.batch_size,
    )


@locked_stage
def run_pretraining(config: PretrainConfig) -> StageResult:
    """Pretrain a 1-channel ResNet-18 + projection head with multi-positive NT-Xent.

    V augmented views of each disc ROI are positives of each other (Eq. 3); the cosine
    schedule, AdamW and gradient clipping follow Sec. 4.3. Under ``torchrun`` the loss
    gathers embeddings from every process, so negatives span the global batch. The best
    epoch by validation loss is exported as ``model.pt``
    (a :class:`~lumbarssl.models.ContrastiveModel`).

    With ``runtime.device_data`` on (by default on CUDA when the ROIs fit), the ROIs live on
    the device and the views are made a batch at a time there
    (:class:`~lumbarssl.data.batch_augment.BatchAugment`, the same parameter distributions as
    the per-sample transforms, keyed by seed, epoch and cache row); otherwise DataLoader
    workers apply the recipe's per-sample transforms.

    Args:
        config: The stage config.

    Returns:
        Paths and history of the run.
    """
    _, out, cache = start_stage(config)
    train_rows, val_rows = pretraining_rows(cache, config)
    recipe = RoiRecipe.from_cache(cache, input_size=config.input_size)
    data_config = DiscDatasetConfig(input_size=config.input_size, n_views=config.views)
    nbytes = RoiBank.nbytes_for(cache, len(train_rows) + len(val_rows))
    train_loader: Iterable[dict[str, Tensor]]
    val_loader: Iterable[dict[str, Tensor]]
    # BatchAugment resamples bilinearly; a recipe asking for another interpolation keeps the
    # per-sample transforms.
    if recipe.interpolation == "bilinear" and use_device_data(config, nbytes):
        train_loader, val_loader = _device_batches(
            cache, config, recipe, data_config, train_rows, val_rows
        )
    else:
        train_set = DiscROIDataset(
            cache,
            "contrastive",
            config=data_config,
            recipe=recipe,
            indices=train_rows,
            labeled_only=False,
            seed=config.seed,
            stream=TRAIN_STREAM,
        )
        val_set = DiscROIDataset(
            cache,
            "contrastive",
            config=data_config,
            recipe=recipe,
            indices=val_rows,
            labeled_only=False,
            seed=config.seed,
            stream=VALIDATION_STREAM,  # fixed views: the trainer sets no epoch on validation
        )
        # Views keyed by (seed, stream, epoch, row): the epoch rides with each index, so
        # the workers persist across epochs; the validation views never change.
        train_loader = make_loader(
            train_set,
            config,
            batch_size=config.batch_size,
            shuffle=True,
            drop_last=True,
            epoch_in_index=True,
        )
        val_loader = make_loader(
            val_set, config, batch_size=config.batch_size, shuffle=False, deterministic=True
        )

    torch.manual_seed(config.seed)  # identical initial weights on every process
    model = ContrastiveModel()
    loss_fn = MultiPositiveNTXent(
        temperature=config.temperature, gather_distributed=is_distributed()
    )
    optimizer = adamw(model.parameters(), config, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = CosineAnnealingLR(optimizer, T_max=config.epochs)
    trainer = Trainer(
        model,
        optimizer,
        train_step=_contrastive_step(loss_fn),
        evaluate=_contrastive_evaluator(
            MultiPositiveNTXent(temperature=config.temperature, gather_distributed=False)
        ),
        scheduler=scheduler,
        batch_size_fn=_views_in_batch,
        config=trainer_config(
            config,
            epochs=config.epochs,
            max_grad_norm=config.max_grad_norm,
            monitor="val_loss",
            monitor_mode="min",
        ),
    )
    history = trainer.fit(train_loader, val_loader, resume=config.resume)
    metadata = base_metadata(config, "pretrain") | {"n_train_discs": len(train_rows)}
    if config.sequences:
        metadata["sequences"] = list(config.sequences)
    model_path = export_best(model, trainer.best_checkpoint, out, metadata, recipe)
    write_json(out / "splits.json", {"train": train_rows.tolist(), "val": val_rows.tolist()})
    return StageResult(out_dir=out, model_path=model_path, history=tuple(history))


__all__ = ["PretrainConfig", "pretraining_rows", "run_pretraining"]
