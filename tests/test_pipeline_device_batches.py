"""The stages' device path: batches made on the device equal the DataLoader path's, resume-exact.

The supervised and localizer inputs involve no randomness, so on one device the batches made
from the banks must equal the per-sample datasets' items bit for bit; the pretraining views
are keyed by ``(seed, epoch, cache row)``, so an interrupted and resumed run must end with the
weights of an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from _rsna_factory import Fixture, make_rsna_dir
from torch import Tensor

from lumbarssl.data.cache import PreparedCache
from lumbarssl.data.datasets import DiscROIDataset, SeriesLocalizerDataset
from lumbarssl.data.device_data import EpochSampler, RoiBank, StackBank
from lumbarssl.data.prepare import PrepareConfig, prepare_cache
from lumbarssl.data.recipes import LocalizerRecipe, RoiRecipe
from lumbarssl.pipeline import PretrainConfig, run_pretraining
from lumbarssl.pipeline._common import (
    DeviceBatches,
    supervised_batch,
    supervised_loaders,
)
from lumbarssl.pipeline.localize import LocalizerConfig, stack_batch
from lumbarssl.training import RuntimeConfig, load_training_state

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    fixture: Fixture = make_rsna_dir(tmp_path_factory.mktemp("rsna"), n_plain=8)
    out: Path = tmp_path_factory.mktemp("cache")
    prepare_cache(
        fixture.root, out, PrepareConfig(roi_size=32, slices=3, localizer_size=64), progress=False
    )
    return out


@pytest.fixture(scope="module")
def cache(cache_dir: Path) -> PreparedCache:
    return PreparedCache.open(cache_dir)


def _stack(items: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    return {key: torch.stack([item[key] for item in items]) for key in items[0]}


# --- runtime defaults -------------------------------------------------------------------------


def test_runtime_defaults_choose_per_device() -> None:
    runtime = RuntimeConfig()
    assert (runtime.device_data, runtime.channels_last, runtime.compile) == ("auto", None, False)
    assert runtime.use_channels_last("cuda")
    assert not runtime.use_channels_last("cpu")
    assert not RuntimeConfig(channels_last=False).use_channels_last("cuda")
    assert RuntimeConfig(channels_last=True).use_channels_last("cpu")
    with pytest.raises(ValueError, match="device_data"):
        RuntimeConfig(device_data="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="compile_mode"):
        RuntimeConfig(compile_mode="fast")  # type: ignore[arg-type]


# --- DeviceBatches follows the trainer's epochs ------------------------------------------------


def test_device_batches_follow_set_epoch_and_a_fixed_epoch_never_changes() -> None:
    seen: list[tuple[list[int], int]] = []

    def make(positions: Tensor, epoch: int) -> dict[str, Tensor]:
        seen.append((positions.tolist(), epoch))
        return {"x": positions}

    sampler = EpochSampler(10, seed=3, shuffle=True, rank=0, world_size=1)
    batches = DeviceBatches(sampler, 4, make, device=CPU, drop_last=True)
    assert len(batches) == 2
    assert batches.sampler is batches
    batches.set_epoch(5)
    epoch5 = [b["x"].tolist() for b in batches]
    assert [e for _, e in seen] == [5, 5]
    assert [p for batch in epoch5 for p in batch] == sampler.positions(5)[:8].tolist()
    batches.set_epoch(6)
    assert [b["x"].tolist() for b in batches] != epoch5
    batches.set_epoch(5)
    assert [b["x"].tolist() for b in batches] == epoch5  # a resumed epoch repeats exactly

    fixed = DeviceBatches(sampler, 4, make, device=CPU, epoch=0)
    assert len(fixed) == 3  # 4 + 4 + 2
    first = [b["x"].tolist() for b in fixed]
    fixed.set_epoch(9)
    assert [b["x"].tolist() for b in fixed] == first


def test_device_batches_of_two_ranks_partition_the_epoch() -> None:
    def make(positions: Tensor, epoch: int) -> dict[str, Tensor]:
        return {"x": positions}

    shards = [
        DeviceBatches(EpochSampler(12, seed=1, rank=r, world_size=2), 3, make, device=CPU)
        for r in range(2)
    ]
    union = sorted(p for s in shards for b in s for p in b["x"].tolist())
    assert union == list(range(12))


# --- no randomness: bank batches equal the datasets' items ------------------------------------


@pytest.mark.parametrize("size", [32, 48])
def test_supervised_batches_equal_the_dataset_items(cache: PreparedCache, size: int) -> None:
    recipe = RoiRecipe.from_cache(cache, input_size=size)
    dataset = DiscROIDataset(cache, "supervised", recipe=recipe)
    bank = RoiBank.from_cache(cache, CPU, labeled_only=True)
    assert len(bank) == len(dataset) >= 20
    positions = torch.tensor([5, 0, 17, 3])
    batch = supervised_batch(bank, recipe, positions)
    expected = _stack([dataset[int(p)] for p in positions])
    assert batch.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(batch[key], value), key


@pytest.mark.parametrize("size", [64, 40])
def test_localizer_batches_equal_the_dataset_items(cache: PreparedCache, size: int) -> None:
    recipe = LocalizerRecipe.from_cache(cache, input_size=size)
    dataset = SeriesLocalizerDataset(cache, recipe=recipe)
    bank = StackBank.from_cache(cache, CPU)
    assert len(bank) == len(dataset) >= 8
    positions = torch.tensor([2, 0, 7])
    batch = stack_batch(bank, recipe, positions)
    expected = _stack([dataset[int(p)] for p in positions])
    assert batch.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(batch[key], value), key


def test_supervised_loaders_choose_the_path_by_device_data(
    cache: PreparedCache, cache_dir: Path, tmp_path: Path
) -> None:
    recipe = RoiRecipe.from_cache(cache, input_size=32)
    rows = np.arange(len(cache))

    def loaders(mode: str) -> tuple[object, object]:
        config = LocalizerConfig(
            cache_dir=str(cache_dir),
            out_dir=str(tmp_path),
            runtime=RuntimeConfig(device="cpu", num_workers=0, device_data=mode),  # type: ignore[arg-type]
        )
        return supervised_loaders(
            cache, config, recipe, rows[:30], rows[30:], batch_size=8, val_batch_size=16
        )

    on_train, on_val = loaders("on")
    off_train, off_val = loaders("off")
    assert isinstance(on_train, DeviceBatches)
    assert not isinstance(off_train, DeviceBatches)
    on_images = torch.cat([b["image"] for b in on_val])  # type: ignore[attr-defined]
    off_images = torch.cat([b["image"] for b in off_val])  # type: ignore[attr-defined]
    assert torch.equal(on_images, off_images)  # validation: same discs, same order, same inputs
    assert len(on_train) == len(off_train)  # type: ignore[arg-type]


# --- randomness keyed by (seed, epoch, row): resume is exact ------------------------------------


def _pretrain(cache_dir: Path, out: Path, *, resume: bool = False) -> Path:
    config = PretrainConfig(
        cache_dir=str(cache_dir),
        out_dir=str(out),
        epochs=2,
        batch_size=8,
        input_size=32,
        resume=resume,
        runtime=RuntimeConfig(device="cpu", num_workers=0, progress="off", device_data="on"),
    )
    run_pretraining(config)
    return out / "last.pt"


class _Killed(Exception):
    pass


def test_pretraining_on_the_device_path_resumes_bit_exactly(
    cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    straight = load_training_state(_pretrain(cache_dir, tmp_path / "a"))
    original = DeviceBatches.__iter__

    def killed_in_second_epoch(self: DeviceBatches) -> Iterator[dict[str, Tensor]]:
        for step, batch in enumerate(original(self)):
            if self.epoch == 1 and self.shards_by_rank and step == 1 and self.drop_last:
                raise _Killed
            yield batch

    monkeypatch.setattr(DeviceBatches, "__iter__", killed_in_second_epoch)
    with pytest.raises(_Killed):
        _pretrain(cache_dir, tmp_path / "b")
    monkeypatch.setattr(DeviceBatches, "__iter__", original)
    one = load_training_state(tmp_path / "b" / "last.pt")
    resumed = load_training_state(_pretrain(cache_dir, tmp_path / "b", resume=True))
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    # The second epoch changed the weights, so equality above is not trivially true.
    assert not all(torch.equal(v, straight["model"][k]) for k, v in one["model"].items())


# --- on a GPU, where there is one ----------------------------------------------------------------

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@requires_cuda
def test_localizer_batches_on_cuda_equal_the_dataset_items(cache: PreparedCache) -> None:
    # At the stored size the input is a scaling, exact on any device.
    recipe = LocalizerRecipe.from_cache(cache)
    dataset = SeriesLocalizerDataset(cache, recipe=recipe)
    cuda = torch.device("cuda")
    bank = StackBank.from_cache(cache, cuda)
    positions = torch.tensor([1, 0, 3], device=cuda)
    batch = stack_batch(bank, recipe, positions)
    expected = _stack([dataset[int(p)] for p in positions.tolist()])
    for key, value in expected.items():
        assert torch.equal(batch[key].cpu(), value), key


@requires_cuda
def test_supervised_batches_on_cuda_match_the_dataset_items(cache: PreparedCache) -> None:
    # The resize runs in CUDA kernels: equal to float rounding, not bit for bit.
    recipe = RoiRecipe.from_cache(cache, input_size=48)
    dataset = DiscROIDataset(cache, "supervised", recipe=recipe)
    cuda = torch.device("cuda")
    bank = RoiBank.from_cache(cache, cuda, labeled_only=True)
    positions = torch.tensor([5, 0, 17, 3], device=cuda)
    batch = supervised_batch(bank, recipe, positions)
    expected = _stack([dataset[int(p)] for p in positions.tolist()])
    torch.testing.assert_close(batch["image"].cpu(), expected["image"], rtol=0, atol=1e-5)
    assert torch.equal(batch["label"].cpu(), expected["label"])


@requires_cuda
def test_pretraining_runs_on_the_cuda_device_path(cache_dir: Path, tmp_path: Path) -> None:
    config = PretrainConfig(
        cache_dir=str(cache_dir),
        out_dir=str(tmp_path),
        epochs=1,
        batch_size=8,
        input_size=32,
        runtime=RuntimeConfig(device="cuda", num_workers=0, progress="off"),  # auto: on
    )
    result = run_pretraining(config)
    assert np.isfinite(result.history[-1].train_loss)
