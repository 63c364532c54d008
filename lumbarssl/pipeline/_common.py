"""Plumbing shared by the stages: splits, loaders, trainer settings, exported checkpoints."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, TypeVar, cast

import torch
from torch import Tensor, nn
from torch.utils.data import (
    DataLoader,
    Dataset,
    DistributedSampler,
    RandomSampler,
    Sampler,
    SequentialSampler,
)

from lumbarssl._core.atomic import atomic_write
from lumbarssl._core.lock import output_lock
from lumbarssl.data.cache import PreparedCache
from lumbarssl.data.datasets import DiscROIDataset, EpochKeyedSampler
from lumbarssl.data.device_data import EpochSampler, RoiBank, resolve_device_data
from lumbarssl.data.recipes import Recipe, RoiRecipe, recipe_to_metadata

# Re-exported for the stages; they live with every other split in lumbarssl.data.splits.
from lumbarssl.data.splits import Splits as Splits
from lumbarssl.data.splits import make_splits as make_splits
from lumbarssl.errors import ConfigError
from lumbarssl.models import save_checkpoint
from lumbarssl.pipeline.config import StageConfig
from lumbarssl.training import (
    RESUME_CHANGEABLE,
    DistributedInfo,
    TrainerConfig,
    init_distributed,
    is_distributed,
    is_main_process,
    load_training_state,
    seed_everything,
    seeded_generator,
    select_device,
)
from lumbarssl.training.device import default_num_workers

#: File name of the model-only checkpoint every stage exports (weights of the best epoch).
MODEL_FILE = "model.pt"
#: File name of the stage config saved beside its outputs.
STAGE_CONFIG_FILE = "stage_config.json"


_Stage = TypeVar("_Stage", bound=Callable[..., Any])


def locked_stage(run: _Stage) -> _Stage:
    """Hold the output directory's lock for the whole call of a stage function.

    The stage's first argument is its config; on the main process (``RANK`` unset or 0) its
    ``out_dir`` is created and locked (:func:`lumbarssl._core.lock.output_lock`) before the
    stage reads or writes anything there, so a second run into the same directory stops at
    once with :class:`~lumbarssl.errors.LockHeldError` (exit 3) and leaves the first alone.

    Args:
        run: A stage function taking the stage config first.

    Returns:
        The same function, holding the lock while it runs.
    """

    @functools.wraps(run)
    def locked(config: StageConfig, *args: Any, **kwargs: Any) -> Any:
        if int(os.environ.get("RANK", "0")) != 0:
            return run(config, *args, **kwargs)
        out = Path(config.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with output_lock(out, "lumbarssl run"):
            return run(config, *args, **kwargs)

    return cast(_Stage, locked)


def start_stage(config: StageConfig) -> tuple[DistributedInfo, Path, PreparedCache]:
    """What every training stage does first.

    Joins the ``torchrun`` process group if there is one, seeds every generator (offset by
    the rank, so processes draw different augmentations), creates the output directory with
    the saved config, and opens the cache.

    Args:
        config: The stage config.

    Returns:
        The process's distributed description, the output directory and the cache.
    """
    info = init_distributed(device=config.runtime.device)
    seed_everything(config.seed + info.rank)
    out = prepare_out_dir(config)
    return info, out, PreparedCache.open(config.cache_dir)


def require_cache_kind(cache: PreparedCache, cache_dir: str, *, conditions: bool) -> None:
    """Refuse a cache prepared for the other task, before anything trains or scores.

    A spinal grader (``lumbarssl finetune``, a :class:`~lumbarssl.models.DiscClassifier`)
    needs a spinal canal cache; ``finetune-conditions`` and a
    :class:`~lumbarssl.models.ConditionClassifier` need a ``conditions="all"`` cache. On the
    other kind the splits differ from the training run's and the ROIs mix or lack conditions,
    so the numbers would be silently wrong.

    Args:
        cache: The opened cache.
        cache_dir: Its path, for the message.
        conditions: Whether the caller needs a ``conditions="all"`` cache.

    Raises:
        ConfigError: One line naming the cache and the command or preparation that fits it.
    """
    if conditions and not cache.table.has_conditions:
        raise ConfigError(
            f"{cache_dir} holds spinal canal ROIs only; prepare it with "
            "`lumbarssl prepare --conditions all` to grade all five conditions"
        )
    if not conditions and cache.table.has_conditions:
        raise ConfigError(
            f"{cache_dir} was prepared with --conditions all; a spinal canal grader (`lumbarssl "
            "finetune`, a DiscClassifier) trains and is scored on a spinal cache (`lumbarssl "
            "prepare` without --conditions); for all five conditions use `lumbarssl "
            "finetune-conditions`"
        )


def make_loader(
    dataset: Dataset[Any],
    config: StageConfig,
    *,
    batch_size: int,
    shuffle: bool,
    drop_last: bool = False,
    seed_offset: int = 0,
    deterministic: bool = False,
    epoch_in_index: bool = False,
) -> DataLoader[Any]:
    """A DataLoader with seeded order, worker defaults and, under torchrun, a sampler.

    Workers persist across epochs (no re-spawn per epoch) when nothing they draw can differ
    on resume: for a ``deterministic`` dataset (no random augmentation), and for one whose
    augmentation is keyed by the epoch (``epoch_in_index``): its indices come from an
    :class:`~lumbarssl.data.datasets.EpochKeyedSampler`, so each index carries its epoch to
    the workers. Workers of any other dataset are started afresh each epoch, so a resumed run
    re-seeds them as an uninterrupted one does.

    Args:
        dataset: The dataset.
        config: Stage config (seed, workers, device).
        batch_size: Samples per batch (per process under torchrun).
        shuffle: Shuffle every epoch.
        drop_last: Drop a last incomplete batch.
        seed_offset: Added to the seed so different loaders draw different streams.
        deterministic: The dataset draws no random numbers (keeps its workers alive).
        epoch_in_index: The dataset takes ``(epoch, index)`` items and keys its randomness
            by them (:class:`~lumbarssl.data.datasets.DiscROIDataset`; keeps its workers
            alive).

    Returns:
        The loader.
    """
    workers = config.runtime.num_workers
    if workers is None:
        workers = default_num_workers()
    generator = seeded_generator(config.seed + seed_offset)
    sampler: Sampler[Any] | None = None
    if is_distributed() and shuffle:
        sampler = DistributedSampler(
            dataset, shuffle=True, seed=config.seed + seed_offset, drop_last=drop_last
        )
    if epoch_in_index:
        if sampler is None:
            # The sampler DataLoader(shuffle=...) would build, on the same generator.
            sampler = (
                RandomSampler(dataset, generator=generator)  # type: ignore[arg-type]
                if shuffle
                else SequentialSampler(dataset)  # type: ignore[arg-type]
            )
        sampler = EpochKeyedSampler(sampler)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=workers,
        generator=generator,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=(deterministic or epoch_in_index) and workers > 0,
    )


class DeviceBatches:
    """An epoch's batches made on the device: what the trainer iterates in place of a loader.

    Positions come from an :class:`~lumbarssl.data.device_data.EpochSampler` (seeded by
    ``(seed, epoch)``, this process's shard under ``torchrun``); ``make_batch(positions,
    epoch)`` turns them into a batch on the device (a bank gather, plus any augmentation keyed
    by ``(seed, epoch, cache row)``). The trainer calls :meth:`set_epoch` through
    :attr:`sampler` before each epoch, as it does for a ``DistributedSampler``, so a resumed
    run makes exactly the batches of an uninterrupted one. With ``epoch`` fixed (validation),
    every pass gives the same batches.

    Args:
        sampler: Positions of each epoch.
        batch_size: Positions per batch.
        make_batch: ``(positions (B,) int64 on the device, epoch) -> batch``.
        device: Where the positions go (the bank's device).
        drop_last: Drop a last incomplete batch.
        epoch: Fixed epoch, never changed by :meth:`set_epoch` (validation views); ``None``
            follows the trainer.
    """

    #: Tells the trainer this iterable shards by rank (as a ``DistributedSampler`` does).
    shards_by_rank = True

    def __init__(
        self,
        sampler: EpochSampler,
        batch_size: int,
        make_batch: Callable[[Tensor, int], dict[str, Tensor]],
        *,
        device: torch.device,
        drop_last: bool = False,
        epoch: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.make_batch = make_batch
        self.device = device
        self.drop_last = drop_last
        self._sampler = sampler
        self._fixed_epoch = epoch
        self.epoch = 0 if epoch is None else epoch

    @property
    def sampler(self) -> DeviceBatches:
        """Itself: the trainer calls ``loader.sampler.set_epoch(epoch)``."""
        return self

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass the batches of ``epoch`` (ignored with a fixed epoch)."""
        if self._fixed_epoch is None:
            self.epoch = epoch

    def __len__(self) -> int:
        n = len(self._sampler)
        if self.drop_last:
            return n // self.batch_size
        return -(-n // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        epoch = self.epoch
        for positions in self._sampler.batches(
            epoch, self.batch_size, drop_last=self.drop_last, device=self.device
        ):
            yield self.make_batch(positions, epoch)


def use_device_data(config: StageConfig, nbytes: int) -> bool:
    """Whether a stage holds its data on the device (``runtime.device_data``).

    Args:
        config: The stage config (its device and ``device_data`` setting).
        nbytes: Bytes the data takes on the device.

    Returns:
        ``True`` for :class:`DeviceBatches` over a bank, ``False`` for a DataLoader.

    Raises:
        ConfigError: If ``device_data="on"`` and the data does not fit.
    """
    device = select_device(config.runtime.device)
    return resolve_device_data(config.runtime.device_data, nbytes, device)


def device_sampler(
    n: int, config: StageConfig, *, shuffle: bool, drop_last: bool = False, seed_offset: int = 0
) -> EpochSampler:
    """The :class:`~lumbarssl.data.device_data.EpochSampler` of a stage: its seed, its shard.

    Args:
        n: Items in the bank.
        config: The stage config (its seed).
        shuffle: Permute every epoch (training) or keep the order (validation).
        drop_last: Drop the tail that does not divide among the processes.
        seed_offset: Added to the seed, as in :func:`make_loader`.

    Returns:
        The sampler; under ``torchrun`` each process gets its shard, and without shuffling
        (validation, run on the main process only) the whole set.
    """
    if shuffle:
        return EpochSampler(n, seed=config.seed + seed_offset, shuffle=True, drop_last=drop_last)
    return EpochSampler(n, shuffle=False, rank=0, world_size=1)


def device_batch_pair(
    config: StageConfig,
    device: torch.device,
    train: tuple[int, Callable[[Tensor, int], dict[str, Tensor]]],
    val: tuple[int, Callable[[Tensor, int], dict[str, Tensor]]],
    *,
    batch_size: int,
    val_batch_size: int,
    drop_last: bool = True,
) -> tuple[DeviceBatches, DeviceBatches]:
    """Training and validation :class:`DeviceBatches` over two banks held on ``device``.

    Training is shuffled with the stage's seed (:func:`device_sampler`); validation keeps
    its order and a fixed epoch 0.

    Args:
        config: The stage config (its seed).
        device: The banks' device.
        train: ``(items, make_batch)`` of the training bank.
        val: ``(items, make_batch)`` of the validation bank.
        batch_size: Items per training batch.
        val_batch_size: Items per validation batch.
        drop_last: Drop the last incomplete training batch (and the shard tail).

    Returns:
        ``(train, val)``.
    """
    (n_train, make_train), (n_val, make_val) = train, val
    train_batches = DeviceBatches(
        device_sampler(n_train, config, shuffle=True, drop_last=drop_last),
        batch_size,
        make_train,
        device=device,
        drop_last=drop_last,
    )
    val_batches = DeviceBatches(
        device_sampler(n_val, config, shuffle=False),
        val_batch_size,
        make_val,
        device=device,
        epoch=0,
    )
    return train_batches, val_batches


def supervised_batch(bank: RoiBank, recipe: RoiRecipe, positions: Tensor) -> dict[str, Tensor]:
    """A batch of supervised ``DiscROIDataset`` items gathered from a bank on its device.

    The image is :meth:`RoiRecipe.network_input <lumbarssl.data.recipes.RoiRecipe.
    network_input>` of the stored ROIs, the input the dataset (and a served model) sees.

    Args:
        bank: The ROIs on the device.
        recipe: The ROI recipe.
        positions: int64 (B,) positions in the bank, on its device.

    Returns:
        ``"image"`` float32 (B, 1, S, S), ``"label"``, ``"level"``, ``"index"`` int64 (B,).
    """
    batch = bank.gather(positions)
    batch["image"] = recipe.network_input(batch.pop("roi"))
    return batch


def supervised_loaders(
    cache: PreparedCache,
    config: StageConfig,
    recipe: RoiRecipe,
    train_rows: Any,
    val_rows: Any,
    *,
    batch_size: int,
    val_batch_size: int,
) -> tuple[Any, Any]:
    """Training and validation batches of graded discs, deterministic inputs (fine-tuning).

    With ``runtime.device_data`` on (:func:`use_device_data`) the ROIs live on the device
    and batches are gathers there (:func:`supervised_batch`); otherwise DataLoaders over
    ``DiscROIDataset(..., "supervised")`` with persistent workers. Both give the same inputs
    (the recipe's) in the same kind of seeded order.

    Args:
        cache: The prepared cache.
        config: The stage config.
        recipe: The ROI recipe.
        train_rows: Cache rows of the training split.
        val_rows: Cache rows of the validation split.
        batch_size: Discs per training step (the last incomplete batch is dropped).
        val_batch_size: Discs per validation batch.

    Returns:
        ``(train, val)`` iterables of batches for :meth:`~lumbarssl.training.Trainer.fit`.
    """
    train_sel = RoiBank.select_rows(cache, train_rows, labeled_only=True)
    val_sel = RoiBank.select_rows(cache, val_rows, labeled_only=True)
    if use_device_data(config, RoiBank.nbytes_for(cache, len(train_sel) + len(val_sel))):
        device = select_device(config.runtime.device)
        train_bank = RoiBank.from_cache(cache, device, rows=train_sel)
        val_bank = RoiBank.from_cache(cache, device, rows=val_sel)

        def gather(bank: RoiBank) -> Callable[[Tensor, int], dict[str, Tensor]]:
            return lambda positions, epoch: supervised_batch(bank, recipe, positions)

        return device_batch_pair(
            config,
            device,
            (len(train_bank), gather(train_bank)),
            (len(val_bank), gather(val_bank)),
            batch_size=batch_size,
            val_batch_size=val_batch_size,
        )

    def dataset(rows: Any) -> DiscROIDataset:
        return DiscROIDataset(cache, "supervised", recipe=recipe, indices=rows)

    train_loader = make_loader(
        dataset(train_rows),
        config,
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        deterministic=True,
    )
    val_loader = make_loader(
        dataset(val_rows), config, batch_size=val_batch_size, shuffle=False, deterministic=True
    )
    return train_loader, val_loader


def adamw(params: Any, config: StageConfig, *, lr: float | None = None, weight_decay: float) -> Any:
    """AdamW with the fused kernel where the stage runs on a CPU or CUDA device.

    PyTorch uses its slow per-tensor loop on the CPU unless asked otherwise; the fused
    kernel computes the same update several times faster.

    Args:
        params: Parameters or parameter groups.
        config: The stage config (its device decides).
        lr: Learning rate (groups may carry their own).
        weight_decay: Decoupled weight decay.

    Returns:
        The optimizer.
    """
    fused = select_device(config.runtime.device).type in ("cpu", "cuda")
    kwargs: dict[str, Any] = {"weight_decay": weight_decay, "fused": fused}
    if lr is not None:
        kwargs["lr"] = lr
    return torch.optim.AdamW(params, **kwargs)


def trainer_config(config: StageConfig, **stage: Any) -> TrainerConfig:
    """The :class:`~lumbarssl.training.TrainerConfig` of a stage.

    Args:
        config: The stage config (its runtime settings and output directory).
        **stage: Stage-specific trainer fields (epochs, monitor, clipping, ...).

    Returns:
        The trainer config writing into ``config.out_dir``.
    """
    allowed = {"lr" if name.endswith("lr") else name for name in config.allow_change}
    return TrainerConfig(
        out_dir=config.out_dir,
        runtime=config.runtime,
        loss_guard=config.loss_guard,
        loss_guard_factor=config.loss_guard_factor,
        allow_change=tuple(sorted(allowed & set(RESUME_CHANGEABLE))),
        **stage,
    )


def prepare_out_dir(config: StageConfig) -> Path:
    """Create the output directory and save the stage config in it (main process only).

    Args:
        config: The stage config.

    Returns:
        The output directory.

    Raises:
        ValueError: If ``config.resume`` is set and the directory holds a run whose saved
            config differs in a setting ``config.allow_change`` does not name (the message
            names the differing fields and how to allow the changeable ones).
    """
    out = Path(config.out_dir)
    saved_path = out / STAGE_CONFIG_FILE
    if config.resume and saved_path.exists():
        # Compare setting by setting, whether the saved file nests the runtime fields or
        # (written by an earlier release) holds them flat.
        saved = type(config).flatten_dict(json.loads(saved_path.read_text()))
        current = type(config).flatten_dict(json.loads(json.dumps(config.to_dict())))
        ignored = {"resume", "progress", "num_workers", "device", "allow_change"}
        changed = sorted(
            k
            for k in set(saved) | set(current)
            # A setting newer than the saved file counts as unchanged at its default.
            if k not in ignored
            and saved.get(k) != current.get(k)
            and (k in saved or current.get(k) != _default(type(config), k))
        )
        refused = [k for k in changed if k not in config.allow_change]
        if refused:
            details = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in refused)
            changeable = config.changeable_on_resume()
            fixed = [k for k in refused if k not in changeable]
            remedy = (
                f"{', '.join(fixed)} cannot change on resume: use a new out_dir or the saved "
                "settings"
                if fixed
                else "to apply and record the change in history.jsonl, add "
                f"--allow-change {','.join(refused)}"
            )
            raise ConfigError(
                f"cannot resume {out}: it holds a run with other settings ({details}); {remedy}"
            )
    if is_main_process():
        out.mkdir(parents=True, exist_ok=True)
        config.save(saved_path)
    return out


def _default(cls: type[StageConfig], name: str) -> object:
    """The default of a (possibly nested, flattened) setting, ``None`` if it has none."""
    flat = cls.flatten_dict(json.loads(json.dumps(_defaults_of(cls))))
    return flat.get(name)


def _defaults_of(cls: type[StageConfig]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if field.default is not dataclasses.MISSING:
            values[field.name] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            values[field.name] = field.default_factory()
    return {k: v.to_dict() if hasattr(v, "to_dict") else v for k, v in values.items()}


def export_best(
    model: nn.Module,
    best_checkpoint: Path | None,
    out_dir: Path,
    metadata: dict[str, Any],
    recipe: Recipe,
) -> Path:
    """Load the best epoch's weights into ``model`` and save a model-only checkpoint.

    Args:
        model: The bare (not DDP-wrapped) model of the stage.
        best_checkpoint: The trainer's ``best.pt`` (``None`` keeps the current weights).
        out_dir: Where ``model.pt`` goes.
        metadata: Provenance stored with the weights.
        recipe: The preprocessing recipe the model was trained with, stored under
            :data:`~lumbarssl.models.checkpoint.RECIPE_KEY`.

    Returns:
        Path of ``model.pt``.
    """
    if best_checkpoint is not None and best_checkpoint.exists():
        state = load_training_state(best_checkpoint)
        model.load_state_dict(state["model"])
    path = out_dir / MODEL_FILE
    if is_main_process():
        save_checkpoint(path, model, metadata=metadata, recipe=recipe_to_metadata(recipe))
    return path


def base_metadata(config: StageConfig, stage: str) -> dict[str, Any]:
    """Provenance recorded in every checkpoint and report of a stage."""
    return {
        "stage": stage,
        "data_source": config.data_source,
        "profile": config.profile,
        "seed": config.seed,
        "split": config.split,
        "cache_dir": str(config.cache_dir),
    }


def write_json(path: Path, data: Any) -> None:
    """Write indented JSON (main process only), replacing the file atomically."""
    if not is_main_process():
        return
    payload = (json.dumps(data, indent=2, allow_nan=True) + "\n").encode()

    def write(handle: BinaryIO) -> None:
        handle.write(payload)

    atomic_write(path, write)
