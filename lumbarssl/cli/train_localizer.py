"""``lumbarssl train-localizer``: the 2.5D disc-centre regressor (paper Sec. 4.5)."""

from __future__ import annotations

import argparse

from lumbarssl.cli._stages import register_stage
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
            "Train Localizer2p5D on 3-slice inputs with Smooth L1, AdamW (1e-4, weight decay "
            "0.01) and ReduceLROnPlateau (patience 3, factor 0.1) (paper Sec. 4.5); report RMSE "
            "in original pixels and mm on held-out studies."
        ),
    )
