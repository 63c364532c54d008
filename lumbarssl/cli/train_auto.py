"""``lumbarssl train-heatmap`` and ``train-slice-selector``: the automatic chain's models."""

from __future__ import annotations

import argparse

from lumbarssl.cli._stages import register_stage
from lumbarssl.pipeline.auto_stages import (
    HeatmapConfig,
    SliceSelectorConfig,
    run_heatmap_training,
    run_slice_selector_training,
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``train-heatmap`` and ``train-slice-selector`` sub-commands."""
    register_stage(
        subparsers,
        "train-heatmap",
        HeatmapConfig,
        run_heatmap_training,
        help="train the heatmap disc localizer (beyond the paper)",
        description=(
            "Train HeatmapLocalizer (a ResNet-18 encoder-decoder, one Gaussian heatmap per "
            "level, sub-pixel decoding) on the 3-slice stacks of a prepared cache, split by "
            "study like train-localizer; report RMSE in px and mm and the share within 5 px "
            "on the held-out studies. Not part of the paper."
        ),
    )
    register_stage(
        subparsers,
        "train-slice-selector",
        SliceSelectorConfig,
        run_slice_selector_training,
        help="train the per-level slice selector (beyond the paper)",
        description=(
            "Train SliceSelector (slice-wise CNN + bidirectional GRU) to pick each level's "
            "mid-sagittal slice from the whole series around its annotated point, on the "
            "studies of a prepared cache (series read from --data-dir), split by study like "
            "train-localizer; report exact and within-one accuracy beside the CSF baseline "
            "and the centre slice. Not part of the paper."
        ),
    )
