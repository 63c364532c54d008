"""A tiny pretraining-like run, launched by ``torchrun`` in test_training_distributed.py.

Run under ``torchrun --nproc_per_node 2`` it trains with DistributedDataParallel; run as a
plain script (or through :func:`main`) it is the single-process reference. The loss is the
paper's multi-positive NT-Xent, gathered across processes. Each sample carries V fixed "views"
(deterministic, no random augmentation, so both runs see identical inputs) and the encoder +
projection head maps every view to an embedding, as in contrastive pretraining.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from lumbarssl.losses import MultiPositiveNTXent
from lumbarssl.training import (
    RuntimeConfig,
    Trainer,
    TrainerConfig,
    cleanup,
    init_distributed,
)

N_SAMPLES = 32
N_VIEWS = 3
N_FEATURES = 10
EMBED_DIM = 8
SHUFFLE_SEED = 3

Batch = tuple[Tensor, Tensor]


class FixedViews(Dataset[Batch]):
    """Samples of shape (V, F) with a target embedding of shape (D,)."""

    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(0)
        base = torch.randn(N_SAMPLES, 1, N_FEATURES, generator=gen)
        self.views = base + 0.1 * torch.randn(N_SAMPLES, N_VIEWS, N_FEATURES, generator=gen)
        self.targets = torch.randn(N_SAMPLES, EMBED_DIM, generator=gen)

    def __len__(self) -> int:
        return N_SAMPLES

    def __getitem__(self, index: int) -> Batch:
        return self.views[index], self.targets[index]


# Training gathers embeddings from every process, so negatives span the global batch; each
# rank's loss is the mean over its local anchors, and DDP's gradient averaging then gives the
# single-process gradient of the doubled batch. Validation runs on rank 0 alone (the Trainer
# broadcasts its metrics), so it must not gather: it uses the same loss without the gather.
TRAIN_LOSS = MultiPositiveNTXent(temperature=0.1, gather_distributed=True)
LOCAL_LOSS = MultiPositiveNTXent(temperature=0.1, gather_distributed=False)


def make_model() -> nn.Module:
    # No BatchNorm: per-process batch statistics would differ from the single-process ones.
    encoder = nn.Sequential(nn.Linear(N_FEATURES, 32), nn.ReLU(), nn.Linear(32, 16))
    projection = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, EMBED_DIM))
    return nn.Sequential(encoder, projection)


def embed(model: nn.Module, batch: Batch) -> Tensor:
    views, _ = batch
    b, v, f = views.shape
    embeddings: Tensor = model(views.reshape(b * v, f)).reshape(b, v, -1)
    return embeddings


def step(model: nn.Module, batch: Batch) -> Tensor:
    loss: Tensor = TRAIN_LOSS(embed(model, batch))
    return loss


def evaluate(model: nn.Module, batches: Iterable[Batch]) -> dict[str, float]:
    losses = [float(LOCAL_LOSS(embed(model, batch))) for batch in batches]
    return {"loss": sum(losses) / len(losses)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--batch-size", type=int, required=True, help="per process")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args(argv)

    info = init_distributed()
    try:
        torch.manual_seed(0)  # identical initial weights in every process and in the reference
        model = make_model()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        dataset = FixedViews()
        # A DistributedSampler in both runs: with num_replicas=1 it yields the very permutation
        # (seeded by seed + epoch) that the two ranks split as indices[rank::2], so step k of the
        # reference sees exactly the union of the two ranks' step-k batches.
        sampler: DistributedSampler[Batch] = DistributedSampler(
            dataset,
            num_replicas=info.world_size,
            rank=info.rank,
            shuffle=True,
            seed=SHUFFLE_SEED,
        )
        loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler)
        val_loader = DataLoader(dataset, batch_size=8)
        config = TrainerConfig(
            epochs=args.epochs,
            out_dir=args.out,
            runtime=RuntimeConfig(device="cpu", progress="lines"),
            max_grad_norm=1.0,
            monitor="val_loss",
        )
        Trainer(model, optimizer, train_step=step, evaluate=evaluate, config=config).fit(
            loader, val_loader
        )
    finally:
        cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
