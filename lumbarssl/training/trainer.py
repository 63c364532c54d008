"""A thin training loop shared by the paper's three stages.

Contrastive pretraining (Sec. 4.3), supervised fine-tuning (Sec. 4.4) and the localizer
(Sec. 4.5) differ only in their forward pass and loss, which the caller passes in as a
``train_step`` function; the :class:`Trainer` owns everything around it: devices and mixed
precision, gradient clipping, schedulers, validation, best/last checkpoints, early stopping,
exact resume, the history file, progress display and ``torchrun`` multi-process training.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Literal, TextIO, TypeAlias, TypeVar, get_args, overload

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau
from torch.utils.data.distributed import DistributedSampler

from lumbarssl._core.config import ConfigBase
from lumbarssl.errors import OutputExistsError, TrainingDivergedError
from lumbarssl.training._progress import ProgressReporter
from lumbarssl.training.checkpoint import (
    CHECKPOINT_FORMAT_VERSION,
    RngState,
    TrainerProgress,
    TrainingState,
    atomic_save,
    capture_rng_state,
    load_training_state,
    restore_rng_state,
)
from lumbarssl.training.device import (
    autocast_settings,
    configure_backends,
    maybe_compile,
    move_to_device,
    select_device,
)
from lumbarssl.training.distributed import (
    _all_gather_object,
    _all_reduce_sum,
    _broadcast_object,
    barrier,
    get_rank,
    get_world_size,
    is_distributed,
    is_main_process,
    wrap_ddp,
)
from lumbarssl.training.history import (
    TRAIN_LOSS,
    VAL_PREFIX,
    EpochRecord,
    append_history,
    write_history,
)
from lumbarssl.training.runtime import RuntimeConfig

__all__ = [
    "BEST_CHECKPOINT",
    "CONFIG_FILE",
    "HISTORY_FILE",
    "LAST_CHECKPOINT",
    "EvaluateFn",
    "MonitorMode",
    "TrainStep",
    "Trainer",
    "TrainerConfig",
    "TrainingDivergedError",
]

BatchT = TypeVar("BatchT")

TrainStep: TypeAlias = Callable[[nn.Module, BatchT], Tensor]
"""The forward pass and scalar loss of one batch, called as ``train_step(model, batch)``."""

EvaluateFn: TypeAlias = Callable[[nn.Module, Iterable[BatchT]], Mapping[str, float]]
"""Validation metrics ``{name: value}`` over a whole loader, from ``evaluate(model, batches)``."""

MonitorMode = Literal["min", "max"]
"""Whether a smaller (``"min"``) or larger (``"max"``) monitored value is better."""

LAST_CHECKPOINT = "last.pt"
"""Training state after the latest completed epoch, inside ``out_dir``."""
BEST_CHECKPOINT = "best.pt"
"""Training state after the epoch with the best monitored metric, inside ``out_dir``."""
HISTORY_FILE = "history.jsonl"
"""One JSON object per completed epoch, inside ``out_dir``."""
CONFIG_FILE = "trainer_config.json"
"""The :class:`TrainerConfig` of the run, inside ``out_dir``."""

_MONITOR_MODES: tuple[str, ...] = get_args(MonitorMode)
_TC = TypeVar("_TC", bound="TrainerConfig")


@dataclass(frozen=True, kw_only=True)
class TrainerConfig(ConfigBase):
    """Settings of a training run, saved as ``trainer_config.json`` beside its outputs.

    Stage-specific hyper-parameters (epochs, schedules, clipping) get the paper's values from
    the command line's configs; the defaults here are neutral.

    Attributes:
        epochs: Total number of epochs (a resumed run continues up to this number).
        out_dir: Directory for checkpoints, history and this config.
        runtime: Device, mixed precision, memory format, compilation and progress display
            (:class:`~lumbarssl.training.RuntimeConfig`, the same object a stage config holds).
            The flat keywords ``device=``, ``amp=``, ... of earlier releases still work, with a
            :class:`DeprecationWarning`.
        cudnn_benchmark: Let cuDNN pick the fastest convolution algorithms (CUDA only).
        max_grad_norm: Clip the global gradient norm to this value; ``None`` disables clipping.
            The paper clips during contrastive pretraining (Sec. 4.3, 5.1).
        monitor: Metric that selects ``best.pt`` and drives early stopping: ``"train_loss"`` or
            ``"val_<name>"`` for a metric ``name`` returned by ``evaluate``. The paper monitors
            the validation loss for pretraining and balanced accuracy for fine-tuning (Sec. 4.6).
        monitor_mode: ``"min"`` if smaller is better, ``"max"`` if larger is better.
        scheduler_metric: Metric a :class:`~torch.optim.lr_scheduler.ReduceLROnPlateau` is
            stepped on (its own ``mode`` says whether smaller or larger is better); ``None``
            uses ``monitor``. Only valid with that scheduler.
        early_stopping_patience: Stop after this many epochs without improvement of
            ``monitor``; ``None`` never stops early.
        log_every: Steps between plain progress lines (when not drawing a bar).
    """

    epochs: int
    out_dir: str
    runtime: RuntimeConfig = RuntimeConfig()
    cudnn_benchmark: bool = True
    max_grad_norm: float | None = None
    monitor: str = "val_loss"
    monitor_mode: MonitorMode = "min"
    scheduler_metric: str | None = None
    early_stopping_patience: int | None = None
    log_every: int = 50

    def __post_init__(self) -> None:
        for name in ("epochs", "log_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.out_dir, str) or not self.out_dir:
            raise ValueError(f"out_dir must be a non-empty path string, got {self.out_dir!r}")
        if not isinstance(self.runtime, RuntimeConfig):
            raise ValueError(f"runtime must be a RuntimeConfig, got {self.runtime!r}")
        if self.monitor_mode not in _MONITOR_MODES:
            raise ValueError(
                f"monitor_mode must be one of {_MONITOR_MODES}, got {self.monitor_mode!r}"
            )
        if self.max_grad_norm is not None and not (
            isinstance(self.max_grad_norm, int | float)
            and not isinstance(self.max_grad_norm, bool)
            and math.isfinite(self.max_grad_norm)
            and self.max_grad_norm > 0
        ):
            raise ValueError(
                f"max_grad_norm must be a finite number > 0 or None, got {self.max_grad_norm!r}"
            )
        patience = self.early_stopping_patience
        if patience is not None and (
            isinstance(patience, bool) or not isinstance(patience, int) or patience < 1
        ):
            raise ValueError(
                f"early_stopping_patience must be an integer >= 1 or None, got {patience!r}"
            )
        for name in ("monitor", "scheduler_metric"):
            value = getattr(self, name)
            if value is not None and not _is_metric_name(value):
                raise ValueError(f"{name} must be 'train_loss' or 'val_<metric>', got {value!r}")
        if not isinstance(self.cudnn_benchmark, bool):
            raise ValueError(f"cudnn_benchmark must be a bool, got {self.cudnn_benchmark!r}")

    @overload
    def to_json(self) -> str: ...

    @overload
    def to_json(self, path: str | Path) -> None: ...

    def to_json(self, path: str | Path | None = None) -> str | None:
        """Return the config as one line of JSON (:class:`~lumbarssl._core.config.ConfigBase`).

        Args:
            path: Deprecated: given a path, write the file instead, as :meth:`save` does.

        Returns:
            The JSON text, or ``None`` when ``path`` is given.
        """
        if path is None:
            return super().to_json()
        warnings.warn(
            "TrainerConfig.to_json(path) is deprecated; use TrainerConfig.save(path)",
            DeprecationWarning,
            stacklevel=2,
        )
        self.save(path)
        return None

    @classmethod
    def from_json(cls: type[_TC], text: str | Path) -> _TC:
        """Rebuild a config from :meth:`to_json` output.

        Args:
            text: A JSON object. Deprecated: a :class:`~pathlib.Path` (or a path string) is
                read as :meth:`load` does.

        Returns:
            The config.

        Raises:
            ConfigError: If the text is not a JSON object or names an unknown key.
        """
        if isinstance(text, Path) or not text.lstrip().startswith("{"):
            warnings.warn(
                "TrainerConfig.from_json(path) is deprecated; use TrainerConfig.load(path)",
                DeprecationWarning,
                stacklevel=2,
            )
            return cls.load(text)
        return super().from_json(text)


def _is_metric_name(name: object) -> bool:
    return isinstance(name, str) and (
        name == TRAIN_LOSS or (name.startswith(VAL_PREFIX) and len(name) > len(VAL_PREFIX))
    )


class Trainer(Generic[BatchT]):
    """Trains a model for a number of epochs: a thin loop, not a framework.

    Each step moves the batch to the device, runs ``train_step`` under autocast, checks that
    the loss is finite, back-propagates (through a gradient scaler for fp16), optionally clips
    the gradient norm and steps the optimizer. Each epoch then runs validation, steps the
    scheduler (:class:`~torch.optim.lr_scheduler.ReduceLROnPlateau` on a validation metric, any
    other scheduler once per epoch, e.g. ``CosineAnnealingLR`` as in Sec. 4.3), writes
    ``best.pt`` when the monitored metric improves, always writes ``last.pt`` (atomically, with
    every RNG state so that :meth:`fit` with ``resume=True`` continues bit-exactly), appends a
    line to ``history.jsonl``, and stops early when asked.

    Under ``torchrun`` (after :func:`~lumbarssl.training.init_distributed`) the model is wrapped
    in :class:`~torch.nn.parallel.DistributedDataParallel`; rank 0 alone validates, logs and
    writes files, and the train loss and throughput are aggregated over processes.

    Args:
        model: The model to train. It is moved to the configured device (in place, so an
            optimizer built on its parameters stays valid).
        optimizer: The optimizer over ``model``'s parameters.
        train_step: ``train_step(model, batch) -> loss`` with the batch already on the device
            and a scalar loss. It receives the training model, possibly wrapped in DDP and/or
            compiled: call it rather than reaching into its attributes.
        config: Run settings.
        scheduler: Learning-rate scheduler stepped once per epoch, or ``None``.
        evaluate: ``evaluate(model, batches) -> {name: value}`` computing validation metrics
            over an iterable of device batches; runs in eval mode, without gradients, under
            autocast. Metrics appear as ``val_<name>``. By default the validation metric is
            ``{"loss": mean train_step loss}``.
        batch_size_fn: Number of samples in a (CPU) batch, for the loss average and images/s;
            by default the leading dimension of the first tensor found in the batch.
        stream: Where progress goes; ``sys.stderr`` by default.

    Raises:
        ValueError: If the scheduler and the config do not fit together.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Optimizer,
        *,
        train_step: TrainStep[BatchT],
        config: TrainerConfig,
        scheduler: LRScheduler | None = None,
        evaluate: EvaluateFn[BatchT] | None = None,
        batch_size_fn: Callable[[BatchT], int] | None = None,
        stream: TextIO | None = None,
    ) -> None:
        if config.scheduler_metric is not None and not isinstance(scheduler, ReduceLROnPlateau):
            raise ValueError(
                f"scheduler_metric={config.scheduler_metric!r} only applies to ReduceLROnPlateau, "
                f"but the scheduler is {type(scheduler).__name__}"
            )
        self.config = config
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.train_step = train_step
        self.evaluate: EvaluateFn[BatchT] = evaluate if evaluate is not None else self._mean_loss
        self.batch_size_fn: Callable[[BatchT], int] = batch_size_fn or _leading_dim
        self.out_dir = Path(config.out_dir)
        self.device = select_device(config.runtime.device)
        configure_backends(self.device, cudnn_benchmark=config.cudnn_benchmark)
        self.autocast = autocast_settings(self.device, config.runtime.amp)
        self.scaler = self.autocast.grad_scaler()
        self._memory_format = (
            torch.channels_last if config.runtime.use_channels_last(self.device) else None
        )
        model.to(self.device)
        if self._memory_format is not None:
            model.to(memory_format=self._memory_format)
        self.model = model
        train_model: nn.Module = wrap_ddp(model, self.device) if is_distributed() else model
        self._train_model = maybe_compile(
            train_model, config.runtime.compile, config.runtime.compile_mode
        )
        self._history: list[EpochRecord] = []
        self._progress = TrainerProgress(
            best_value=None, best_epoch=None, bad_epochs=0, stopped_early=False
        )
        self._reporter = ProgressReporter(
            config.runtime.progress if is_main_process() else "off",
            epochs=config.epochs,
            log_every=config.log_every,
            stream=stream,
        )

    @property
    def history(self) -> list[EpochRecord]:
        """The records of the completed epochs (a copy)."""
        return list(self._history)

    @property
    def last_checkpoint(self) -> Path:
        """Path of ``last.pt``."""
        return self.out_dir / LAST_CHECKPOINT

    @property
    def best_checkpoint(self) -> Path:
        """Path of ``best.pt``."""
        return self.out_dir / BEST_CHECKPOINT

    @property
    def history_file(self) -> Path:
        """Path of ``history.jsonl``."""
        return self.out_dir / HISTORY_FILE

    @property
    def scheduler_metric(self) -> str | None:
        """The metric a ReduceLROnPlateau scheduler is stepped on, ``None`` for others."""
        if isinstance(self.scheduler, ReduceLROnPlateau):
            return self.config.scheduler_metric or self.config.monitor
        return None

    def fit(
        self,
        train_loader: Iterable[BatchT],
        val_loader: Iterable[BatchT] | None = None,
        *,
        resume: bool = False,
    ) -> list[EpochRecord]:
        """Train up to ``config.epochs`` epochs.

        Args:
            train_loader: Training batches (a DataLoader; under ``torchrun`` with a
                :class:`~torch.utils.data.distributed.DistributedSampler`). ``set_epoch`` is
                called on its sampler before each epoch.
            val_loader: Validation batches, or ``None`` to skip validation.
            resume: Continue from ``out_dir/last.pt``. Given the same data, model, optimizer
                and scheduler construction, the result is bit-identical on CPU to a run that
                was never interrupted (interruptions lose at most the unfinished epoch). With
                ``persistent_workers=True`` in the loader, workers are re-seeded on resume, so
                augmentations drawn in them differ from the uninterrupted run.

        Returns:
            The records of all completed epochs, resumed ones included.

        Raises:
            ValueError: If a metric the config refers to is not produced (e.g. ``monitor``
                names a validation metric but ``val_loader`` is ``None``).
            FileExistsError: If ``resume`` is false but ``out_dir`` already holds ``last.pt``.
            FileNotFoundError: If ``resume`` is true but there is no ``last.pt``.
            TrainingDivergedError: If the loss becomes NaN or infinite.
        """
        self._check_metrics_available(val_loader)
        generators = _loader_generators(train_loader)
        if resume:
            start = self._restore(generators)
        else:
            if self.last_checkpoint.exists():
                raise OutputExistsError(
                    f"{self.last_checkpoint} already exists; pass resume=True to continue that "
                    "run or choose another out_dir"
                )
            start = 0
        if is_distributed() and not _has_distributed_sampler(train_loader):
            warnings.warn(
                "training under torchrun without a DistributedSampler: every process will see "
                "the whole dataset each epoch",
                stacklevel=2,
            )
        if is_main_process():
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.config.save(self.out_dir / CONFIG_FILE)
            write_history(self.history_file, self._history)

        try:
            if self._progress["stopped_early"]:
                self._reporter.message(
                    f"{self.last_checkpoint} ended with early stopping; nothing to resume"
                )
                start = self.config.epochs
            for epoch in range(start + 1, self.config.epochs + 1):
                if self._run_epoch(epoch, train_loader, val_loader, generators):
                    break
        finally:
            self._reporter.close()
        barrier()
        return self.history

    def _run_epoch(
        self,
        epoch: int,
        train_loader: Iterable[BatchT],
        val_loader: Iterable[BatchT] | None,
        generators: list[torch.Generator],
    ) -> bool:
        """Train, validate, schedule and checkpoint one epoch; return whether to stop."""
        _set_sampler_epoch(train_loader, epoch - 1)
        lrs = tuple(float(group["lr"]) for group in self.optimizer.param_groups)
        started = time.perf_counter()
        train_loss, samples = self._train_epoch(epoch, train_loader)
        train_seconds = time.perf_counter() - started
        val = self._validate(val_loader) if val_loader is not None else {}
        record = EpochRecord(
            epoch=epoch,
            train_loss=train_loss,
            lr=lrs,
            seconds=time.perf_counter() - started,
            images_per_s=samples / train_seconds if train_seconds > 0 else math.nan,
            val=val,
        )
        metric_name = self.scheduler_metric
        if isinstance(self.scheduler, ReduceLROnPlateau) and metric_name is not None:
            self.scheduler.step(self._metric(record, metric_name, "scheduler_metric"))
        elif self.scheduler is not None:
            self.scheduler.step()

        value = self._metric(record, self.config.monitor, "monitor")
        best = self._progress["best_value"]
        improved = math.isfinite(value) and (
            best is None or (value < best if self.config.monitor_mode == "min" else value > best)
        )
        if improved:
            self._progress["best_value"] = value
            self._progress["best_epoch"] = epoch
            self._progress["bad_epochs"] = 0
            record = dataclasses.replace(record, is_best=True)
        else:
            self._progress["bad_epochs"] += 1
        patience = self.config.early_stopping_patience
        stop = patience is not None and self._progress["bad_epochs"] >= patience
        self._progress["stopped_early"] = stop
        self._history.append(record)

        state = self._state(epoch, _all_gather_object(capture_rng_state(generators)))
        if is_main_process():
            if improved:
                atomic_save(state, self.best_checkpoint)
            atomic_save(state, self.last_checkpoint)
            append_history(self.history_file, record)
        self._reporter.end_epoch(record)
        if stop:
            self._reporter.message(
                f"early stopping: {self.config.monitor} did not improve for {patience} epochs "
                f"(best {self._progress['best_value']} at epoch {self._progress['best_epoch']})"
            )
        return stop

    def _train_epoch(self, epoch: int, loader: Iterable[BatchT]) -> tuple[float, int]:
        """Run the optimisation steps of one epoch; return (mean loss, samples), all ranks."""
        model = self._train_model
        model.train()
        total = len(loader) if isinstance(loader, Sized) else None
        self._reporter.start_epoch(epoch, total)
        loss_sum = 0.0
        samples = 0
        for step, cpu_batch in enumerate(loader, start=1):
            size = self.batch_size_fn(cpu_batch)
            batch = move_to_device(cpu_batch, self.device, memory_format=self._memory_format)
            with self.autocast.autocast():
                loss = self.train_step(model, batch)
            if loss.dim() != 0:
                raise ValueError(
                    f"train_step must return a scalar loss, got shape {tuple(loss.shape)}"
                )
            value = loss.item()
            if not math.isfinite(value):
                last = self.last_checkpoint if self.last_checkpoint.exists() else None
                raise TrainingDivergedError(epoch=epoch, step=step, loss=value, checkpoint=last)
            self.optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(self.scaler.scale(loss))
            if self.config.max_grad_norm is not None:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            loss_sum += value * size
            samples += size
            self._reporter.step(step, value, float(self.optimizer.param_groups[0]["lr"]))
        if is_distributed():
            totals = torch.tensor([loss_sum, samples], dtype=torch.float64, device=self.device)
            loss_sum, global_samples = _all_reduce_sum(totals).tolist()
            samples = int(global_samples)
        return (loss_sum / samples if samples > 0 else math.nan), samples

    def _validate(self, loader: Iterable[BatchT]) -> dict[str, float]:
        """Evaluate on rank 0 and share the metrics so every rank takes the same decisions."""
        metrics: dict[str, float] = {}
        if is_main_process():
            self.model.eval()
            try:
                with torch.no_grad(), self.autocast.autocast():
                    result = self.evaluate(self.model, _DeviceBatches(loader, self))
                metrics = {str(name): float(value) for name, value in result.items()}
            finally:
                self.model.train()
        return _broadcast_object(metrics)

    def _mean_loss(self, model: nn.Module, batches: Iterable[BatchT]) -> dict[str, float]:
        """Default ``evaluate``: the sample-weighted mean of ``train_step`` over the batches."""
        loss_sum = 0.0
        samples = 0
        for batch in batches:
            size = self.batch_size_fn(batch)
            loss_sum += self.train_step(model, batch).item() * size
            samples += size
        return {"loss": loss_sum / samples if samples > 0 else math.nan}

    def _metric(self, record: EpochRecord, name: str, option: str) -> float:
        try:
            return record.metric(name)
        except KeyError as err:
            raise ValueError(f"{option}={name!r} cannot be evaluated: {err.args[0]}") from None

    def _check_metrics_available(self, val_loader: Iterable[BatchT] | None) -> None:
        if val_loader is not None:
            return
        for option, name in (
            ("monitor", self.config.monitor),
            ("scheduler_metric", self.scheduler_metric),
        ):
            if name is not None and name != TRAIN_LOSS:
                raise ValueError(
                    f"{option}={name!r} is a validation metric but fit() got no val_loader; "
                    "pass one or use 'train_loss'"
                )

    def _state(self, epoch: int, rng: list[RngState]) -> TrainingState:
        scaler = self.scaler.state_dict() if self.scaler.is_enabled() else None
        return TrainingState(
            format_version=CHECKPOINT_FORMAT_VERSION,
            epoch=epoch,
            model=self.model.state_dict(),
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict() if self.scheduler is not None else None,
            scaler=scaler,
            rng=rng,
            history=[record.to_dict() for record in self._history],
            config=self.config.to_dict(),
            progress=TrainerProgress(**self._progress),
        )

    def _restore(self, generators: list[torch.Generator]) -> int:
        """Load ``last.pt`` into the model, optimizer, ...; return its epoch."""
        state = load_training_state(self.last_checkpoint, map_location=self.device)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if (self.scheduler is None) != (state["scheduler"] is None):
            raise ValueError(
                f"{self.last_checkpoint} was written "
                f"{'without' if state['scheduler'] is None else 'with'} a scheduler but this "
                f"Trainer has {type(self.scheduler).__name__ if self.scheduler else 'none'}"
            )
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler.is_enabled() and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        self._history = [EpochRecord.from_dict(record) for record in state["history"]]
        self._progress = TrainerProgress(**state["progress"])
        rng = state["rng"]
        if len(rng) != get_world_size():
            warnings.warn(
                f"{self.last_checkpoint} was written by {len(rng)} process(es), this run has "
                f"{get_world_size()}; every process restores rank 0's random state",
                stacklevel=3,
            )
        restore_rng_state(rng[get_rank() if len(rng) == get_world_size() else 0], generators)
        self._reporter.message(f"resumed from {self.last_checkpoint} after epoch {state['epoch']}")
        return state["epoch"]


class _DeviceBatches(Generic[BatchT]):
    """Iterates a loader, moving each batch to the trainer's device; keeps ``len``."""

    def __init__(self, loader: Iterable[BatchT], trainer: Trainer[BatchT]) -> None:
        self._loader = loader
        self._device = trainer.device
        self._memory_format = trainer._memory_format

    def __iter__(self) -> Iterator[BatchT]:
        for batch in self._loader:
            yield move_to_device(batch, self._device, memory_format=self._memory_format)

    def __len__(self) -> int:
        if not isinstance(self._loader, Sized):
            raise TypeError("the validation loader has no length")
        return len(self._loader)


def _leading_dim(batch: object) -> int:
    """Leading dimension of the first tensor in a nested batch."""
    tensor = _first_tensor(batch)
    if tensor is None or tensor.dim() == 0:
        raise ValueError(
            "cannot infer the batch size: the batch holds no tensor with a batch dimension; "
            "pass batch_size_fn to the Trainer"
        )
    return int(tensor.shape[0])


def _first_tensor(obj: object) -> Tensor | None:
    if isinstance(obj, Tensor):
        return obj
    values: Iterable[object]
    if isinstance(obj, Mapping):
        values = obj.values()
    elif isinstance(obj, list | tuple):
        values = obj
    else:
        return None
    for value in values:
        found = _first_tensor(value)
        if found is not None:
            return found
    return None


def _samplers(loader: object) -> list[object]:
    batch_sampler = getattr(loader, "batch_sampler", None)
    candidates = [
        getattr(loader, "sampler", None),
        batch_sampler,
        getattr(batch_sampler, "sampler", None),
    ]
    unique: dict[int, object] = {}
    for candidate in candidates:
        if candidate is not None:
            unique.setdefault(id(candidate), candidate)
    return list(unique.values())


def _set_sampler_epoch(loader: object, epoch: int) -> None:
    """Call ``set_epoch`` on the loader's samplers (DistributedSampler reshuffles with it)."""
    for sampler in _samplers(loader):
        set_epoch = getattr(sampler, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)


def _has_distributed_sampler(loader: object) -> bool:
    return any(
        isinstance(sampler, DistributedSampler) or getattr(sampler, "shards_by_rank", False)
        for sampler in _samplers(loader)
    )


def _loader_generators(loader: object) -> list[torch.Generator]:
    """The generators that decide a loader's shuffle and worker seeds, without duplicates."""
    found: dict[int, torch.Generator] = {}
    for owner in [loader, *_samplers(loader)]:
        generator = getattr(owner, "generator", None)
        if isinstance(generator, torch.Generator):
            found.setdefault(id(generator), generator)
    return list(found.values())
