"""``lumbarssl finetune``: the three configurations of Table 1 (paper Sec. 4.4, 6)."""

from __future__ import annotations

import argparse

from lumbarssl.cli._stages import register_stage
from lumbarssl.pipeline.finetune import FinetuneConfig, run_finetuning


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``finetune`` sub-command."""
    register_stage(
        subparsers,
        "finetune",
        FinetuneConfig,
        run_finetuning,
        help="train a disc grader: scratch, linear probe or fine-tuning",
        description=(
            "Train a DiscClassifier with the weighted focal loss (gamma=2, alpha=0.8 4 5), "
            "layer4 at 5e-5 and the head at 5e-4, ReduceLROnPlateau on validation balanced "
            "accuracy (paper Sec. 4.4), then score the held-out discs with bootstrap intervals."
        ),
    )
