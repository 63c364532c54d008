"""A thin training loop shared by the paper's three stages.

Contrastive pretraining (Sec. 4.3), supervised fine-tuning (Sec. 4.4) and the localizer
(Sec. 4.5) differ only in their forward pass and loss, which the caller passes in as a
``train_step`` function; the :class:`Trainer` owns everything around it: devices and mixed
precision, gradient clipping, schedulers, validation, best/last checkpoints, early stopping,
exact resume, the history file, progress display and ``torchrun`` multi-process training.
"""

from __future__ import annotations

import dataclasses
import hashlib
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

from lumbarssl._core.atomic import atomic_duplicate
from lumbarssl._core.config import ConfigBase
from lumbarssl.errors import ConfigError, OutputExistsError, TrainingDivergedError
from lumbarssl.training._background import BackgroundWriter, host_snapshot
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
    "LOSS_GUARD_FACTOR",
    "RESUME_CHANGEABLE",
    "EvaluateFn",
    "LossGuard",
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

LossGuard = Literal["warn", "stop", "off"]
"""What the loss guard does when an epoch's loss is absurd: warn, stop the run, nothing."""

LOSS_GUARD_FACTOR = 1e3
"""Default factor over the first epoch's training loss that the loss guard calls absurd."""

RESUME_CHANGEABLE: tuple[str, ...] = (
    "epochs",
    "lr",
    "max_grad_norm",
    "early_stopping_patience",
    "loss_guard",
    "loss_guard_factor",
)
"""Settings a resumed run may change when ``allow_change`` names them (``"lr"``: the
optimizer's learning rates, every parameter group); every change is recorded in the history."""

# Settings that do not shape the training (or name the run's place), never compared on resume.
_NOT_COMPARED = frozenset(
    {
        "out_dir",
        "runtime",
        "log_every",
        "allow_change",
        "cudnn_benchmark",
        "background_checkpoints",
    }
)
_LOSS_GUARDS: tuple[str, ...] = get_args(LossGuard)

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


#: Steps between host reads of the training loss on an accelerator (see
#: :attr:`TrainerConfig.loss_check_every`): one wait for the device per this many steps.
ACCELERATOR_LOSS_CHECK_EVERY = 25


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
        loss_guard: What to do when an epoch's training loss is finite but more than
            ``loss_guard_factor`` times the first epoch's (in absolute value): ``"warn"``
            (a :class:`RuntimeWarning`), ``"stop"`` (:class:`~lumbarssl.errors.
            TrainingDivergedError` before that epoch's checkpoint is written) or ``"off"``.
        loss_guard_factor: The factor, > 1 (default :data:`LOSS_GUARD_FACTOR`).
        allow_change: Settings of :data:`RESUME_CHANGEABLE` that ``fit(resume=True)`` may
            find changed from the checkpoint's run; the change is applied and recorded in
            the next epoch's history record. Any other difference is refused.
        loss_check_every: Steps between reads of the training loss on the host (the
            divergence check and the progress display). Reading a loss waits for the
            accelerator, so ``None`` reads every step on the CPU and every
            :data:`ACCELERATOR_LOSS_CHECK_EVERY` steps elsewhere (the losses in between are
            kept on the device and checked together: a non-finite loss is still reported
            with its own step, but the optimizer has taken the steps up to the check; the
            checkpoint on disk is the last good one either way).
        background_checkpoints: Write ``last.pt``, ``best.pt`` and the history line in a
            background thread, so that the next epoch's steps do not wait for serialisation
            and ``fsync``: the state is first copied to host memory (a device-to-host copy on
            an accelerator, a clone on the CPU), so the files hold exactly the state at the
            end of the epoch. At most one write is in flight; a failed write (e.g.
            :class:`~lumbarssl.errors.DiskFullError`) is raised in the training thread at the
            next step or when :meth:`Trainer.fit` ends, and every write has reached the disk
            before :meth:`~Trainer.fit` returns or raises. ``False`` writes in the training
            thread, as before. Never changes the training, so a resumed run may change it.
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
    loss_guard: LossGuard = "warn"
    loss_guard_factor: float = LOSS_GUARD_FACTOR
    allow_change: tuple[str, ...] = ()
    loss_check_every: int | None = None
    background_checkpoints: bool = True

    def __post_init__(self) -> None:
        if self.loss_check_every is not None and (
            isinstance(self.loss_check_every, bool)
            or not isinstance(self.loss_check_every, int)
            or self.loss_check_every < 1
        ):
            raise ValueError(
                f"loss_check_every must be an integer >= 1 or None, got {self.loss_check_every!r}"
            )
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
        for flag in ("cudnn_benchmark", "background_checkpoints"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"{flag} must be a bool, got {getattr(self, flag)!r}")
        if self.loss_guard not in _LOSS_GUARDS:
            raise ValueError(f"loss_guard must be one of {_LOSS_GUARDS}, got {self.loss_guard!r}")
        factor = self.loss_guard_factor
        if isinstance(factor, bool) or not isinstance(factor, int | float) or not factor > 1:
            raise ValueError(f"loss_guard_factor must be a number > 1, got {factor!r}")
        object.__setattr__(self, "allow_change", tuple(self.allow_change))
        unknown = [name for name in self.allow_change if name not in RESUME_CHANGEABLE]
        if unknown:
            raise ValueError(
                f"allow_change names {unknown}; only {list(RESUME_CHANGEABLE)} may change on resume"
            )

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
        for group in optimizer.param_groups:
            # Every group records its starting rate, as LRScheduler subclasses do, so a resume
            # compares the configured rates with the saved run's starting ones even after
            # ReduceLROnPlateau (which keeps no initial_lr) lowered the current ones.
            group.setdefault("initial_lr", group["lr"])
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
        self._writer = BackgroundWriter()
        self._history: list[EpochRecord] = []
        self._changes: dict[str, dict[str, object]] = {}
        self._loader_seeds: list[int] = []
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
                was never interrupted (interruptions lose at most the unfinished epoch), with
                any number of loader workers, persistent or not, provided that the
                randomness of the data is keyed rather than drawn from worker state (as
                :class:`~lumbarssl.data.datasets.DiscROIDataset`'s views are): before each
                epoch the loader's generator is seeded from its initial seed and the epoch,
                and ``set_epoch(epoch - 1)`` is called on the loader, its sampler and its
                dataset where they have one. Settings that differ from the checkpoint's run
                are refused unless ``config.allow_change`` names them.

        Returns:
            The records of all completed epochs, resumed ones included.

        Raises:
            ValueError: If a metric the config refers to is not produced (e.g. ``monitor``
                names a validation metric but ``val_loader`` is ``None``).
            FileExistsError: If ``resume`` is false but ``out_dir`` already holds ``last.pt``.
            FileNotFoundError: If ``resume`` is true but there is no ``last.pt``.
            ConfigError: If ``resume`` finds settings changed that ``allow_change`` does not
                allow (the message lists them, old and new).
            TrainingDivergedError: If the loss becomes NaN or infinite, or absurd with
                ``loss_guard="stop"``.
            OSError: If writing a checkpoint fails (e.g. a full disk), with
                ``background_checkpoints`` at the step after the failed write or when the run
                ends; the previous checkpoint is kept.
        """
        self._check_metrics_available(val_loader)
        generators = _loader_generators(train_loader)
        # Seeds of the per-epoch shuffles: fixed by how the loader was built, before any restore.
        self._loader_seeds = [generator.initial_seed() for generator in generators]
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
        except BaseException as error:
            # Interrupted, diverged or failed: the checkpoint in flight still reaches the disk
            # (a failure of that write is noted on the exception that ends the run).
            failed = self._writer.wait_quietly()
            if failed is not None and failed is not error:
                error.add_note(f"the background checkpoint write also failed: {failed!r}")
            raise
        else:
            self._writer.wait()
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
        for generator, seed in zip(generators, self._loader_seeds, strict=True):
            generator.manual_seed(_epoch_seed(seed, epoch))
        _skip_worker_seed_draw(train_loader)
        _set_epoch(train_loader, epoch - 1)
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
            changes=self._changes,
        )
        self._check_loss_guard(record, train_loader)
        self._changes = {}
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
            self._write_checkpoints(state, record, best=improved)
        self._reporter.end_epoch(record)
        if stop:
            self._reporter.message(
                f"early stopping: {self.config.monitor} did not improve for {patience} epochs "
                f"(best {self._progress['best_value']} at epoch {self._progress['best_epoch']})"
            )
        return stop

    def _write_checkpoints(self, state: TrainingState, record: EpochRecord, *, best: bool) -> None:
        """Write ``best.pt`` (if ``best``), ``last.pt`` and the history line, in this order.

        An epoch that is the best is serialised once: ``last.pt`` becomes a second name of the
        new ``best.pt`` (:func:`~lumbarssl._core.atomic.atomic_duplicate`; a copy where hard
        links are refused). With :attr:`TrainerConfig.background_checkpoints` the writes run
        in the background thread on a host snapshot of ``state``, after the previous epoch's
        writes finished.
        """

        def write(state: TrainingState) -> None:
            if best:
                atomic_save(state, self.best_checkpoint)
                atomic_duplicate(self.best_checkpoint, self.last_checkpoint)
            else:
                atomic_save(state, self.last_checkpoint)
            append_history(self.history_file, record)

        if not self.config.background_checkpoints:
            write(state)
            return
        snapshot = host_snapshot(state)
        self._writer.submit(lambda: write(snapshot))

    def _existing_last_checkpoint(self) -> Path | None:
        """``last.pt`` once the write in flight (if any) has finished, or ``None``."""
        self._writer.wait()
        return self.last_checkpoint if self.last_checkpoint.exists() else None

    def _check_loss_guard(self, record: EpochRecord, loader: Iterable[BatchT]) -> None:
        """Warn or stop when the epoch's loss is absurd next to the first epoch's."""
        if self.config.loss_guard == "off" or not self._history:
            return
        first, loss = self._history[0].train_loss, record.train_loss
        factor = self.config.loss_guard_factor
        if not (math.isfinite(first) and first != 0 and abs(loss) > factor * abs(first)):
            return
        detail = (
            f"the training loss {loss:.4g} at epoch {record.epoch} is more than {factor:g} "
            f"times the first epoch's {first:.4g} (loss_guard={self.config.loss_guard})"
        )
        if self.config.loss_guard == "stop":
            last = self._existing_last_checkpoint()
            steps = len(loader) if isinstance(loader, Sized) else 0
            raise TrainingDivergedError(
                epoch=record.epoch, step=steps, loss=loss, checkpoint=last, detail=detail
            )
        message = f"{detail}: the run is probably diverging; set loss_guard=stop to stop it"
        warnings.warn(message, RuntimeWarning, stacklevel=4)
        self._reporter.message(f"warning: {message}")

    def _train_epoch(self, epoch: int, loader: Iterable[BatchT]) -> tuple[float, int]:
        """Run the optimisation steps of one epoch; return (mean loss, samples), all ranks."""
        model = self._train_model
        model.train()
        total = len(loader) if isinstance(loader, Sized) else None
        self._reporter.start_epoch(epoch, total)
        loss_sum = 0.0
        samples = 0
        check_every = self.config.loss_check_every or (
            1 if self.device.type == "cpu" else ACCELERATOR_LOSS_CHECK_EVERY
        )
        # Losses (and batch sizes) of the steps since the last host read, kept on the device.
        pending: list[tuple[int, Tensor, int]] = []

        def check_pending(loss_sum: float) -> float:
            """Read the pending losses in one transfer; raise at the first non-finite one.

            Returns ``loss_sum`` plus the pending losses times their batch sizes, added in step
            order (the same float sum whatever ``check_every`` is).
            """
            values = torch.stack([loss for _, loss, _ in pending]).float().tolist()
            for (at_step, _, size), value in zip(pending, values, strict=True):
                if not math.isfinite(value):
                    last = self._existing_last_checkpoint()
                    raise TrainingDivergedError(
                        epoch=epoch, step=at_step, loss=value, checkpoint=last
                    )
                loss_sum += value * size
                self._reporter.step(at_step, value, float(self.optimizer.param_groups[0]["lr"]))
            pending.clear()
            return loss_sum

        for step, cpu_batch in enumerate(loader, start=1):
            self._writer.check()  # a failed background write stops the run at the next step
            size = self.batch_size_fn(cpu_batch)
            batch = move_to_device(cpu_batch, self.device, memory_format=self._memory_format)
            with self.autocast.autocast():
                loss = self.train_step(model, batch)
            if loss.dim() != 0:
                raise ValueError(
                    f"train_step must return a scalar loss, got shape {tuple(loss.shape)}"
                )
            pending.append((step, loss.detach(), size))
            if check_every == 1:
                # Checked before the update: a diverged step never reaches the weights.
                loss_sum = check_pending(loss_sum)
            self.optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(self.scaler.scale(loss))
            if self.config.max_grad_norm is not None:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            samples += size
            if len(pending) >= check_every:
                loss_sum = check_pending(loss_sum)
        if pending:
            loss_sum = check_pending(loss_sum)
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
        new_lrs = _initial_lrs(self.optimizer.param_groups)
        changes = self._check_changes(state["config"], state["optimizer"], new_lrs)
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
        if "lr" in changes:
            self._apply_new_lrs(new_lrs)
        self._changes = changes
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
        if changes:
            listed = ", ".join(f"{k}: {v['old']} -> {v['new']}" for k, v in changes.items())
            self._reporter.message(f"resumed with changed settings ({listed})")
        return state["epoch"]

    def _check_changes(
        self, saved: Mapping[str, object], optimizer: Mapping[str, object], new_lrs: list[float]
    ) -> dict[str, dict[str, object]]:
        """The settings that differ from the checkpoint's run; raise unless all are allowed."""
        current = self.config.to_dict()
        changes: dict[str, dict[str, object]] = {
            name: {"old": saved[name], "new": current[name]}
            for name in sorted(current)
            if name not in _NOT_COMPARED and name in saved and saved[name] != current[name]
        }
        groups = optimizer.get("param_groups")
        if isinstance(groups, list):
            old_lrs = _initial_lrs(groups)
            if len(old_lrs) == len(new_lrs) and old_lrs != new_lrs:
                changes["lr"] = {"old": old_lrs, "new": new_lrs}
        refused = [name for name in changes if name not in self.config.allow_change]
        if not refused:
            return changes
        listed = ", ".join(f"{k} {changes[k]['old']} -> {changes[k]['new']}" for k in refused)
        fixed = [name for name in refused if name not in RESUME_CHANGEABLE]
        remedy = (
            f"{', '.join(fixed)} cannot change on resume: use the saved settings or a new out_dir"
            if fixed
            else f"to apply and record the change, allow it: allow_change={tuple(refused)!r} "
            f"(command line: --allow-change {','.join(refused)})"
        )
        raise ConfigError(f"cannot resume from {self.last_checkpoint}: {listed}; {remedy}")

    def _apply_new_lrs(self, new_lrs: list[float]) -> None:
        """Scale the restored learning rates (and the schedule's bases) to the new initial ones."""
        old_lrs = _initial_lrs(self.optimizer.param_groups)
        ratios = [new / old if old else 1.0 for new, old in zip(new_lrs, old_lrs, strict=True)]
        for group, ratio, new in zip(self.optimizer.param_groups, ratios, new_lrs, strict=True):
            group["lr"] = float(group["lr"]) * ratio if group["lr"] else new
            if "initial_lr" in group:
                group["initial_lr"] = new
        scheduler = self.scheduler
        for name in ("base_lrs", "_last_lr"):
            values = getattr(scheduler, name, None)
            if isinstance(values, list) and len(values) == len(ratios):
                setattr(
                    scheduler, name, [float(v) * r for v, r in zip(values, ratios, strict=True)]
                )


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


def _initial_lrs(groups: Iterable[Mapping[str, object]]) -> list[float]:
    """Each parameter group's starting learning rate (a scheduler keeps it as initial_lr)."""
    return [_number(group.get("initial_lr", group.get("lr"))) for group in groups]


def _number(value: object) -> float:
    if isinstance(value, Tensor):
        return float(value.item())
    if isinstance(value, int | float):
        return float(value)
    raise TypeError(f"expected a learning rate, got {value!r}")


def _epoch_seed(seed: int, epoch: int) -> int:
    """A generator seed for ``epoch`` of a loader whose generator started from ``seed``."""
    digest = hashlib.blake2b(f"{seed}:{epoch}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _skip_worker_seed_draw(loader: object) -> None:
    """Draw, from the loader's generator, the worker base seed a new iterator would draw.

    A DataLoader draws its workers' base seed from its generator when it starts workers, then
    the shuffle: every epoch without persistent workers, only the first with them. Drawing it
    here on the epochs a persistent loader reuses its workers makes each epoch's shuffle
    follow the same draws whether the workers were started in this epoch (as after a resume)
    or before.
    """
    generator = getattr(loader, "generator", None)
    reuses = getattr(loader, "persistent_workers", False) and (
        getattr(loader, "_iterator", None) is not None
    )
    if reuses and isinstance(generator, torch.Generator):
        torch.empty((), dtype=torch.int64).random_(generator=generator)


def _set_epoch(loader: object, epoch: int) -> None:
    """Call ``set_epoch`` on the loader, its samplers and its dataset, where they have it.

    A :class:`~torch.utils.data.DistributedSampler` reshuffles with it; a dataset with keyed
    randomness (:class:`~lumbarssl.data.datasets.DiscROIDataset`) keys its views with it.
    """
    owners = [loader, *_samplers(loader), getattr(loader, "dataset", None)]
    seen: set[int] = set()
    for owner in owners:
        if owner is None or id(owner) in seen:
            continue
        seen.add(id(owner))
        set_epoch = getattr(owner, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)
