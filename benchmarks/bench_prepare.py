"""Throughput of ``lumbarssl prepare`` against bare pydicom decoding, and its speed-up with workers.

(a) Files per second of ``prepare_cache(workers=1)`` over the files of every annotated series,
    divided by files per second of ``pydicom.dcmread(f).pixel_array`` over the same files
    (target >= 0.8). The ratio is given by wall time and by the CPU time of this process: on
    a shared machine other jobs stretch wall times unevenly, CPU times much less. Two
    reference points: bare decoding of only the files prepare decodes (annotated slices and
    their neighbours), and what ordering a series with pydicom would cost (every header
    parsed by pydicom, then the needed files decoded), which prepare avoids by reading the
    geometry elements directly.
(b) Wall time of ``workers=1`` / ``workers=K`` (target: near K up to the core count), next to
    the same ratio for a pure-Python CPU task, which shows how much parallelism the machine
    offered during the run (on a shared machine it can be far below K). What cannot be
    parallel is measured too: the CPU time the parent process spends in a ``workers=K`` run
    (reading the index, handing out studies, assembling the outputs) bounds the speed-up on
    K idle cores by Amdahl's law; the total CPU time of all processes, against ``workers=1``,
    shows what the parallel run costs in extra work.

Fairness: each output directory is deleted after its run and everything written is flushed
to disk (``os.sync``) before the next run, outside the timed region: otherwise the writeback
of generated data, or of an earlier run's deleted output, lands on whichever run writes files
next, i.e. on prepare, never on bare pydicom, and gets worse from one repetition to the next.
glibc's allocator is settled first (see ``_settle_allocator``), and the minor page faults per
file are printed so that a variant paying for fresh memory shows. Medians over ``--repeats``
interleaved runs in one process; the load average of the machine is printed before and
after::

    python benchmarks/bench_prepare.py [--data-dir DIR] [--studies 32] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from _bench_data import build_dataset

from lumbarssl.data.constants import IMAGES_DIR
from lumbarssl.data.dicom import read_series_geometry
from lumbarssl.data.index import read_index
from lumbarssl.data.prepare import PrepareConfig, prepare_cache

_CONTROL_LOOPS = 3_000_000
_TARGET_RATIO = 0.8


#: Bytes of one array allocated and freed before timing (see _settle_allocator).
_SETTLE_BYTES = 16 * 2**20


@dataclass(frozen=True)
class _Times:
    wall: float
    cpu: float  # this process
    children: float  # worker processes that ended during the run
    faults: int  # minor page faults of this process


def _settle_allocator() -> None:
    """Put glibc's malloc in the state a long-running process reaches, for every variant.

    glibc adapts its mmap threshold to the largest block freed so far; until it has seen a
    large one, the multi-MiB temporaries of decoding are mapped and unmapped on every file,
    and each new page faults. Which variant pays for that would depend on what ran before it.
    Freeing one 16 MiB block first (below glibc's 32 MiB cap for the adaptation) settles
    the threshold for all variants, and the worker processes inherit it.
    """
    block = np.ones(_SETTLE_BYTES, dtype=np.uint8)
    del block


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _measure(run: Callable[[], object]) -> _Times:
    faults, children = _faults(), _children_cpu()
    cpu, start = time.process_time(), time.perf_counter()
    run()
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu
    return _Times(wall, cpu, _children_cpu() - children, _faults() - faults)


def _bare(files: list[Path]) -> None:
    for path in files:
        _ = pydicom.dcmread(path).pixel_array


def _pydicom_headers_then_decode(files: list[Path], needed: list[Path]) -> None:
    for path in files:
        pydicom.dcmread(path, stop_before_pixels=True)
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


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, help="RSNA layout; a generated one if absent")
    parser.add_argument("--studies", type=int, default=32, help="studies to generate")
    parser.add_argument("--size", type=int, default=512, help="image side of generated data")
    parser.add_argument("--workers", type=int, default=2, help="K for the speed-up")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    k = args.workers

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir
        source = f"given: {data_dir}"
        if data_dir is None:
            data_dir = Path(tmp) / "rsna"
            source = build_dataset(data_dir, args.studies, size=args.size)
            os.sync()  # no writeback of the new files while timing (see above)
        series_files, needed = _files(data_dir)
        config = PrepareConfig()
        outputs = [Path(tmp) / f"out{i}" for i in range(2)]

        def run_prepare(workers: int, out: Path) -> Callable[[], object]:
            return lambda: prepare_cache(data_dir, out, config, workers=workers, progress=False)

        variants: dict[str, Callable[[], object]] = {
            "bare_all": lambda: _bare(series_files),
            "bare_needed": lambda: _bare(needed),
            "pydicom_order": lambda: _pydicom_headers_then_decode(series_files, needed),
            "serial": run_prepare(1, outputs[0]),
            "parallel": run_prepare(k, outputs[1]),
            "control_1": lambda: _control(1),
            "control_k": lambda: _control(k),
        }
        _bare(series_files)  # warm the page cache for everyone
        _settle_allocator()
        load_before = _load()
        times: dict[str, list[_Times]] = {name: [] for name in variants}
        for _ in range(args.repeats):  # interleaved: load from other processes hits all alike
            for name, run in variants.items():
                times[name].append(_measure(run))
                for out in outputs:  # not timed: deleting the output is not part of prepare
                    shutil.rmtree(out, ignore_errors=True)
                os.sync()  # nor is writing back what the run wrote and deleted
        load_after = _load()

    def median(name: str, field: str) -> float:
        return statistics.median(float(getattr(t, field)) for t in times[name])

    wall = {name: median(name, "wall") for name in variants}
    cpu = {name: median(name, "cpu") for name in variants}
    n = len(series_files)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    parent = median("parallel", "cpu")
    total_k = statistics.median(t.cpu + t.children for t in times["parallel"])
    amdahl = 1.0 / (parent / cpu["serial"] + (1.0 - parent / cpu["serial"]) / k)
    ratio_wall, ratio_cpu = wall["bare_all"] / wall["serial"], cpu["bare_all"] / cpu["serial"]

    print(f"data: {source}")
    print(f"{n} files in the annotated series, {len(needed)} of them decoded by prepare")
    print(
        f"python {platform.python_version()}, pydicom {pydicom.__version__}; "
        f"cores available: {cores}; medians of {args.repeats} interleaved runs"
    )
    print(f"load average (1, 5, 15 min): before {load_before}, after {load_after}")
    print(
        "                                                 wall files/s   CPU files/s  faults/file"
    )
    for label, name in (
        ("bare dcmread().pixel_array, all series files", "bare_all"),
        ("pydicom headers of all + decode of needed", "pydicom_order"),
        ("prepare, workers=1", "serial"),
    ):
        faults = median(name, "faults") / n
        print(f"  {label:<46} {n / wall[name]:10.1f} {n / cpu[name]:13.1f} {faults:12.1f}")
    print(f"  {f'prepare, workers={k}':<46} {n / wall['parallel']:10.1f}")
    met = "met" if ratio_wall >= _TARGET_RATIO else "not met"
    print(
        f"(a) prepare / bare dcmread, same files: {ratio_wall:.2f}x wall, {ratio_cpu:.2f}x CPU "
        f"(target >= {_TARGET_RATIO} by wall: {met})"
    )
    for label, name in (
        ("prepare / pydicom-ordered reading", "pydicom_order"),
        ("prepare / bare decode of the needed files", "bare_needed"),
    ):
        print(f"    {label:<42} {wall[name] / wall['serial']:.2f}x")
    speedup, control = wall["serial"] / wall["parallel"], wall["control_1"] / wall["control_k"]
    print(f"(b) prepare speed-up, workers={k} vs 1: {speedup:.2f}x wall")
    print(f"    CPU-bound control speed-up, {k} vs 1 processes: {control:.2f}x")
    print(
        f"    parent CPU in the workers={k} run: {parent:.3f} s = "
        f"{100 * parent / cpu['serial']:.1f} % of the workers=1 run; "
        f"Amdahl bound on {k} idle cores, all of it counted as serial: {amdahl:.2f}x"
    )
    print(f"    CPU of all processes, workers={k} / workers=1: {total_k / cpu['serial']:.2f}")


if __name__ == "__main__":
    main()
