"""Throughput of the synthetic generator: studies per second, 1 and 2 worker processes.

The issue's target is >= 20 studies/s per core for 256 x 256 images with 12 slices. Two
configurations are measured at that size: only the Sagittal T2/STIR series (the target's
configuration), and the default mix with Sagittal T1 and Axial T2 series in 30 % of studies each.
Every run writes the full layout (DICOM files and CSVs) to a temporary directory. Two figures,
each the median over repeats:

* studies/s: ``n_studies / wall-clock time`` of :func:`generate_dataset`, worker start-up included;
* studies per CPU-second: ``n_studies`` over the CPU time (user + system) of this process and its
  worker processes, the per-core throughput, which other jobs sharing the cores do not dilute.

    python benchmarks/bench_synth.py [--studies 60] [--repeats 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

from lumbarssl.synthetic import SyntheticConfig, generate_dataset

BENCH_SIZE = 256
BENCH_SLICES = 12


def measure(config: SyntheticConfig, workers: int, repeats: int) -> tuple[float, float]:
    """Median studies per wall-clock second and per CPU-second over ``repeats`` runs."""
    wall_rates, cpu_rates = [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            cpu = _cpu_seconds()
            start = time.perf_counter()
            generate_dataset(Path(tmp) / "data", config, workers=workers, progress=False)
            wall_rates.append(config.n_studies / (time.perf_counter() - start))
            cpu_rates.append(config.n_studies / (_cpu_seconds() - cpu))
    return statistics.median(wall_rates), statistics.median(cpu_rates)


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished child processes."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


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
    header = f"{'configuration':<20} {'workers':>7} {'studies':>8} {'studies/s':>10}"
    print(f"{header} {'vs 1 worker':>12} {'studies/CPU-s':>14}")
    for name, config in configs.items():
        single = 0.0
        for workers in (1, 2):
            n = args.studies * workers
            rate, per_cpu = measure(dataclasses.replace(config, n_studies=n), workers, args.repeats)
            single = single or rate
            print(
                f"{name:<20} {workers:>7} {n:>8} {rate:>10.1f} {rate / single:>11.2f}x "
                f"{per_cpu:>14.1f}"
            )
    print(f"load average at the end: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
