"""Where and how a run executes: one config shared by the trainer and every stage.

The stage configs (:class:`~lumbarssl.pipeline.config.StageConfig`) and the trainer's
(:class:`~lumbarssl.training.TrainerConfig`) both hold a :class:`RuntimeConfig`, so the
hardware settings a user chooses reach the trainer as one object, never copied field by field.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, get_args

import torch

from lumbarssl._core.config import ConfigBase, param
from lumbarssl.training._progress import ProgressMode
from lumbarssl.training.device import AmpMode

__all__ = ["CompileMode", "DeviceDataMode", "RuntimeConfig"]

#: ``auto``: on where the data fits in the device's memory (CUDA); ``on``/``off``: forced.
DeviceDataMode = Literal["auto", "on", "off"]
_DEVICE_DATA_MODES: tuple[str, ...] = get_args(DeviceDataMode)
#: Modes of :func:`torch.compile` a run may choose.
CompileMode = Literal["default", "reduce-overhead", "max-autotune"]
_COMPILE_MODES: tuple[str, ...] = get_args(CompileMode)

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
            (faster convolutions on tensor-core GPUs); ``None`` (auto): on for CUDA, off
            elsewhere (:meth:`use_channels_last`).
        compile: Compile the training model with :func:`torch.compile` (off by default: its
            gain is measured per device by ``benchmarks/bench_gpu.py``).
        compile_mode: :func:`torch.compile`'s mode when ``compile`` is on: ``"default"``,
            ``"reduce-overhead"`` (CUDA graphs: fixed-shape steps replayed without launch
            overhead) or ``"max-autotune"``.
        device_data: Hold the training data on the device and make batches there (index
            gathers, batched augmentation) instead of DataLoader workers: ``"auto"`` (on for
            CUDA when the data takes at most half of its free memory, off on the CPU, where
            the per-sample path measured as fast), ``"on"`` or ``"off"``. See
            :mod:`lumbarssl.data.device_data`.
        num_workers: DataLoader worker processes; ``None`` derives it from the CPU count.
        progress: ``"auto"`` (a bar on a terminal, plain lines otherwise), ``"bar"``,
            ``"lines"`` or ``"off"``.
    """

    device: str = param("auto", "auto, cpu, cuda, cuda:1, mps")
    amp: AmpMode = param("auto", "mixed precision: auto (GPU only), bf16, fp16, off")
    channels_last: bool | None = param(None, "channels-last memory format (default: on for CUDA)")
    compile: bool = param(False, "torch.compile the model")
    compile_mode: CompileMode = param(
        "default", "torch.compile mode: default, reduce-overhead (CUDA graphs), max-autotune"
    )
    num_workers: int | None = param(None, "DataLoader workers (default: from CPU count)")
    progress: ProgressMode = param("auto", "progress display")
    device_data: DeviceDataMode = param(
        "auto", "data on the device, batches made there: auto (CUDA if it fits), on, off"
    )

    def __post_init__(self) -> None:
        if not isinstance(self.device, str) or not self.device:
            raise ValueError(f"device must be a non-empty string, got {self.device!r}")
        if self.amp not in _AMP_MODES:
            raise ValueError(f"amp must be one of {_AMP_MODES}, got {self.amp!r}")
        if self.progress not in _PROGRESS_MODES:
            raise ValueError(f"progress must be one of {_PROGRESS_MODES}, got {self.progress!r}")
        if self.device_data not in _DEVICE_DATA_MODES:
            raise ValueError(
                f"device_data must be one of {_DEVICE_DATA_MODES}, got {self.device_data!r}"
            )
        if self.channels_last is not None and not isinstance(self.channels_last, bool):
            raise ValueError(f"channels_last must be a bool or None, got {self.channels_last!r}")
        if self.compile_mode not in _COMPILE_MODES:
            raise ValueError(
                f"compile_mode must be one of {_COMPILE_MODES}, got {self.compile_mode!r}"
            )
        if not isinstance(self.compile, bool):
            raise ValueError(f"compile must be a bool, got {self.compile!r}")
        workers = self.num_workers
        if workers is not None and (
            isinstance(workers, bool) or not isinstance(workers, int) or workers < 0
        ):
            raise ValueError(f"num_workers must be >= 0, got {workers}")

    def use_channels_last(self, device: torch.device | str) -> bool:
        """Whether to use channels-last on ``device``: the setting, or on for CUDA if unset.

        Args:
            device: The training device.

        Returns:
            ``True`` for channels-last.
        """
        if self.channels_last is not None:
            return self.channels_last
        return torch.device(device).type == "cuda"
