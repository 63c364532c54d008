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
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from lumbarssl import paper
from lumbarssl.data.batch_augment import BatchAugment, resize_normalize
from lumbarssl.data.cache import LOCALIZER_NPY, ROIS_NPY, DiscTable, PreparedCache
from lumbarssl.data.constants import LEVELS
from lumbarssl.data.datasets import DiscDatasetConfig, DiscROIDataset, SeriesLocalizerDataset
from lumbarssl.data.device_data import EpochSampler, RoiBank, StackBank, should_use_device_data
from lumbarssl.data.recipes import LocalizerRecipe, RoiRecipe
from lumbarssl.losses import MultiPositiveNTXent, WeightedFocalLoss
from lumbarssl.models import ContrastiveModel, DiscClassifier, Localizer2p5D, resnet18_encoder
from lumbarssl.pipeline._common import supervised_batch
from lumbarssl.pipeline.finetune import _classification_step
from lumbarssl.pipeline.localize import _localizer_step, stack_batch
from lumbarssl.pipeline.pretrain import _contrastive_step
from lumbarssl.training.device import autocast_settings, maybe_compile, move_to_device
from lumbarssl.training.trainer import ACCELERATOR_LOSS_CHECK_EVERY


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
    meta = {
        "roi_stats": {"mean": 0.5, "std": 0.29},
        "config": {"roi_size": roi, "pad_value": 0.0, "localizer_size": stack, "slices": 3},
    }
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


# --- stage step loops: old path, new path, model-only ceiling ---------------------------------


@dataclass(frozen=True)
class LoopRow:
    """One measured step loop of a stage."""

    stage: str
    path: str
    seconds: float  # per step
    images: int  # per step


def _stage_model(stage: str, args: argparse.Namespace) -> tuple[nn.Module, Any]:
    """The stage's model and train step (the stages' own step functions)."""
    torch.manual_seed(0)
    if stage == "pretrain":
        model: nn.Module = ContrastiveModel()
        return model, _contrastive_step(MultiPositiveNTXent(temperature=paper.TEMPERATURE))
    if stage == "finetune":
        model = DiscClassifier(resnet18_encoder(in_chans=1), num_classes=3, mode="finetune")
        return model, _classification_step(WeightedFocalLoss(alpha=paper.FOCAL_ALPHA))
    return Localizer2p5D(), _localizer_step()


def _make_step(
    stage: str,
    next_batch: Callable[[], dict[str, Tensor]],
    args: argparse.Namespace,
    *,
    compile_mode: str | None = None,
) -> Callable[[], None]:
    """One optimisation step of a stage as the trainer takes it, with its own model."""
    device: torch.device = args.device
    model, step = _stage_model(stage, args)
    model.to(device)
    channels_last = device.type == "cuda"  # the stages' default (runtime.channels_last auto)
    memory_format = torch.channels_last if channels_last else None
    if channels_last:
        model.to(memory_format=torch.channels_last)
    train_model = maybe_compile(model, compile_mode is not None, compile_mode or "default")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type in ("cpu", "cuda"))
    amp = autocast_settings(device, "auto")
    train_model.train()

    check_every = 1 if device.type == "cpu" else ACCELERATOR_LOSS_CHECK_EVERY
    pending: list[Tensor] = []

    def one_step() -> None:
        batch = move_to_device(next_batch(), device, memory_format=memory_format)
        with amp.autocast():
            loss = step(train_model, batch)
        # As the trainer: the host reads the losses (divergence check) every check_every steps.
        pending.append(loss.detach())
        if len(pending) >= check_every:
            torch.stack(pending).tolist()
            pending.clear()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if stage == "pretrain":
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    return one_step


def _interleaved(
    steps: dict[str, Callable[[], None]], args: argparse.Namespace, *, warmup: dict[str, int]
) -> dict[str, float]:
    """Median seconds per step of each loop, the loops timed in turn round after round.

    Interleaving spreads a noisy machine's slow spells over every path alike.
    """
    device: torch.device = args.device
    for name, one_step in steps.items():
        for _ in range(warmup.get(name, 1)):
            one_step()
    _sync(device)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, one_step in steps.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                one_step()
            _sync(device)
            times[name].append((time.perf_counter() - start) / args.steps)
    return {name: statistics.median(values) for name, values in times.items()}


def _repeat(batch: dict[str, Tensor]) -> Callable[[], dict[str, Tensor]]:
    return lambda: batch


def measure_loops(cache: PreparedCache, args: argparse.Namespace) -> list[LoopRow]:
    """Each stage's step loop: loader path, device path (+ compile variants), ceiling."""
    device: torch.device = args.device
    rows: list[LoopRow] = []
    size, loc_size = args.loop_size, args.loop_localizer_size
    roi_recipe = RoiRecipe.from_cache(cache, input_size=size)
    mean, std = cache.roi_stats()
    loc_recipe = LocalizerRecipe.from_cache(cache, input_size=loc_size)
    compile_modes: list[str] = []
    if args.compile:
        compile_modes = ["default"]
        if device.type == "cuda":
            compile_modes.append("reduce-overhead")  # CUDA graphs
    data_config = DiscDatasetConfig(input_size=size, n_views=args.views, mean=mean, std=std)
    all_rows = np.arange(len(cache))

    # pretrain: V views of 64 discs
    bank = RoiBank.from_cache(cache, device)
    augment = BatchAugment(data_config, mean=mean, std=std, seed=0)
    positions = _Positions(len(bank), args.batch, device)

    def pretrain_new() -> dict[str, Tensor]:
        batch = bank.gather(positions())
        batch["image"] = augment(batch.pop("roi"), batch["index"], positions.epoch)
        return batch

    # finetune: one deterministic view of 24 graded discs
    labeled = RoiBank.from_cache(cache, device, labeled_only=True)
    ft_positions = _Positions(len(labeled), args.finetune_batch, device)
    # localizer: whole series, ceil(32 / 5) stacks
    stacks = -(-args.localizer_batch // len(LEVELS))
    stack_bank = StackBank.from_cache(cache, device)
    loc_positions = _Positions(len(stack_bank), stacks, device)

    stages: list[tuple[str, int, Callable[[], dict[str, Tensor]], Any]] = [
        (
            "pretrain",
            args.batch * args.views,
            pretrain_new,
            DiscROIDataset(cache, "contrastive", config=data_config, recipe=roi_recipe),
        ),
        (
            "finetune",
            args.finetune_batch,
            lambda: supervised_batch(labeled, roi_recipe, ft_positions()),
            DiscROIDataset(cache, "supervised", recipe=roi_recipe),
        ),
        (
            "localizer",
            stacks,
            lambda: stack_batch(stack_bank, loc_recipe, loc_positions()),
            SeriesLocalizerDataset(cache, all_rows, recipe=loc_recipe),
        ),
    ]
    header = True
    for stage, images, new, dataset in stages:
        if args.stages and stage not in args.stages:
            continue
        batch_size = images // args.views if stage == "pretrain" else images
        steps: dict[str, Callable[[], None]] = {}
        warmup: dict[str, int] = {}
        loaders = []
        for n in sorted({0, args.workers}) if args.old_workers_both else [args.workers]:
            loader = cast(
                Callable[[], dict[str, Tensor]], _loader_path(dataset, batch_size, n, device)
            )
            loaders.append(loader)
            name = f"old: loader, {n} workers"
            steps[name] = _make_step(stage, loader, args)
            warmup[name] = 1 + 2 * n  # let the workers' prefetched batches drain
        steps["new: device data"] = _make_step(stage, new, args)
        fixed = _repeat(new())
        steps["ceiling: model only"] = _make_step(stage, fixed, args)
        sources = [("new", new)] + ([("ceiling", fixed)] if args.compile_ceiling else [])
        for mode in compile_modes:
            for label, source in sources:
                name = f"{label} + compile {mode}"
                began = time.perf_counter()
                try:
                    steps[name] = _make_step(stage, source, args, compile_mode=mode)
                    steps[name]()  # compiles here; a failure is reported, not fatal
                    warmup[name] = 3
                    took = time.perf_counter() - began
                    print(f"{stage}: {name}: first step (compilation) {took:.1f} s", flush=True)
                except Exception as error:
                    steps.pop(name, None)
                    print(f"{stage}: {name} failed: {type(error).__name__}: {error}", flush=True)
        medians = _interleaved(steps, args, warmup=warmup)
        stage_rows = [LoopRow(stage, name, sec, images) for name, sec in medians.items()]
        print_loop_table(stage_rows, header=header)
        header = False
        rows += stage_rows
        del loaders, steps
        gc.collect()
    return rows


def print_loop_table(rows: list[LoopRow], *, header: bool = True) -> None:
    """Print step-loop rows: images/s, share of the (uncompiled) ceiling, speed-up over old."""
    if header:
        print(
            f"{'stage':<10} {'path':<40} {'ms/step':>9} {'images/s':>10} "
            f"{'of ceiling':>10} {'vs old':>7}"
        )
    ceiling = {r.stage: r.seconds for r in rows if r.path == "ceiling: model only"}
    old = {r.stage: r.seconds for r in rows if r.path.startswith("old")}
    for r in rows:
        share = ceiling[r.stage] / r.seconds if r.stage in ceiling else float("nan")
        speedup = old[r.stage] / r.seconds if r.stage in old else float("nan")
        print(
            f"{r.stage:<10} {r.path:<40} {r.seconds * 1e3:>9.2f} {r.images / r.seconds:>10.0f} "
            f"{share:>10.0%} {speedup:>6.2f}x",
            flush=True,
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
    parser.add_argument(
        "--loops", action="store_true", help="time the stages' step loops instead of the inputs"
    )
    parser.add_argument("--steps", type=int, default=2, help="timed steps per round (--loops)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (--loops)")
    parser.add_argument("--loop-size", type=int, default=64, help="ROI input side (--loops)")
    parser.add_argument(
        "--loop-localizer-size", type=int, default=96, help="localizer input side (--loops)"
    )
    parser.add_argument(
        "--stages", nargs="+", choices=["pretrain", "finetune", "localizer"], help="(--loops)"
    )
    parser.add_argument(
        "--compile", action="store_true", help="also torch.compile variants (--loops)"
    )
    parser.add_argument(
        "--compile-ceiling", action="store_true", help="compile the ceiling too (--loops)"
    )
    parser.add_argument(
        "--old-workers-both", action="store_true", help="old path with 0 and N workers (--loops)"
    )
    parser.add_argument("--stack-size", type=int, default=256, help="stored localizer side")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device = torch.device(args.device)
    cache = synthetic_cache(args.studies, stack=args.stack_size)
    nbytes = RoiBank.nbytes_for(cache, len(cache)) + StackBank.nbytes_for(cache, args.studies)
    print(
        f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}; "
        f"torch {torch.__version__}; {torch.get_num_threads()} threads; {len(cache)} discs; "
        f"data {nbytes / 2**20:.0f} MiB, should_use_device_data: "
        f"{should_use_device_data(nbytes, device)}; load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    if args.loops:
        measure_loops(cache, args)
    else:
        print_table(measure(cache, args.sizes, args))


if __name__ == "__main__":
    main()
