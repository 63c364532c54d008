"""Which calibration map lowers the RSNA log loss of a class-weighted model on unseen studies?

Reads the ``predictions_test.csv`` of fine-tuning runs (spinal: ``p0..p2`` class probabilities;
e.g. the three Table 1 rows of a reproduction), and repeats: fit each map on the rows of a
random half of the studies (RSNA weights 1/2/4 by true grade, as fine-tuning does on its
validation split), score the other half with the RSNA spinal log loss. Prints the median over
the repeats per run and map, and each map's change against the raw probabilities.

    python benchmarks/bench_calibration.py OUT/finetune/predictions_test.csv \
        OUT/linear_probe/predictions_test.csv --repeats 20

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
from lumbarssl.metrics import fit_calibration, rsna_spinal_score
from lumbarssl.metrics.calibration import CalibrationMethod

METHODS: tuple[CalibrationMethod, ...] = ("temperature", "bias", "bcts", "vector")


def main() -> None:
    """Print the medians per run and map."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csv", nargs="+", type=Path, help="predictions_test.csv files")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    print(f"median RSNA spinal log loss on the held-out half ({args.repeats} random halves)")
    print(f"{'run':48s} {'raw':>7s} " + " ".join(f"{m:>13s}" for m in METHODS))
    for path in args.csv:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        p = np.array([[float(r[f"p{c}"]) for c in range(3)] for r in rows]).clip(1e-6)
        z = np.log(p)
        y = np.array([int(r["label"]) for r in rows])
        studies = np.array([int(r["study_id"]) for r in rows])
        unique = np.unique(studies)
        scores: dict[str, list[float]] = {m: [] for m in ("raw", *METHODS)}
        for repeat in range(args.repeats):
            rng = np.random.default_rng(repeat)
            fit = np.isin(studies, rng.choice(unique, len(unique) // 2, replace=False))
            held = ~fit
            scores["raw"].append(rsna_spinal_score(y[held], p[held], studies[held]).spinal)
            weights = np.array([1.0, 2.0, 4.0])[y[fit]]
            for method in METHODS:
                try:
                    calibration = fit_calibration(z[fit], y[fit], method, sample_weight=weights)
                except DataError:  # a half without a grade, or no positive temperature
                    scores[method].append(float("nan"))
                    continue
                q = calibration.probabilities(torch.from_numpy(z[held])).numpy()
                scores[method].append(rsna_spinal_score(y[held], q, studies[held]).spinal)
        raw = float(np.median(scores["raw"]))
        cells = []
        for method in METHODS:
            value = float(np.nanmedian(scores[method]))
            cells.append(f"{value:6.3f} ({100 * (value / raw - 1):+4.0f}%)")
        name = f"{path.parent.name}/{path.name}"
        print(f"{name:48s} {raw:7.3f} " + " ".join(cells))


if __name__ == "__main__":
    main()
