"""The epoch carried by the sampler: persistent workers give each epoch's batches (issue 12)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from _rsna_factory import make_rsna_dir
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler

from lumbarssl.data.datasets import (
    TRAIN_STREAM,
    DiscDatasetConfig,
    DiscROIDataset,
    EpochKeyedSampler,
)
from lumbarssl.data.prepare import PrepareConfig, prepare_cache
from lumbarssl.pipeline._common import make_loader
from lumbarssl.pipeline.pretrain import PretrainConfig
from lumbarssl.training import RuntimeConfig, seeded_generator
from lumbarssl.training.trainer import (
    _epoch_seed,
    _loader_generators,
    _set_epoch,
    _skip_worker_seed_draw,
)

DATA = DiscDatasetConfig(input_size=32, n_views=2)
SEED = 5
BATCH = 4


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    fixture = make_rsna_dir(tmp_path_factory.mktemp("rsna"), n_plain=3)
    out = tmp_path_factory.mktemp("cache")
    prepare_cache(fixture.root, out, PrepareConfig(roi_size=32, localizer_size=64), progress=False)
    return out


def _dataset(cache_dir: Path) -> DiscROIDataset:
    return DiscROIDataset(
        cache_dir,
        "contrastive",
        config=DATA,
        indices=torch.arange(12),
        seed=SEED,
        stream=TRAIN_STREAM,
    )


def _epochs(
    loader: DataLoader[Any], epochs: int
) -> tuple[list[list[dict[str, Tensor]]], list[list[int]]]:
    """Each epoch's batches, the loader prepared for it as the Trainer prepares it, and the
    process ids of the workers that made them."""
    generators = _loader_generators(loader)
    seeds = [generator.initial_seed() for generator in generators]
    batches, pids = [], []
    for epoch in range(1, epochs + 1):
        for generator, seed in zip(generators, seeds, strict=True):
            generator.manual_seed(_epoch_seed(seed, epoch))
        _skip_worker_seed_draw(loader)
        _set_epoch(loader, epoch - 1)
        iterator = iter(loader)
        batches.append(list(iterator))
        pids.append([w.pid for w in iterator._workers])  # type: ignore[attr-defined]
    return batches, pids


def test_persistent_workers_give_the_batches_of_fresh_workers(cache_dir: Path) -> None:
    # Today's reference: workers started afresh each epoch, the epoch set on the dataset.
    fresh = DataLoader(
        _dataset(cache_dir),
        batch_size=BATCH,
        shuffle=True,
        drop_last=True,
        num_workers=2,
        generator=seeded_generator(SEED),
    )
    config = PretrainConfig(
        cache_dir=str(cache_dir), out_dir="unused", seed=SEED, runtime=RuntimeConfig(num_workers=2)
    )
    persistent = make_loader(
        _dataset(cache_dir), config, batch_size=BATCH, shuffle=True, drop_last=True,
        epoch_in_index=True,
    )  # fmt: skip
    assert persistent.persistent_workers
    assert isinstance(persistent.sampler, EpochKeyedSampler)
    assert len(_loader_generators(persistent)) == len(_loader_generators(fresh)) == 1

    expected, fresh_pids = _epochs(fresh, 3)
    got, pids = _epochs(persistent, 3)
    assert pids[0] == pids[1] == pids[2]  # the same worker processes every epoch
    assert len({tuple(p) for p in fresh_pids}) == 3  # the reference re-spawns them

    assert len(got[0]) == len(expected[0]) == 12 // BATCH
    for epoch, (ours, theirs) in enumerate(zip(got, expected, strict=True)):
        for a, b in zip(ours, theirs, strict=True):
            assert a.keys() == b.keys()
            for key in a:
                assert torch.equal(a[key], b[key]), (epoch, key)
    # The views and the order do change from epoch to epoch.
    assert not torch.equal(got[0][0]["image"], got[1][0]["image"])
    assert not torch.equal(
        torch.cat([b["index"] for b in got[0]]), torch.cat([b["index"] for b in got[1]])
    )


def test_an_epoch_keyed_item_is_the_item_of_that_epoch(cache_dir: Path) -> None:
    dataset = _dataset(cache_dir)
    dataset.set_epoch(2)
    at_two = dataset[3]["image"]
    dataset.set_epoch(0)
    assert torch.equal(dataset[(2, 3)]["image"], at_two)
    assert not torch.equal(dataset[3]["image"], at_two)


def test_the_sampler_pairs_indices_with_the_epoch_and_passes_set_epoch_on() -> None:
    data: Any = range(10)
    inner: DistributedSampler[int] = DistributedSampler(
        data, num_replicas=2, rank=1, shuffle=True, seed=4
    )
    sampler = EpochKeyedSampler(inner)
    assert sampler.shards_by_rank
    assert sampler.generator is None
    sampler.set_epoch(3)
    reference: DistributedSampler[int] = DistributedSampler(
        data, num_replicas=2, rank=1, shuffle=True, seed=4
    )
    reference.set_epoch(3)
    assert list(sampler) == [(3, i) for i in reference]
    assert len(sampler) == len(reference) == 5
    with pytest.raises(ValueError, match="epoch must be >= 0"):
        sampler.set_epoch(-1)
