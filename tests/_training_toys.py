"""Tiny models, data and train steps shared by the tests of lumbarssl.training."""

# ruff: noqa: NPY002  (these tests exercise NumPy's legacy global generator on purpose)

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler
from torch.utils.data import DataLoader, Dataset

from lumbarssl.training import Trainer, TrainerConfig, seeded_generator

Batch = tuple[Tensor, Tensor]
N_SAMPLES = 24
N_FEATURES = 6
BATCH_SIZE = 6
STEPS_PER_EPOCH = N_SAMPLES // BATCH_SIZE


class NoisyRegression(Dataset[Batch]):
    """y = sum(x); each item adds fresh NumPy noise, as a random augmentation would."""

    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(1234)
        self.x = torch.randn(N_SAMPLES, N_FEATURES, generator=gen)
        self.y = self.x.sum(dim=1, keepdim=True)

    def __len__(self) -> int:
        return N_SAMPLES

    def __getitem__(self, index: int) -> Batch:
        noise = torch.from_numpy(np.random.normal(0.0, 0.1, N_FEATURES).astype(np.float32))
        return self.x[index] + noise, self.y[index]


def make_model() -> nn.Module:
    # Dropout makes the result depend on torch's global RNG as well.
    return nn.Sequential(nn.Linear(N_FEATURES, 16), nn.ReLU(), nn.Dropout(0.25), nn.Linear(16, 1))


def mse_step(model: nn.Module, batch: Batch) -> Tensor:
    x, y = batch
    # Python's random takes part too, so its state must survive a resume.
    scale = 1.0 + 0.01 * random.random()
    return nn.functional.mse_loss(model(x) * scale, y)


@dataclass
class Run:
    """Everything one Trainer run is built from."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: LRScheduler | None
    loader: DataLoader[Batch]
    val_loader: DataLoader[Batch]


def make_run(seed: int, *, epochs: int = 4, lr: float = 1e-2) -> Run:
    """Seed, then build model, Adam, a cosine schedule and a shuffled loader (seed 0)."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = CosineAnnealingLR(optimizer, T_max=epochs)
    dataset = NoisyRegression()
    loader = DataLoader(dataset, batch_size=BATCH_SIZE, shuffle=True, generator=seeded_generator(0))
    val_loader = DataLoader(dataset, batch_size=BATCH_SIZE)
    return Run(model, optimizer, scheduler, loader, val_loader)


def config(out_dir: Path, **overrides: object) -> TrainerConfig:
    settings: dict[str, object] = {
        "epochs": 4,
        "out_dir": str(out_dir),
        "device": "cpu",
        "progress": "off",
        "monitor": "train_loss",
    }
    settings.update(overrides)
    return TrainerConfig.from_dict(settings)


def trainer(
    run: Run, cfg: TrainerConfig, step: Callable[[nn.Module, Batch], Tensor] = mse_step
) -> Trainer[Batch]:
    return Trainer(
        run.model,
        run.optimizer,
        train_step=step,
        config=cfg,
        scheduler=run.scheduler,
    )


class Scripted:
    """An ``evaluate`` returning a fixed sequence of scores and recording the weights it saw."""

    def __init__(self, scores: Sequence[float]) -> None:
        self.scores = list(scores)
        self.weights: list[dict[str, Tensor]] = []

    def __call__(self, model: nn.Module, batches: Iterable[Batch]) -> Mapping[str, float]:
        assert not model.training
        assert not torch.is_grad_enabled()
        self.weights.append(copy.deepcopy(model.state_dict()))
        return {"score": self.scores[len(self.weights) - 1]}
