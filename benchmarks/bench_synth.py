"""Throughput of the synthetic generator: studies per second, 1 and 2 worker processes.

The issue's target is >= 20 studies/s per core for 256 x 256 images with 12 slices. Two
configurations are measured at that size: only the Sagittal T2/STIR series (the target's
configuration), and the default mix with Sagittal T1 and Axial T2 series in 30 % of studies each.
Every run writes the full layout (DICOM files and CSVs) to a temporary directory; the figure is
the median over repeats of ``n_studies / wall-clock time`` of :func:`generate_dataset`, process
start-up included.

    python benchmarks/bench_synth.py [--studies 60] [--repeats 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path

from lumbarssl.data.synthetic import SyntheticConfig, generate_dataset

BENCH_SIZE = 256
BENCH_SLICES = 12


def measure(config: SyntheticConfig, workers: int, repeats: int) -> float:
    rates = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            generate_dataset(Path(tmp) / "data", config, workers=workers, progress=False)
            rates.append(config.n_studies / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=60, help="studies per run and worker")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    base = SyntheticConfig(
        seed=0,
        image_size_range=(BENCH_SIZE, BENCH_SIZE),
        slices_range=(BENCH_SLICES, BENCH_SLICES),
    )
    configs = {
        "Sagittal T2 only": dataclasses.replace(base, p_sagittal_t1=0.0, p_axial_t2=0.0),
        "default series mix": base,
    }
    print(
        f"Synthetic generator throughput, {BENCH_SIZE}x{BENCH_SIZE} px x {BENCH_SLICES} slices, "
        f"median of {args.repeats} runs ({os.cpu_count()} CPUs visible)"
    )
    print(
        f"{'configuration':<20} {'workers':>7} {'studies':>8} {'studies/s':>10} {'vs 1 worker':>12}"
    )
    for name, config in configs.items():
        single = 0.0
        for workers in (1, 2):
            n = args.studies * workers
            rate = measure(dataclasses.replace(config, n_studies=n), workers, args.repeats)
            single = single or rate
            print(f"{name:<20} {workers:>7} {n:>8} {rate:>10.1f} {rate / single:>11.2f}x")


if __name__ == "__main__":
    main()
