"""Which calibration map lowers the RSNA log loss of a class-weighted model on unseen studies?

Reads the ``predictions_test.csv`` of fine-tuning runs (``p0..p2`` raw class probabilities),
and repeats: fit each map on the rows of a random half of the studies (RSNA weights 1/2/4 by
true grade, as fine-tuning does on its validation split), score the other half. Prints the
median over the repeats per run and map, and each map's change against the raw probabilities.

Spinal runs (e.g. the three Table 1 rows of a reproduction) are scored with the RSNA spinal
log loss:

    python benchmarks/bench_calibration.py OUT/finetune/predictions_test.csv \
        OUT/linear_probe/predictions_test.csv --repeats 20

All-condition runs (``lumbarssl finetune-conditions``; their CSV has a ``condition`` column)
are scored with the full RSNA 2024 score, and each method is fitted at three scopes: one map
per condition, one per condition group (spinal, foraminal, subarticular) and one shared by all
(``ConditionFinetuneConfig.calibration_scope``):

    python benchmarks/bench_calibration.py OUT-conditions/shared_softmax/predictions_test.csv

The probabilities in the CSV are rounded to 6 decimals; their logarithms serve as logits
(softmax is unchanged by the per-row constant).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import torch

from lumbarssl.errors import DataError
from lumbarssl.metrics import fit_calibration, rsna_score, rsna_spinal_score
from lumbarssl.metrics.calibration import CalibrationMethod

METHODS: tuple[CalibrationMethod, ...] = ("temperature", "bias", "bcts", "vector")
#: Scopes of the all-condition runs: the key that groups rows for one map.
SCOPES: tuple[str, ...] = ("condition", "group", "shared")
RSNA_WEIGHTS = np.array([1.0, 2.0, 4.0])


def _group(condition: str) -> str:
    for word in ("Spinal", "Foraminal", "Subarticular"):
        if word in condition:
            return word
    raise ValueError(f"unknown condition {condition!r}")


def _fit_scope(
    z: np.ndarray,
    y: np.ndarray,
    keys: np.ndarray,
    fit: np.ndarray,
    held: np.ndarray,
    method: CalibrationMethod,
) -> np.ndarray:
    """Calibrated probabilities of the held rows, one map per distinct key (fitted on fit)."""
    q = np.zeros((int(held.sum()), z.shape[1]))
    for key in np.unique(keys):
        rows = fit & (keys == key)
        calibration = fit_calibration(z[rows], y[rows], method, sample_weight=RSNA_WEIGHTS[y[rows]])
        target = keys[held] == key
        q[target] = calibration.probabilities(torch.from_numpy(z[held][target])).numpy()
    return q


def _score(
    y: np.ndarray,
    q: np.ndarray,
    studies: np.ndarray,
    conditions: np.ndarray | None,
    held: np.ndarray,
) -> float:
    """The RSNA spinal log loss, or the full RSNA 2024 score when rows carry conditions."""
    if conditions is None:
        return rsna_spinal_score(y, q, studies).spinal
    return rsna_score(y, q, studies, conditions[held]).score


def _median_cells(scores: dict[str, list[float]], columns: tuple[str, ...]) -> str:
    raw = float(np.median(scores["raw"]))
    cells = [f"{raw:7.3f}"]
    for column in columns:
        value = float(np.nanmedian(scores[column])) if scores[column] else float("nan")
        cells.append(f"{value:6.3f} ({100 * (value / raw - 1):+4.0f}%)")
    return " ".join(cells)


def main() -> None:
    """Print the medians per run and map."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csv", nargs="+", type=Path, help="predictions_test.csv files")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    print(f"median RSNA log loss on the held-out half ({args.repeats} random halves of studies)")
    for path in args.csv:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        p = np.array([[float(r[f"p{c}"]) for c in range(3)] for r in rows]).clip(1e-6)
        z = np.log(p)
        y = np.array([int(r["label"]) for r in rows])
        studies = np.array([int(r["study_id"]) for r in rows])
        conditions = np.array([r["condition"] for r in rows]) if "condition" in rows[0] else None
        unique = np.unique(studies)
        name = f"{path.parent.name}/{path.name}"
        plan: dict[str, tuple[CalibrationMethod, str]]
        if conditions is None:
            plan = {method: (method, "") for method in METHODS}
            keys_of: dict[str, np.ndarray] = {"": np.zeros(len(y), dtype=np.int64)}

        else:
            groups = np.array([_group(c) for c in conditions])
            keys_of = {
                "condition": conditions,
                "group": groups,
                "shared": np.zeros(len(y), dtype=np.int64),
            }
            plan = {f"{m}/{s}": (m, s) for m in METHODS for s in SCOPES}

        columns = tuple(plan)
        scores: dict[str, list[float]] = {c: [] for c in ("raw", *columns)}
        for repeat in range(args.repeats):
            rng = np.random.default_rng(repeat)
            fit = np.isin(studies, rng.choice(unique, len(unique) // 2, replace=False))
            held = ~fit
            scores["raw"].append(_score(y[held], p[held], studies[held], conditions, held))
            for column, (method, scope) in plan.items():
                try:
                    q = _fit_scope(z, y, keys_of[scope], fit, held, method)
                except DataError:  # a half without a grade, or no positive temperature
                    scores[column].append(float("nan"))
                    continue
                scores[column].append(_score(y[held], q, studies[held], conditions, held))
        header = "run".ljust(48) + "     raw " + " ".join(f"{c:>13s}" for c in columns)
        print(header)
        print(f"{name:48s} {_median_cells(scores, columns)}")


if __name__ == "__main__":
    main()
