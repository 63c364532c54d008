from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _rsna_factory import Fixture, make_rsna_dir
from torch.utils.data import DistributedSampler, TensorDataset

from lumbarssl.data.cache import PreparedCache
from lumbarssl.data.constants import LEVELS
from lumbarssl.data.datasets import DiscROIDataset
from lumbarssl.data.device_data import (
    DEVICE_DATA_SHARE,
    EpochSampler,
    RoiBank,
    StackBank,
    resolve_device_data,
    should_use_device_data,
)
from lumbarssl.data.prepare import PrepareConfig, prepare_cache
from lumbarssl.errors import ConfigError


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> PreparedCache:
    fixture: Fixture = make_rsna_dir(
        tmp_path_factory.mktemp("rsna"), n_plain=5, quirks=["empty_severity", "odd_shape"]
    )
    out: Path = tmp_path_factory.mktemp("cache")
    prepare_cache(
        fixture.root, out, PrepareConfig(roi_size=32, slices=3, localizer_size=64), progress=False
    )
    return PreparedCache.open(out)


# --- the sampler gives DistributedSampler's shards --------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 7, 10, 33])
@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("shuffle", [False, True])
def test_sampler_shards_equal_distributed_sampler(
    n: int, world_size: int, drop_last: bool, shuffle: bool
) -> None:
    data = TensorDataset(torch.arange(n))
    for rank in range(world_size):
        ours = EpochSampler(
            n, seed=5, shuffle=shuffle, drop_last=drop_last, rank=rank, world_size=world_size
        )
        theirs: DistributedSampler[tuple[torch.Tensor, ...]] = DistributedSampler(
            data,
            num_replicas=world_size,
            rank=rank,
            shuffle=shuffle,
            seed=5,
            drop_last=drop_last,
        )
        for epoch in (0, 3):
            theirs.set_epoch(epoch)
            assert ours.positions(epoch).tolist() == list(theirs), (rank, epoch)
            assert len(ours) == len(theirs)


def test_sampler_order_depends_on_seed_and_epoch_only() -> None:
    sampler = EpochSampler(100, seed=1, rank=0, world_size=1)
    assert torch.equal(sampler.positions(4), EpochSampler(100, seed=1).positions(4))
    assert not torch.equal(sampler.positions(4), sampler.positions(5))
    assert sorted(sampler.positions(4).tolist()) == list(range(100))


def test_sampler_batches() -> None:
    sampler = EpochSampler(10, seed=0, rank=0, world_size=1)
    batches = sampler.batches(2, 4)
    assert [len(b) for b in batches] == [4, 4, 2]
    assert torch.cat(batches).tolist() == sampler.positions(2).tolist()
    assert [len(b) for b in sampler.batches(2, 4, drop_last=True)] == [4, 4]
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        sampler.batches(0, 0)
    with pytest.raises(ValueError, match="rank=2, world_size=2"):
        EpochSampler(10, rank=2, world_size=2)


# --- the ROI bank holds what the dataset reads -------------------------------------------------


def test_roi_bank_gathers_the_cache_rows(cache: PreparedCache) -> None:
    bank = RoiBank.from_cache(cache, "cpu", multislice=True)
    assert len(bank) == len(cache)
    positions = torch.tensor([3, 0, len(cache) - 1, 3])
    batch = bank.gather(positions)
    rows = positions.numpy()
    np.testing.assert_array_equal(batch["roi"].numpy(), np.asarray(cache.rois)[rows])
    np.testing.assert_array_equal(batch["label"].numpy(), cache.table.label[rows])
    np.testing.assert_array_equal(batch["level"].numpy(), cache.table.level_id[rows])
    np.testing.assert_array_equal(batch["index"].numpy(), rows)
    np.testing.assert_array_equal(batch["multislice"].numpy(), np.asarray(cache.multislice)[rows])
    np.testing.assert_array_equal(batch["mask"].numpy(), np.asarray(cache.multislice_mask)[rows])
    assert batch["roi"].dtype == torch.uint8
    assert bank.nbytes == RoiBank.nbytes_for(cache, len(cache), multislice=True)


def test_roi_bank_selects_rows_like_the_dataset(cache: PreparedCache) -> None:
    split = np.arange(0, len(cache), 2)
    for mode, labeled_only in (("supervised", True), ("contrastive", False)):
        dataset = DiscROIDataset(cache, mode, indices=split)  # type: ignore[arg-type]
        bank = RoiBank.from_cache(cache, "cpu", rows=split, labeled_only=labeled_only)
        np.testing.assert_array_equal(bank.rows.numpy(), dataset.rows)
        item = dataset[1]
        batch = bank.gather(torch.tensor([1]))
        assert int(batch["index"][0]) == int(item["index"])
        assert int(batch["label"][0]) == int(item["label"])
    assert (RoiBank.from_cache(cache, "cpu", labeled_only=True).labels >= 0).all()
    with pytest.raises(IndexError, match="rows must be in"):
        RoiBank.from_cache(cache, "cpu", rows=[len(cache)])


def test_roi_bank_refuses_mismatched_tensors() -> None:
    rois = torch.zeros(3, 4, 4, dtype=torch.uint8)
    ids = torch.arange(3)
    with pytest.raises(ValueError, match="one length and one device"):
        RoiBank(rois, ids, ids, torch.arange(2))
    with pytest.raises(ValueError, match=r"uint8 \(N, H, W\)"):
        RoiBank(rois.float(), ids, ids, ids)


# --- the stack bank groups discs by localizer input --------------------------------------------


def test_stack_bank_groups_rows_by_stack(cache: PreparedCache) -> None:
    table = cache.table
    rows = np.arange(1, len(cache))  # leave one disc out: its level must be masked
    bank = StackBank.from_cache(cache, "cpu", rows=rows)
    stacks = sorted(set(table.localizer_index[rows].tolist()))
    assert len(bank) == len(stacks)
    batch = bank.gather(torch.arange(len(bank)))
    assert batch["image"].shape == (len(stacks), 3, 64, 64)
    assert batch["level"].tolist() == [list(range(len(LEVELS)))] * len(stacks)
    # Reference written from the table, disc by disc.
    for position, stack in enumerate(stacks):
        members = [r for r in rows.tolist() if table.localizer_index[r] == stack]
        first = members[0]
        width, height = float(table.width[first]), float(table.height[first])
        want_image = np.asarray(cache.localizer_images[stack], dtype=np.float32) / 255
        np.testing.assert_allclose(batch["image"][position].numpy(), want_image, rtol=0, atol=0)
        assert batch["scale"][position].tolist() == [width, height]
        spacing = [float(table.col_spacing_mm[first]), float(table.row_spacing_mm[first])]
        np.testing.assert_allclose(batch["spacing"][position].numpy(), spacing, rtol=1e-6)
        for level in range(len(LEVELS)):
            match = [r for r in members if table.level_id[r] == level]
            assert bool(batch["mask"][position, level]) == bool(match)
            assert int(batch["row"][position, level]) == (match[0] if match else -1)
            if match:
                want = [table.x[match[0]] / width, table.y[match[0]] / height]
                np.testing.assert_allclose(batch["target"][position, level].numpy(), want, 1e-6)
    assert bank.nbytes == StackBank.nbytes_for(cache, len(bank))


def test_stack_bank_refuses_two_discs_of_one_level(cache: PreparedCache) -> None:
    with pytest.raises(ValueError, match="same level of one localizer stack"):
        StackBank.from_cache(cache, "cpu", rows=[0, 0])


# --- when to hold the data on the device -------------------------------------------------------


def test_device_data_is_off_on_the_cpu() -> None:
    assert not should_use_device_data(10, "cpu")
    assert not resolve_device_data("auto", 10, "cpu")
    assert resolve_device_data("on", 10**15, "cpu")
    assert not resolve_device_data("off", 10, "cpu")


def test_device_data_on_cuda_follows_the_free_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    free = 1000 * 2**20
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, 4 * free))
    limit = int(DEVICE_DATA_SHARE * free)
    assert should_use_device_data(limit, "cuda:0")
    assert not should_use_device_data(limit + 1, "cuda:0")
    assert should_use_device_data(free, "cuda", share=1.0)
    assert not resolve_device_data("auto", free, "cuda")
    assert resolve_device_data("on", free, "cuda")
    with pytest.raises(ConfigError, match=r"takes 1001 MiB but cuda has 1000 MiB free"):
        resolve_device_data("on", free + 2**20, "cuda")


def test_device_data_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="device_data must be auto, on or off, got 'yes'"):
        resolve_device_data("yes", 1, "cpu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"share must be in \(0, 1\], got 0"):
        should_use_device_data(1, "cpu", share=0)
    with pytest.raises(ValueError, match="nbytes must be >= 0"):
        should_use_device_data(-1, "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_banks_on_cuda_gather_without_leaving_the_device(cache: PreparedCache) -> None:
    bank = RoiBank.from_cache(cache, "cuda")
    positions = EpochSampler(len(bank), seed=0).batches(0, 4, device="cuda")[0]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # a gather never waits for the device
    try:
        batch = bank.gather(positions)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(t.device.type == "cuda" for t in batch.values())
    np.testing.assert_array_equal(
        batch["roi"].cpu().numpy(), np.asarray(cache.rois)[batch["index"].cpu().numpy()]
    )
    stacks = StackBank.from_cache(cache, "cuda")
    assert stacks.gather(torch.arange(2, device="cuda"))["image"].device.type == "cuda"
