"""``lumbarssl train-localizer``: the 2.5D disc-centre regressor (paper Sec. 4.5)."""

from __future__ import annotations

import argparse

from lumbarssl import paper
from lumbarssl.cli._stages import rate, register_stage
from lumbarssl.pipeline.localize import LocalizerConfig, run_localizer_training


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``train-localizer`` sub-command."""
    register_stage(
        subparsers,
        "train-localizer",
        LocalizerConfig,
        run_localizer_training,
        help="train the 2.5D disc localizer",
        description=(
            f"Train Localizer2p5D on {paper.LOCALIZER_SLICES}-slice inputs with Smooth L1, "
            f"AdamW ({rate(paper.LOCALIZER_LR)}, weight decay "
            f"{paper.LOCALIZER_WEIGHT_DECAY:g}) and "
            f"ReduceLROnPlateau (patience {paper.LOCALIZER_PLATEAU_PATIENCE}, factor "
            f"{paper.LOCALIZER_PLATEAU_FACTOR:g}) (paper Sec. 4.5); report RMSE in original "
            "pixels and mm on held-out studies."
        ),
    )
