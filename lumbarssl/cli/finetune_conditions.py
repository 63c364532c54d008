"""``lumbarssl finetune-conditions``: grade all five RSNA 2024 conditions with one model."""

from __future__ import annotations

import argparse

from lumbarssl.cli._stages import register_stage
from lumbarssl.pipeline.conditions import ConditionFinetuneConfig, run_condition_finetuning


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``finetune-conditions`` sub-command."""
    register_stage(
        subparsers,
        "finetune-conditions",
        ConditionFinetuneConfig,
        run_condition_finetuning,
        help="train one grader of all five conditions (a conditions=all cache)",
        description=(
            "Train a ConditionClassifier on every ROI of a `lumbarssl prepare --conditions all` "
            "cache: a shared pretrained encoder (--encoder) or one per sequence "
            "(--sequence-encoders 'Sagittal T2/STIR=PATH' 'Sagittal T1=PATH' 'Axial T2=PATH'), "
            "one head per condition, the fine-tuning recipe of `lumbarssl finetune` (paper "
            "Sec. 4.4). Writes model.pt (per-condition calibration inside), "
            "predictions_test.csv and metrics.json (Table 1 per condition with bootstrap "
            "intervals, the RSNA 2024 score)."
        ),
    )
