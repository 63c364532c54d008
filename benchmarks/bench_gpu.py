"""Input pipelines of the training stages, today's per-sample loaders against the device path.

Measured side by side in one run, on one device (issue 12, item 5), for each stage's inputs:

* **pretraining** (contrastive, V views per disc): ``DataLoader(DiscROIDataset(...,
  "contrastive"))`` with 0 and N worker processes, batches copied to the device, against
  :class:`~lumbarssl.data.device_data.RoiBank` gathers + :class:`~lumbarssl.data.
  batch_augment.BatchAugment` on the device;
* **fine-tuning** (supervised, one deterministic view): the same loader in ``supervised``
  mode against a bank gather + :func:`~lumbarssl.data.batch_augment.resize_normalize`;
* **localizer** (whole series): ``DataLoader(SeriesLocalizerDataset)`` against
  :class:`~lumbarssl.data.device_data.StackBank` gathers.

Each row gives the time to have one batch ready on the device (the median of three runs of
``--batches`` batches, after two warm-up batches; loader start-up is excluded, and per-epoch
worker start-up is what persistent workers remove),
images (views, stacks) per second, and the old path's time divided by the new one's. The data
are random uint8 ROIs and stacks held in memory: content does not change the cost. The stage
step loops (old vs new, model-only ceiling, share of the ceiling) are added here when the
stages use the device path.

::

    python benchmarks/bench_gpu.py                                  # CPU, quick-profile sizes
    python benchmarks/bench_gpu.py --device cuda --workers 16 --sizes 224 --discs 9686
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from lumbarssl.data.batch_augment import BatchAugment, resize_normalize
from lumbarssl.data.cache import LOCALIZER_NPY, ROIS_NPY, DiscTable, PreparedCache
from lumbarssl.data.constants import LEVELS
from lumbarssl.data.datasets import DiscDatasetConfig, DiscROIDataset
from lumbarssl.data.device_data import EpochSampler, RoiBank, StackBank, should_use_device_data
from lumbarssl.pipeline.localize import SeriesLocalizerDataset


def synthetic_cache(n_studies: int, *, roi: int = 96, stack: int = 256) -> PreparedCache:
    """An in-memory cache of random ROIs (5 discs per study) and localizer stacks."""
    rng = np.random.default_rng(0)
    rows: list[dict[str, object]] = []
    for study in range(n_studies):
        for level_id, level in enumerate(LEVELS):
            label = int(rng.choice([0, 1, 2, -1], p=[0.7, 0.15, 0.1, 0.05]))
            rows.append(
                {
                    "study_id": study,
                    "series_id": study,
                    "instance_number": 1,
                    "level": level,
                    "x": 100.0 + level_id,
                    "y": 50.0 + 40 * level_id,
                    "severity": "",
                    "label": label,
                    "roi_path": "",
                    "row_spacing_mm": 0.7,
                    "col_spacing_mm": 0.7,
                    "height": 384,
                    "width": 384,
                    "slice_index": 7,
                    "n_slices": 15,
                    "localizer_index": study,
                }
            )
    n = len(rows)
    rois = rng.integers(0, 256, size=(n, roi, roi), dtype=np.uint8)
    stacks = rng.integers(0, 256, size=(n_studies, 3, stack, stack), dtype=np.uint8)
    meta = {"roi_stats": {"mean": 0.5, "std": 0.29}}
    arrays = {ROIS_NPY: rois, LOCALIZER_NPY: stacks}
    return PreparedCache(DiscTable.from_rows(rows), meta=meta, arrays=arrays)


@dataclass(frozen=True)
class Row:
    """One measured input path."""

    stage: str
    path: str
    size: int
    seconds: float  # per batch
    images: int  # per batch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seconds(
    next_batch: Callable[[], object], device: torch.device, batches: int, *, prefetched: int = 0
) -> float:
    """Mean seconds per batch over ``batches``, median of 3 runs, after a warm-up.

    The warm-up takes two batches (allocator, kernels, worker start-up) and then the
    ``prefetched`` batches loader workers made meanwhile, so that the runs see the steady
    state, in which the workers produce each batch while the consumer waits.
    """
    for _ in range(2 + prefetched):
        next_batch()
    _sync(device)
    runs = []
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(batches):
            next_batch()
        _sync(device)
        runs.append((time.perf_counter() - start) / batches)
    return statistics.median(runs)


def _to_device(batch: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _loader_path(
    dataset: Any, batch_size: int, workers: int, device: torch.device
) -> Callable[[], object]:
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        drop_last=True,
        generator=torch.Generator().manual_seed(0),
    )

    def batches() -> Iterator[dict[str, Tensor]]:
        while True:
            yield from loader

    iterator = batches()
    return lambda: _to_device(next(iterator), device)


class _Positions:
    """Batches of bank positions, epoch after epoch, as the stages will draw them."""

    def __init__(self, n: int, batch_size: int, device: torch.device) -> None:
        self.sampler = EpochSampler(n, seed=0, rank=0, world_size=1)
        self.batch_size, self.device = batch_size, device
        self.epoch, self.queue = 0, list[Tensor]()

    def __call__(self) -> Tensor:
        if not self.queue:
            self.queue = self.sampler.batches(
                self.epoch, self.batch_size, drop_last=True, device=self.device
            )
            self.epoch += 1
        return self.queue.pop(0)


def _pretrain_path(bank: RoiBank, augment: BatchAugment, batch_size: int) -> Callable[[], Tensor]:
    positions = _Positions(len(bank), batch_size, bank.device)

    def next_batch() -> Tensor:
        batch = bank.gather(positions())
        return augment(batch["roi"], batch["index"], positions.epoch)

    return next_batch


def _finetune_path(
    bank: RoiBank, batch_size: int, size: int, mean: float, std: float
) -> Callable[[], Tensor]:
    positions = _Positions(len(bank), batch_size, bank.device)

    def next_batch() -> Tensor:
        roi = bank.gather(positions())["roi"]
        return resize_normalize(roi, input_size=size, mean=mean, std=std)

    return next_batch


def _localizer_path(bank: StackBank, batch_size: int) -> Callable[[], dict[str, Tensor]]:
    positions = _Positions(len(bank), batch_size, bank.device)
    return lambda: bank.gather(positions())


def _loader_seconds(dataset: Any, batch_size: int, workers: int, args: argparse.Namespace) -> float:
    path = _loader_path(dataset, batch_size, workers, args.device)
    seconds = _seconds(path, args.device, max(args.batches, workers), prefetched=2 * workers)
    del path
    gc.collect()  # shut the workers down before the next row is timed
    return seconds


def measure(cache: PreparedCache, sizes: list[int], args: argparse.Namespace) -> list[Row]:
    """Time every stage's input path, new and old, at each input size."""
    device = args.device
    rows: list[Row] = []
    mean, std = cache.roi_stats()
    bank = RoiBank.from_cache(cache, device)
    labeled = RoiBank.from_cache(cache, device, labeled_only=True)
    workers = sorted({0, args.workers})
    for size in sizes:
        config = DiscDatasetConfig(input_size=size, n_views=args.views, mean=mean, std=std)
        views = args.batch * args.views
        augment = BatchAugment(config, mean=mean, std=std, seed=0)
        seconds = _seconds(_pretrain_path(bank, augment, args.batch), device, args.batches)
        rows.append(Row("pretrain", "bank + BatchAugment", size, seconds, views))
        contrastive = DiscROIDataset(cache, "contrastive", config=config)
        for n in workers:
            seconds = _loader_seconds(contrastive, args.batch, n, args)
            rows.append(Row("pretrain", f"loader, {n} workers", size, seconds, views))

        discs = args.finetune_batch
        path = _finetune_path(labeled, discs, size, mean, std)
        seconds = _seconds(path, device, args.batches)
        rows.append(Row("finetune", "bank + resize_normalize", size, seconds, discs))
        supervised = DiscROIDataset(cache, "supervised", config=config)
        for n in workers:
            seconds = _loader_seconds(supervised, discs, n, args)
            rows.append(Row("finetune", f"loader, {n} workers", size, seconds, discs))

    stacks = -(-args.localizer_batch // len(LEVELS))  # whole series, as the stage batches
    side = int(cache.localizer_images.shape[-1])
    stack_bank = StackBank.from_cache(cache, device)
    seconds = _seconds(_localizer_path(stack_bank, stacks), device, args.batches)
    rows.append(Row("localizer", "StackBank", side, seconds, stacks))
    series = SeriesLocalizerDataset(cache, np.arange(len(cache)))
    for n in workers:
        seconds = _loader_seconds(series, stacks, n, args)
        rows.append(Row("localizer", f"loader, {n} workers", side, seconds, stacks))
    return rows


def print_table(rows: list[Row]) -> None:
    """Print the rows with images/s and the ratio to the new path of their stage."""
    print(
        f"{'stage':<10} {'input':>5} {'path':<26} {'ms/batch':>9} {'images/s':>10} {'old/new':>8}"
    )
    new = {(r.stage, r.size): r.seconds for r in rows if not r.path.startswith("loader")}
    for r in rows:
        ratio = r.seconds / new[(r.stage, r.size)]
        print(
            f"{r.stage:<10} {r.size:>5} {r.path:<26} {r.seconds * 1e3:>9.2f} "
            f"{r.images / r.seconds:>10.0f} {ratio:>8.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--studies", type=int, default=80, help="studies (5 discs each)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 224], help="input sides")
    parser.add_argument("--batch", type=int, default=64, help="discs per pretraining batch")
    parser.add_argument("--views", type=int, default=3, help="views per disc (Sec. 4.3)")
    parser.add_argument("--finetune-batch", type=int, default=24, help="Sec. 4.4: 24")
    parser.add_argument("--localizer-batch", type=int, default=32, help="discs, Sec. 4.5: 32")
    parser.add_argument("--workers", type=int, default=2, help="loader workers of the old path")
    parser.add_argument("--batches", type=int, default=4, help="timed batches per run")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device = torch.device(args.device)
    cache = synthetic_cache(args.studies)
    nbytes = RoiBank.nbytes_for(cache, len(cache)) + StackBank.nbytes_for(cache, args.studies)
    print(
        f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}; "
        f"torch {torch.__version__}; {torch.get_num_threads()} threads; {len(cache)} discs; "
        f"data {nbytes / 2**20:.0f} MiB, should_use_device_data: "
        f"{should_use_device_data(nbytes, device)}; load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    print_table(measure(cache, args.sizes, args))


if __name__ == "__main__":
    main()
