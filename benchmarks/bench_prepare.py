"""Throughput of ``lumbarssl prepare`` against bare pydicom decoding, and its speed-up with workers.

(a) Files per second of ``prepare_cache(workers=1)`` over the files of every annotated series,
    divided by files per second of ``pydicom.dcmread(f).pixel_array`` over the same files
    (target >= 0.8). Two reference points explain the gap: the least any spatially correct
    reader must do (read every header of a series to order it, then decode the needed slices:
    annotated ones and their neighbours), and bare decoding of the needed slices alone.
(b) Wall time of ``workers=1`` / ``workers=K`` (target: near-linear up to the core count),
    next to the same ratio for a pure-Python CPU task, which shows how much parallelism the
    machine offered during the run (on a shared machine it can be far below K).

Medians over ``--repeats`` interleaved runs in one process::

    python benchmarks/bench_prepare.py [--data-dir DIR] [--studies 32] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pydicom
from _bench_data import build_dataset

from lumbarssl.data.constants import IMAGES_DIR
from lumbarssl.data.dicom import read_header, read_series_geometry
from lumbarssl.data.index import read_index
from lumbarssl.data.prepare import PrepareConfig, prepare_cache

_CONTROL_LOOPS = 3_000_000


def _seconds(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def _bare(files: list[Path]) -> None:
    for path in files:
        _ = pydicom.dcmread(path).pixel_array


def _headers_then_decode(files: list[Path], needed: list[Path]) -> None:
    for path in files:
        read_header(path)
    _bare(needed)


def _files(data_dir: Path) -> tuple[list[Path], list[Path]]:
    """Every file of the annotated series, and the files prepare decodes (with neighbours)."""
    discs = read_index(data_dir).discs
    series_files: list[Path] = []
    needed: set[Path] = set()
    for study, series in sorted({(d.study_id, d.series_id) for d in discs}):
        folder = data_dir / IMAGES_DIR / str(study) / str(series)
        geometry = read_series_geometry(folder, on_error="skip")
        series_files.extend(h.path for h in geometry.slices)
        for disc in discs:
            if (disc.study_id, disc.series_id) != (study, series):
                continue
            if disc.instance_number in geometry.instance_to_index:
                center = geometry.index_of(disc.instance_number)
                for k in (center - 1, center, center + 1):
                    needed.add(geometry.slices[min(max(k, 0), len(geometry) - 1)].path)
    return series_files, sorted(needed)


def _spin(loops: int) -> int:
    total = 0
    for i in range(loops):
        total += i
    return total


def _control(workers: int) -> None:
    chunks = [_CONTROL_LOOPS // workers] * workers
    if workers == 1:
        _spin(_CONTROL_LOOPS)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        list(pool.map(_spin, chunks))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, help="RSNA layout; a generated one if absent")
    parser.add_argument("--studies", type=int, default=32, help="studies to generate")
    parser.add_argument("--size", type=int, default=512, help="image side of generated data")
    parser.add_argument("--workers", type=int, default=2, help="K for the speed-up")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir
        source = f"given: {data_dir}"
        if data_dir is None:
            data_dir = Path(tmp) / "rsna"
            source = build_dataset(data_dir, args.studies, size=args.size)
        series_files, needed = _files(data_dir)
        config = PrepareConfig()
        runs = iter(range(10_000))

        def run_prepare(workers: int) -> Callable[[], object]:
            def run() -> object:
                out = Path(tmp) / f"out{next(runs)}"
                result = prepare_cache(data_dir, out, config, workers=workers, progress=False)
                shutil.rmtree(out)
                return result

            return run

        variants: dict[str, Callable[[], object]] = {
            "bare_all": lambda: _bare(series_files),
            "bare_needed": lambda: _bare(needed),
            "minimal": lambda: _headers_then_decode(series_files, needed),
            "serial": run_prepare(1),
            "parallel": run_prepare(args.workers),
            "control_1": lambda: _control(1),
            "control_k": lambda: _control(args.workers),
        }
        _bare(series_files)  # warm the page cache for everyone
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.repeats):  # interleaved: load from other processes hits all alike
            for name, run in variants.items():
                times[name].append(_seconds(run))
        t = {name: statistics.median(values) for name, values in times.items()}

    n = len(series_files)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    k = args.workers
    print(f"data: {source}")
    print(f"{n} files in the annotated series, {len(needed)} of them decoded by prepare")
    print(f"cores available: {cores}; medians of {args.repeats} interleaved runs")
    print(f"  bare dcmread().pixel_array, all series files    {n / t['bare_all']:8.1f} files/s")
    print(f"  headers of all files + decode of needed files   {n / t['minimal']:8.1f} files/s")
    print(f"  prepare, workers=1                              {n / t['serial']:8.1f} files/s")
    print(f"  prepare, workers={k}                              {n / t['parallel']:8.1f} files/s")
    print(f"(a) prepare / bare dcmread, same files            {t['bare_all'] / t['serial']:.2f}x")
    print(f"    prepare / (headers + needed decodes)          {t['minimal'] / t['serial']:.2f}x")
    print(
        f"    bare decode of the needed files / prepare     {t['bare_needed'] / t['serial']:.2f}x"
    )
    speedup, control = t["serial"] / t["parallel"], t["control_1"] / t["control_k"]
    print(f"(b) prepare speed-up, workers={k} vs 1              {speedup:.2f}x")
    print(f"    CPU-bound control speed-up, {k} vs 1 processes  {control:.2f}x")


if __name__ == "__main__":
    main()
