"""Stage configurations: frozen dataclasses that round-trip to JSON and drive the CLI.

Each stage of the paper (contrastive pretraining, supervised adaptation, localizer training)
is configured by one frozen :class:`~lumbarssl._core.config.ConfigBase`. Its defaults are the
paper's hyper-parameters, taken from :mod:`lumbarssl.paper`; each field's
``metadata["help"]`` says where a value comes from, and the command line is generated from
the fields, so a default lives in exactly one place. The hardware settings are one
:class:`~lumbarssl.training.RuntimeConfig` that the stage hands to its trainer unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from lumbarssl import paper
from lumbarssl._core.config import ConfigBase, param
from lumbarssl._core.data_source import DATA_SOURCES, DataSource, check_data_source
from lumbarssl.data.splits import VAL_SIZE
from lumbarssl.training import LOSS_GUARD_FACTOR, LossGuard
from lumbarssl.training.runtime import RuntimeConfig

__all__ = ["DataSourceName", "SplitLevel", "StageConfig", "param"]

SplitLevel = Literal["disc", "study"]
#: Alias of :data:`lumbarssl._core.data_source.DataSource`, kept for existing imports.
DataSourceName = DataSource


@dataclasses.dataclass(frozen=True, kw_only=True)
class StageConfig(ConfigBase):
    """Settings shared by every training stage: data, split, hardware and provenance.

    Attributes:
        cache_dir: Output directory of ``lumbarssl prepare`` (the ROI cache).
        out_dir: Directory for checkpoints, history, config and reports of this stage.
        split: ``"disc"``: stratified by grade at the disc level as in the paper (Sec. 4.1;
            discs of one patient can land on both sides); ``"study"``: grouped by study,
            leakage-free.
        val_size: Fraction of the graded discs used for model selection.
        test_size: Fraction of the graded discs held out for the reported metrics (Sec. 4.1:
            20 %).
        seed: Seed of the split, the initialisation, the data order and the augmentations.
        runtime: Device, mixed precision, memory format, compilation, DataLoader workers and
            progress display (:class:`~lumbarssl.training.RuntimeConfig`); handed to the
            trainer as it is. The command line offers its fields as ``--device``, ``--amp``,
            ...; :meth:`from_dict` also reads them flat, as files of earlier releases hold them.
        resume: Continue from ``out_dir/last.pt`` instead of starting over.
        allow_change: Settings a resumed run may change from the saved run (learning rates,
            ``epochs``, ``max_grad_norm``, ``early_stopping_patience``, ``loss_guard``,
            ``loss_guard_factor``); the change is recorded in ``history.jsonl``. On the
            command line: ``--allow-change lr,epochs``.
        loss_guard: ``warn``, ``stop`` or ``off``: what to do when an epoch's training loss is
            finite but ``loss_guard_factor`` times the first epoch's
            (:class:`~lumbarssl.training.TrainerConfig`).
        loss_guard_factor: The loss guard's factor.
        data_source: ``"synthetic"`` or ``"real"``, recorded in every output.
        profile: Name of the run profile, recorded in every output.
    """

    cache_dir: str = param("", "output directory of `lumbarssl prepare`")
    out_dir: str = param("", "directory for this stage's outputs")
    split: SplitLevel = param("disc", "disc: the paper's split (Sec. 4.1); study: leakage-free")
    val_size: float = param(VAL_SIZE, "fraction of graded discs for model selection (our choice)")
    test_size: float = param(
        paper.TEST_SIZE,
        f"fraction of graded discs held out (Sec. 4.1: {paper.TEST_SIZE * 100:g}%%)",
    )
    seed: int = param(0, "seed for split, initialisation, order and augmentation")
    runtime: RuntimeConfig = param(RuntimeConfig(), "device, precision, workers, progress")
    resume: bool = param(False, "continue from OUT_DIR/last.pt")
    allow_change: tuple[str, ...] = param(
        (), "settings --resume may change, recorded in the history: e.g. lr,epochs"
    )
    loss_guard: LossGuard = param("warn", "warn, stop or off when the loss is absurd")
    loss_guard_factor: float = param(
        LOSS_GUARD_FACTOR, "loss guard: factor over the first epoch's loss (our choice)"
    )
    data_source: DataSourceName = param("real", f"{' or '.join(DATA_SOURCES)}, recorded in outputs")
    profile: str = param("custom", "profile name recorded in outputs")

    def __post_init__(self) -> None:
        if not self.cache_dir:
            raise ValueError("cache_dir is required: the OUT_DIR of `lumbarssl prepare`")
        if not self.out_dir:
            raise ValueError("out_dir is required")
        if self.split not in ("disc", "study"):
            raise ValueError(f"split must be 'disc' or 'study', got {self.split!r}")
        for name in ("val_size", "test_size"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {value}")
        if self.val_size + self.test_size >= 1.0:
            raise ValueError(
                f"val_size + test_size must be < 1, got {self.val_size} + {self.test_size}"
            )
        check_data_source(self.data_source)
        names = tuple(
            part.strip().replace("-", "_")
            for item in self.allow_change
            for part in str(item).split(",")
            if part.strip()
        )
        object.__setattr__(self, "allow_change", names)
        changeable = self.changeable_on_resume()
        refused = [name for name in names if name not in changeable]
        if refused:
            raise ValueError(
                f"allow_change names {refused}; a resumed {type(self).__name__} may change "
                f"only {list(changeable)}"
            )
        if not isinstance(self.runtime, RuntimeConfig):
            raise ValueError(f"runtime must be a RuntimeConfig, got {self.runtime!r}")

    def changeable_on_resume(self) -> tuple[str, ...]:
        """The settings ``allow_change`` may name: learning rates and the trainer's own."""
        trainer_side = ("epochs", "max_grad_norm", "early_stopping_patience")
        return tuple(
            field.name
            for field in dataclasses.fields(self)
            if field.name in (*trainer_side, "loss_guard", "loss_guard_factor")
            or field.name == "lr"
            or field.name.endswith("_lr")
        )

    def _require_positive(self, *names: str) -> None:
        """Raise if any of the named integer fields is below 1."""
        for name in names:
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
