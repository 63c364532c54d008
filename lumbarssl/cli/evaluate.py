"""``lumbarssl evaluate``: Table 1's columns with bootstrap intervals for a classifier.

A spinal :class:`~lumbarssl.models.DiscClassifier` gives one row; a
:class:`~lumbarssl.models.ConditionClassifier` one row per condition and the full RSNA 2024
score.
"""

from __future__ import annotations

import argparse
from typing import Any

from lumbarssl.cli._stages import register_stage
from lumbarssl.pipeline.evaluate import EvaluateConfig, run_evaluation
from lumbarssl.reporting import Provenance, format_table1


def _evaluate_and_print(config: EvaluateConfig) -> dict[str, Any]:
    summary = run_evaluation(config)
    provenance = Provenance(
        data_source=config.data_source, profile=config.profile, seed=config.seed
    )
    if "conditions" not in summary:
        row = str(summary["provenance"].get("mode") or "classifier")
        print(format_table1({row: summary["table1"]}, provenance, confidence=config.confidence))
        return summary
    rows = {
        name: reading["raw"]["table1"]
        for name, reading in summary["conditions"].items()
        if "table1" in reading["raw"]
    }
    print(format_table1(rows, provenance, include_paper=False, confidence=config.confidence))
    for reading in ("raw", "calibrated"):
        score = summary["rsna"][reading]
        if score is not None:
            terms = ", ".join(f"{k} {v:.4f}" for k, v in score.items() if k != "score")
            print(f"RSNA 2024 score, {reading}: {score['score']:.4f} ({terms})")
    return summary


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``evaluate`` sub-command."""
    register_stage(
        subparsers,
        "evaluate",
        EvaluateConfig,
        _evaluate_and_print,
        help="score a classifier on the held-out discs (Table 1 with 95%% CIs)",
        description=(
            "Score a fine-tuned classifier on the test (or validation) discs of the run's "
            "split: per-class recall, accuracy, balanced accuracy and severe-to-normal error "
            "with bootstrap intervals over studies, plus the RSNA 2024 metric. A model of "
            "`lumbarssl finetune-conditions` gives one row per condition and the full RSNA "
            "2024 score, raw and calibrated."
        ),
    )
