"""Settings of ``lumbarssl predict``: what to grade, with which models, written where."""

from __future__ import annotations

import dataclasses

from lumbarssl._core.config import ConfigBase
from lumbarssl.errors import ConfigError

__all__ = ["PredictConfig"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class PredictConfig(ConfigBase):
    """Settings of fully automated grading (paper Sec. 4.5; issue 13's chain).

    Attributes:
        series_dir: What to grade: a series directory, a study directory of series, or a
            flat folder of mixed series (files grouped by SeriesInstanceUID); with ``batch``,
            an RSNA-layout directory (``train_images/STUDY/SERIES`` or ``STUDY/SERIES``).
        localizer: The ``model.pt`` of ``lumbarssl train-localizer`` (the paper's regressor)
            or ``lumbarssl train-heatmap`` (the heatmap localizer).
        classifier: The ``model.pt`` of ``lumbarssl finetune``; with ``conditions="all"``,
            a multi-condition classifier's (``forward(x, condition)``).
        slice_selector: The ``model.pt`` of ``lumbarssl train-slice-selector``; ``None`` uses
            the CSF-brightness baseline to pick each level's slice.
        out: Output directory for ``prediction.json`` and ``overlay.png`` (one sub-directory
            per study in batch mode); ``None`` writes to ``predictions/<name>``.
        submission: Also write the RSNA 2024 submission rows (spinal canal stenosis, five
            levels per study; all 25 with ``conditions="all"``) to this CSV.
        series_csv: RSNA ``train_series_descriptions.csv``, consulted when a series' own
            SeriesDescription does not say what it is.
        study_id: Study id of the rows and the prediction (single mode); the directory name
            when ``None``.
        force: Grade a series that is not Sagittal T2/STIR instead of refusing it.
        batch: Grade every study of an RSNA-layout directory, with a progress bar.
        device: ``"auto"`` (CUDA, then MPS, then CPU) or a device name.
        conditions: ``"spinal"`` (the paper's five spinal canal targets) or ``"all"`` (the 25
            targets of the RSNA 2024 task: the study's Sagittal T1 and Axial T2 series too;
            see :mod:`lumbarssl.pipeline.condition_inference`).
        condition_points: With ``conditions="all"``, the JSON file of ``lumbarssl
            fit-condition-points`` that places the four other conditions.
    """

    series_dir: str
    localizer: str = dataclasses.field(
        metadata={"help": "model.pt of `lumbarssl train-localizer` or `train-heatmap`"}
    )
    classifier: str = dataclasses.field(metadata={"help": "model.pt of `lumbarssl finetune`"})
    slice_selector: str | None = dataclasses.field(
        default=None,
        metadata={"help": "model.pt of `lumbarssl train-slice-selector` (none: CSF baseline)"},
    )
    out: str | None = dataclasses.field(
        default=None, metadata={"help": "output directory (none: predictions/<name>)"}
    )
    submission: str | None = dataclasses.field(
        default=None, metadata={"help": "also write RSNA 2024 submission rows to this CSV"}
    )
    series_csv: str | None = dataclasses.field(
        default=None, metadata={"help": "train_series_descriptions.csv, if headers do not say"}
    )
    study_id: str | None = dataclasses.field(
        default=None, metadata={"help": "study id of the rows (none: the directory name)"}
    )
    force: bool = dataclasses.field(
        default=False, metadata={"help": "grade a series that is not Sagittal T2/STIR"}
    )
    batch: bool = dataclasses.field(
        default=False, metadata={"help": "grade every study of an RSNA-layout directory"}
    )
    device: str = dataclasses.field(default="auto", metadata={"help": "auto, cpu, cuda, mps"})
    conditions: str = dataclasses.field(
        default="spinal",
        metadata={"help": "spinal (5 targets) or all (25: also the T1 and axial series)"},
    )
    condition_points: str | None = dataclasses.field(
        default=None,
        metadata={"help": "JSON of `lumbarssl fit-condition-points` (with --conditions all)"},
    )

    def __post_init__(self) -> None:
        for name in ("series_dir", "localizer", "classifier"):
            if not getattr(self, name):
                raise ConfigError(f"predict: {name} is required")
        if self.conditions not in ("spinal", "all"):
            raise ConfigError(
                f"predict: conditions must be 'spinal' or 'all', got {self.conditions!r}"
            )
        if self.conditions == "all" and not self.condition_points:
            raise ConfigError(
                "predict: --conditions all needs --condition-points (the JSON file of "
                "`lumbarssl fit-condition-points`)"
            )
        if self.conditions == "spinal" and self.condition_points:
            raise ConfigError("predict: --condition-points goes with --conditions all only")
        if self.batch and self.study_id is not None:
            raise ConfigError("predict: --study-id names one study; it cannot go with --batch")
