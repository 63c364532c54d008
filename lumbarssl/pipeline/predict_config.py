"""Settings of ``lumbarssl predict``: which series to grade, with which models, written where."""

from __future__ import annotations

import dataclasses

from lumbarssl._core.config import ConfigBase
from lumbarssl.errors import ConfigError

__all__ = ["PredictConfig"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class PredictConfig(ConfigBase):
    """Settings of fully automated grading (paper Sec. 4.5).

    Attributes:
        series_dir: Directory of one sagittal T2 series' ``.dcm`` files.
        localizer: The ``model.pt`` of ``lumbarssl train-localizer``.
        classifier: The ``model.pt`` of ``lumbarssl finetune``.
        out: Output directory for ``prediction.json`` and ``overlay.png``; ``None`` writes to
            ``predictions/<series_dir name>``.
        device: ``"auto"`` (CUDA, then MPS, then CPU) or a device name.
    """

    series_dir: str
    localizer: str = dataclasses.field(metadata={"help": "model.pt of `lumbarssl train-localizer`"})
    classifier: str = dataclasses.field(metadata={"help": "model.pt of `lumbarssl finetune`"})
    out: str | None = dataclasses.field(
        default=None, metadata={"help": "output directory (none: predictions/<series>)"}
    )
    device: str = dataclasses.field(default="auto", metadata={"help": "auto, cpu, cuda, mps"})

    def __post_init__(self) -> None:
        for name in ("series_dir", "localizer", "classifier"):
            if not getattr(self, name):
                raise ConfigError(f"predict: {name} is required")
