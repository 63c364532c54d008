"""Vectorised Table 1 bootstrap vs a per-resample scikit-learn loop, side by side.

Run: ``python benchmarks/bench_bootstrap.py``. Prints the median wall time of each over a few
repeats and their ratio, for 1000 resamples of 1000 discs (the size of a held-out split).
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable

import numpy as np

from lumbarssl.metrics import bootstrap_ci, disc_report

N_DISCS = 1000
N_RESAMPLES = 1000
REPEATS = 3


def loop_bootstrap(y_true: np.ndarray, y_pred: np.ndarray, seed: int) -> list[dict[str, float]]:
    rng = np.random.default_rng(seed)
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(N_RESAMPLES):
            idx = rng.integers(0, y_true.size, size=y_true.size)
            rows.append(disc_report(y_true[idx], y_pred[idx]))
    return rows


def median_seconds(fn: Callable[[], object]) -> float:
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    rng = np.random.default_rng(0)
    y_true = rng.choice(3, size=N_DISCS, p=[0.7, 0.2, 0.1])
    y_pred = np.where(rng.random(N_DISCS) < 0.8, y_true, rng.integers(0, 3, N_DISCS))
    vectorised = median_seconds(lambda: bootstrap_ci(y_true, y_pred, n_resamples=N_RESAMPLES))
    looped = median_seconds(lambda: loop_bootstrap(y_true, y_pred, seed=0))
    print(f"bootstrap of Table 1, {N_RESAMPLES} resamples x {N_DISCS} discs, median of {REPEATS}")
    print(f"  vectorised bootstrap_ci : {vectorised * 1e3:9.1f} ms")
    print(f"  sklearn loop            : {looped * 1e3:9.1f} ms")
    print(f"  speed-up                : {looped / vectorised:9.1f} x")


if __name__ == "__main__":
    main()
