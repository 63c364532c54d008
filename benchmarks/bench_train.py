"""Training throughput from the real input pipeline against tensors already in memory.

For the two training steps of the paper, contrastive pretraining (ContrastiveModel, V=3 views,
multi-positive NT-Xent, gradient clipping) and fine-tuning (DiscClassifier in ``finetune`` mode,
weighted focal loss), it times a fixed number of optimizer steps

* fed by a ``DataLoader`` over :class:`~lumbarssl.data.DiscROIDataset` on a prepared cache (the
  real pipeline: memory-mapped ROIs, resize, augmentation, collation, worker processes), and
* fed by the same batches precomputed and held in memory,

interleaved over repeats, and prints the median images/s of each and the gap
``1 - pipeline / in-memory``: the share of training time the input pipeline costs (target
below 10 %). On a GPU it uses automatic mixed precision and channels_last, as the trainer does.

::

    python benchmarks/bench_train.py [--studies 60] [--input-size 64] [--steps 8] [--repeats 3]
        [--workers N] [--device auto]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from _bench_data import build_dataset
from torch import Tensor, nn
from torch.utils.data import DataLoader, RandomSampler

from lumbarssl.data.datasets import DiscDatasetConfig, DiscROIDataset, Mode
from lumbarssl.data.prepare import PrepareConfig, prepare_cache
from lumbarssl.losses import MultiPositiveNTXent, WeightedFocalLoss
from lumbarssl.models import ContrastiveModel, DiscClassifier, resnet18_encoder
from lumbarssl.training import autocast_settings, default_num_workers, move_to_device, select_device

Batch = dict[str, Tensor]


def _setup(mode: Mode, device: torch.device) -> tuple[nn.Module, Callable[[Batch], Tensor]]:
    if mode == "contrastive":
        model: nn.Module = ContrastiveModel()
        ntxent = MultiPositiveNTXent(temperature=0.1)

        def contrastive(batch: Batch) -> Tensor:
            images = batch["image"]
            n, v = images.shape[:2]
            loss: Tensor = ntxent(model(images.flatten(0, 1)).view(n, v, -1))
            return loss

        return model.to(device), contrastive
    model = DiscClassifier(resnet18_encoder(in_chans=1), mode="finetune")
    focal = WeightedFocalLoss().to(device)

    def finetune(batch: Batch) -> Tensor:
        loss: Tensor = focal(model(batch["image"]), batch["label"])
        return loss

    return model.to(device), finetune


def _run(
    batches: Iterator[Batch], steps: int, mode: Mode, device: torch.device, channels_last: bool
) -> float:
    """Seconds for ``steps`` optimizer steps (after one warm-up step) fed by ``batches``."""
    torch.manual_seed(0)
    model, loss_of = _setup(mode, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    amp = autocast_settings(device)
    scaler = amp.grad_scaler()
    memory_format = torch.channels_last if channels_last else None
    start = 0.0
    for i in range(steps + 1):
        if i == 1:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
        batch = move_to_device(next(batches), device, memory_format=memory_format)
        optimizer.zero_grad(set_to_none=True)
        with amp.autocast():
            loss = loss_of(batch)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    """Print the throughput table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=60)
    parser.add_argument("--input-size", type=int, default=None, help="default: 64 CPU, 224 GPU")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = select_device(args.device)
    size = args.input_size or (224 if device.type == "cuda" else 64)
    workers = default_num_workers() if args.workers is None else args.workers
    channels_last = device.type == "cuda"
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        writer = build_dataset(data, args.studies)
        prepare_cache(data, Path(tmp) / "cache", PrepareConfig(), workers=2, progress=False)
        print(
            f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
            f"loader workers {workers}, input {size}px, data: {writer} ({args.studies} studies), "
            f"amp {autocast_settings(device).dtype if autocast_settings(device).enabled else 'off'}"
            f", channels_last {channels_last}, load average {os.getloadavg()[0]:.2f}"
        )
        header = f"{'step':<12}{'batch':>6}{'pipeline img/s':>16}{'in-memory img/s':>17}{'gap':>8}"
        print(header + "\n" + "-" * len(header))
        for mode, batch_size in (("contrastive", 64), ("supervised", 24)):
            dataset = DiscROIDataset(
                Path(tmp) / "cache",
                mode,  # type: ignore[arg-type]
                config=DiscDatasetConfig(input_size=size),
                labeled_only=mode == "supervised",
            )
            sampler = RandomSampler(
                dataset, replacement=True, num_samples=batch_size * (args.steps + 1) * 1000
            )
            loader = DataLoader(
                dataset,
                batch_size=batch_size,
                sampler=sampler,
                num_workers=workers,
                pin_memory=device.type == "cuda",
                persistent_workers=workers > 0,
            )
            iterator = iter(loader)
            cached = [next(iterator) for _ in range(args.steps + 1)]
            images = batch_size * (3 if mode == "contrastive" else 1) * args.steps
            piped, memory = [], []
            for _ in range(args.repeats):  # interleaved
                piped.append(images / _run(iterator, args.steps, mode, device, channels_last))
                memory.append(images / _run(iter(cached), args.steps, mode, device, channels_last))
            p, m = statistics.median(piped), statistics.median(memory)
            name = "contrastive" if mode == "contrastive" else "finetune"
            print(f"{name:<12}{batch_size:>6}{p:>16.1f}{m:>17.1f}{1 - p / m:>8.1%}")
    print("gap = 1 - pipeline / in-memory: the share of step time the input pipeline adds")


if __name__ == "__main__":
    main()
