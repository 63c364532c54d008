"""Batch assembly time of ``DiscROIDataset`` against a ResNet-18 training step on the same batch.

For ``supervised`` and ``contrastive`` mode, batch sizes 24 (paper Sec. 4.4) and 32, and a
``DataLoader`` with 0 and 2 worker processes: the median time to get the next batch from the
loader (steady state, after one warm-up batch), the median time of one SGD step of a 1-channel
ResNet-18 on a batch of that shape (forward, loss, backward, update; contrastive: the V views
of every disc through the encoder), and their ratio. A ratio below 1 means the step, not the
loading, sets the pace.

::

    python benchmarks/bench_loader.py [--cache-dir OUT_DIR] [--steps 3] [--batches 8]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _bench_data import build_dataset
from torch import nn
from torch.utils.data import DataLoader, RandomSampler
from torchvision.models import resnet18

from lumbarssl.data.datasets import DiscDatasetConfig, DiscROIDataset, Mode
from lumbarssl.data.prepare import prepare_cache


def _model(num_outputs: int) -> nn.Module:
    model: nn.Module = resnet18(num_classes=num_outputs)
    model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


def _step_seconds(mode: Mode, batch: torch.Tensor, steps: int) -> float:
    images = batch.flatten(0, 1) if mode == "contrastive" else batch
    model = _model(128 if mode == "contrastive" else 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    times = []
    for _ in range(steps + 1):  # the first step warms up allocators and kernels
        start = time.perf_counter()
        optimizer.zero_grad()
        output = model(images)
        loss = output.square().mean() if mode == "contrastive" else output.logsumexp(1).mean()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def _loader_seconds(
    dataset: DiscROIDataset, batch_size: int, workers: int, batches: int
) -> tuple[float, torch.Tensor]:
    sampler = RandomSampler(dataset, replacement=True, num_samples=batch_size * (batches + 1))
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers)
    iterator = iter(loader)
    first = next(iterator)["image"]  # warm-up: worker start-up is not batch assembly
    times = []
    for _ in range(batches):
        start = time.perf_counter()
        next(iterator)
        times.append(time.perf_counter() - start)
    return statistics.median(times), first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, help="prepare output; generated if absent")
    parser.add_argument("--studies", type=int, default=16, help="studies to generate")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps")
    parser.add_argument("--batches", type=int, default=8, help="timed batches per loader")
    parser.add_argument("--input-size", type=int, default=224, help="paper Sec. 4.2: 224")
    args = parser.parse_args()
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as tmp:
        cache_dir = args.cache_dir
        source = f"given: {cache_dir}"
        if cache_dir is None:
            data_dir, cache_dir = Path(tmp) / "rsna", Path(tmp) / "cache"
            source = build_dataset(data_dir, args.studies)
            prepare_cache(data_dir, cache_dir, progress=False)
        config = DiscDatasetConfig(input_size=args.input_size)
        print(f"data: {source}; torch threads: {torch.get_num_threads()}")
        print(
            f"{'mode':<12} {'batch':>5} {'workers':>7} {'load ms':>9} {'step ms':>9} {'ratio':>6}"
        )
        for mode in ("supervised", "contrastive"):
            dataset = DiscROIDataset(cache_dir, mode, config=config)
            for batch_size in (24, 32):
                step = None
                for workers in (0, 2):
                    load, batch = _loader_seconds(dataset, batch_size, workers, args.batches)
                    if step is None:
                        step = _step_seconds(mode, batch, args.steps)
                    print(
                        f"{mode:<12} {batch_size:>5} {workers:>7} {load * 1e3:>9.1f} "
                        f"{step * 1e3:>9.1f} {load / step:>6.2f}"
                    )


if __name__ == "__main__":
    main()
