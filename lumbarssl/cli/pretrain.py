"""``lumbarssl pretrain``: multi-positive contrastive pretraining (paper Sec. 3.4, 4.3)."""

from __future__ import annotations

import argparse

from lumbarssl import paper
from lumbarssl.cli._stages import register_stage
from lumbarssl.pipeline.pretrain import PretrainConfig, run_pretraining


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``pretrain`` sub-command."""
    register_stage(
        subparsers,
        "pretrain",
        PretrainConfig,
        run_pretraining,
        help="contrastive pretraining of the disc encoder",
        description=(
            "Pretrain a 1-channel ResNet-18 and projection head with multi-positive NT-Xent "
            f"(V={paper.N_VIEWS} views per disc, tau={paper.TEMPERATURE:g}, cosine LR, "
            "gradient clipping; paper Sec. 4.3). "
            "Defaults are the paper's; run under torchrun for several GPUs."
        ),
    )
