"""Where and how a run executes: one config shared by the trainer and every stage.

The stage configs (:class:`~lumbarssl.pipeline.config.StageConfig`) and the trainer's
(:class:`~lumbarssl.training.TrainerConfig`) both hold a :class:`RuntimeConfig`, so the
hardware settings a user chooses reach the trainer as one object, never copied field by field.
"""

from __future__ import annotations

import dataclasses
from typing import get_args

from lumbarssl._core.config import ConfigBase, param
from lumbarssl.training._progress import ProgressMode
from lumbarssl.training.device import AmpMode

__all__ = ["RuntimeConfig"]

_AMP_MODES: tuple[str, ...] = get_args(AmpMode)
_PROGRESS_MODES: tuple[str, ...] = get_args(ProgressMode)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RuntimeConfig(ConfigBase):
    """Device, precision and display settings of a run; none of them changes the maths.

    Attributes:
        device: ``"auto"`` (CUDA, then MPS, then CPU) or a device name.
        amp: Mixed precision: ``"auto"`` (bf16 on recent GPUs, fp16 on older ones, off on CPU),
            ``"bf16"``, ``"fp16"`` or ``"off"``.
        channels_last: Store the model and 4-D input batches in channels-last memory format
            (faster convolutions on tensor-core GPUs).
        compile: Compile the training model with :func:`torch.compile`.
        num_workers: DataLoader worker processes; ``None`` derives it from the CPU count.
        progress: ``"auto"`` (a bar on a terminal, plain lines otherwise), ``"bar"``,
            ``"lines"`` or ``"off"``.
    """

    device: str = param("auto", "auto, cpu, cuda, cuda:1, mps")
    amp: AmpMode = param("auto", "mixed precision: auto (GPU only), bf16, fp16, off")
    channels_last: bool = param(False, "channels-last memory format")
    compile: bool = param(False, "torch.compile the model")
    num_workers: int | None = param(None, "DataLoader workers (default: from CPU count)")
    progress: ProgressMode = param("auto", "progress display")

    def __post_init__(self) -> None:
        if not isinstance(self.device, str) or not self.device:
            raise ValueError(f"device must be a non-empty string, got {self.device!r}")
        if self.amp not in _AMP_MODES:
            raise ValueError(f"amp must be one of {_AMP_MODES}, got {self.amp!r}")
        if self.progress not in _PROGRESS_MODES:
            raise ValueError(f"progress must be one of {_PROGRESS_MODES}, got {self.progress!r}")
        for name in ("channels_last", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        workers = self.num_workers
        if workers is not None and (
            isinstance(workers, bool) or not isinstance(workers, int) or workers < 0
        ):
            raise ValueError(f"num_workers must be >= 0, got {workers}")
