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

With ``--checkpoint-every N`` it times instead the :class:`~lumbarssl.training.Trainer`'s step
loop with a checkpoint (``last.pt`` and ``best.pt``, model and AdamW state) written every N
steps (epochs of N steps over in-memory fine-tuning batches), written in the training thread
(``background_checkpoints=False``) against the background writer (the default), interleaved
over repeats, and prints both medians and their ratio::

    python benchmarks/bench_train.py --checkpoint-every 4 [--epochs 3] [--batch 8]
        [--input-size 32] [--repeats 3] [--device auto]
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
from lumbarssl.training import (
    RuntimeConfig,
    Trainer,
    TrainerConfig,
    atomic_save,
    autocast_settings,
    default_num_workers,
    move_to_device,
    select_device,
)

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
        torch.autograd.backward(scaler.scale(loss))
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _fit_seconds(
    batches: list[Batch], device: torch.device, epochs: int, out: Path, *, background: bool
) -> float:
    """Seconds of ``Trainer.fit`` over ``epochs`` epochs of ``batches``, one checkpoint each."""
    torch.manual_seed(0)
    model, loss_of = _setup("supervised", device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    config = TrainerConfig(
        epochs=epochs,
        out_dir=str(out),
        runtime=RuntimeConfig(device=str(device), progress="off"),
        monitor="train_loss",
        loss_guard="off",
        background_checkpoints=background,
    )
    trainer: Trainer[Batch] = Trainer(
        model, optimizer, train_step=lambda _model, batch: loss_of(batch), config=config
    )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    trainer.fit(batches)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def checkpoint_table(args: argparse.Namespace, device: torch.device) -> None:
    """Print the step loop's time with checkpoints written blocking and in the background."""
    size = args.input_size or (224 if device.type == "cuda" else 32)
    generator = torch.Generator().manual_seed(0)
    batches = [
        {
            "image": torch.randn(args.batch, 1, size, size, generator=generator),
            "label": torch.randint(0, 3, (args.batch,), generator=generator),
        }
        for _ in range(args.checkpoint_every)
    ]
    steps = args.checkpoint_every * args.epochs
    times: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory(dir=args.tmp_dir) as tmp:
        model, _ = _setup("supervised", torch.device("cpu"))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        model(batches[0]["image"][:2]).sum().backward()
        optimizer.step()
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
        start = time.perf_counter()
        atomic_save(state, Path(tmp) / "probe.pt")
        save_s = time.perf_counter() - start
        size_mb = (Path(tmp) / "probe.pt").stat().st_size / 2**20
        _fit_seconds(batches, device, 1, Path(tmp) / "warmup", background=False)
        for repeat in range(args.repeats):  # interleaved, the order alternating
            for background in (False, True) if repeat % 2 == 0 else (True, False):
                out = Path(tmp) / f"run-{repeat}-{background}"
                times[background].append(
                    _fit_seconds(batches, device, args.epochs, out, background=background)
                )
    print(
        f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
        f"fine-tuning step (ResNet-18, AdamW), batch {args.batch}, input {size}px, "
        f"{args.epochs} epochs of {args.checkpoint_every} steps, repeats {args.repeats}, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print(f"one checkpoint: {size_mb:.0f} MiB, atomic_save {save_s * 1e3:.0f} ms")
    header = f"{'writes':<12}{'median s':>10}{'ms / step':>11}{'min s':>8}{'max s':>8}"
    print(header + "\n" + "-" * len(header))
    for background, name in ((False, "blocking"), (True, "background")):
        values = times[background]
        median = statistics.median(values)
        print(
            f"{name:<12}{median:>10.2f}{median / steps * 1e3:>11.1f}"
            f"{min(values):>8.2f}{max(values):>8.2f}"
        )
    ratio = statistics.median(times[True]) / statistics.median(times[False])
    print(f"background / blocking (medians): {ratio:.3f}")


def main() -> None:
    """Print the throughput table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=60)
    parser.add_argument("--input-size", type=int, default=None, help="default: 64 CPU, 224 GPU")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--checkpoint-every", type=int, help="time checkpoint writes every N steps instead"
    )
    parser.add_argument("--epochs", type=int, default=3, help="checkpoints (--checkpoint-every)")
    parser.add_argument("--batch", type=int, default=8, help="batch (--checkpoint-every)")
    parser.add_argument("--tmp-dir", help="where the checkpoints go (--checkpoint-every)")
    args = parser.parse_args()
    device = select_device(args.device)
    if args.checkpoint_every is not None:
        checkpoint_table(args, device)
        return
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
        plan: tuple[tuple[Mode, int], ...] = (("contrastive", 64), ("supervised", 24))
        for mode, batch_size in plan:
            dataset = DiscROIDataset(
                Path(tmp) / "cache",
                mode,
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
