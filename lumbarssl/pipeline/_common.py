"""Plumbing shared by the stages: splits, loaders, trainer settings, exported checkpoints."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lumbarssl._core.atomic import atomic_write
from lumbarssl.data.cache import PreparedCache
from lumbarssl.data.recipes import Recipe, recipe_to_metadata

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


def make_loader(
    dataset: Dataset[Any],
    config: StageConfig,
    *,
    batch_size: int,
    shuffle: bool,
    drop_last: bool = False,
    seed_offset: int = 0,
) -> DataLoader[Any]:
    """A DataLoader with seeded order, worker defaults and, under torchrun, a sampler.

    Args:
        dataset: The dataset.
        config: Stage config (seed, workers, device).
        batch_size: Samples per batch (per process under torchrun).
        shuffle: Shuffle every epoch.
        drop_last: Drop a last incomplete batch.
        seed_offset: Added to the seed so different loaders draw different streams.

    Returns:
        The loader.
    """
    workers = config.runtime.num_workers
    if workers is None:
        workers = default_num_workers()
    generator = seeded_generator(config.seed + seed_offset)
    sampler: DistributedSampler[Any] | None = None
    if is_distributed() and shuffle:
        sampler = DistributedSampler(
            dataset, shuffle=True, seed=config.seed + seed_offset, drop_last=drop_last
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=workers,
        generator=generator,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
    )


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
