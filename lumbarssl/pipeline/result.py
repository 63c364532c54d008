"""What a stage returns."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from lumbarssl.training import EpochRecord


@dataclasses.dataclass(frozen=True)
class StageResult:
    """Outputs of one training stage.

    Attributes:
        out_dir: The stage's output directory.
        model_path: The exported model-only checkpoint (weights of the best epoch).
        history: One record per epoch, as written to ``history.jsonl``.
    """

    out_dir: Path
    model_path: Path
    history: tuple[EpochRecord, ...]
