"""``lumbarssl finetune``: the three configurations of Table 1 (paper Sec. 4.4, 6)."""

from __future__ import annotations

import argparse

from lumbarssl import paper
from lumbarssl.cli._stages import rate, register_stage
from lumbarssl.pipeline.finetune import FinetuneConfig, run_finetuning

_ALPHA = " ".join(f"{a:g}" for a in paper.FOCAL_ALPHA)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``finetune`` sub-command."""
    register_stage(
        subparsers,
        "finetune",
        FinetuneConfig,
        run_finetuning,
        help="train a disc grader: scratch, linear probe or fine-tuning",
        description=(
            "Train a DiscClassifier with the weighted focal loss "
            f"(gamma={paper.FOCAL_GAMMA:g}, alpha={_ALPHA}), "
            f"layer4 at {rate(paper.BACKBONE_LR)} and the head at {rate(paper.HEAD_LR)}, "
            "ReduceLROnPlateau on validation balanced accuracy (paper Sec. 4.4), then score "
            "the held-out discs with bootstrap intervals."
        ),
    )
