from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from _rsna_factory import Fixture, Series, make_rsna_dir, plain_study
from torch.utils.data import DataLoader

from lumbarssl.data.cache import PreparedCache
from lumbarssl.data.datasets import DiscDatasetConfig, DiscROIDataset, LocalizerDataset
from lumbarssl.data.prepare import PrepareConfig, prepare_cache
from lumbarssl.data.splits import study_level_split

SMALL = DiscDatasetConfig(input_size=48)


@pytest.fixture(scope="module")
def fixture(tmp_path_factory: pytest.TempPathFactory) -> Fixture:
    quirks = ["empty_severity", "instances_against_space", "odd_shape", "near_border"]
    wide = plain_study(7, Series(71, shape=(48, 64)))
    return make_rsna_dir(tmp_path_factory.mktemp("rsna"), n_plain=6, quirks=quirks, extra=[wide])


@pytest.fixture(scope="module")
def cache_dir(fixture: Fixture, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cache")
    prepare_cache(
        fixture.root,
        out,
        PrepareConfig(roi_size=32, slices=3, localizer_size=64),
        progress=False,
    )
    return out


def test_supervised_items_are_deterministic_and_shaped(cache_dir: Path) -> None:
    dataset = DiscROIDataset(cache_dir, "supervised")
    item = dataset[0]
    assert item["image"].shape == (1, 224, 224)  # the paper's input size (Sec. 4.2)
    assert item["image"].dtype == torch.float32
    assert item["label"].dtype == torch.int64
    assert item["label"].shape == ()
    torch.testing.assert_close(dataset[0]["image"], item["image"], rtol=0, atol=0)


def test_supervised_mode_never_yields_unlabeled_discs(cache_dir: Path) -> None:
    cache = PreparedCache.open(cache_dir)
    assert (cache.table.label == -1).sum() == 1
    dataset = DiscROIDataset(cache, "supervised", config=SMALL)
    assert len(dataset) == len(cache) - 1
    assert all(int(dataset[i]["label"]) >= 0 for i in range(len(dataset)))
    with pytest.raises(ValueError, match="labeled_only must be True"):
        DiscROIDataset(cache, "supervised", labeled_only=False)
    contrastive = DiscROIDataset(cache, "contrastive", config=SMALL)
    assert len(contrastive) == len(cache)  # pretraining may use unlabeled discs


def test_normalisation_uses_the_given_statistics(cache_dir: Path) -> None:
    cache = PreparedCache.open(cache_dir)
    config = DiscDatasetConfig(input_size=32, mean=0.25, std=0.5)
    dataset = DiscROIDataset(cache, "supervised", config=config)
    row = int(dataset.rows[0])
    # Same size: the resize is the identity, so the image is (roi / 255 - mean) / std.
    want = (torch.from_numpy(np.array(cache.rois[row])).float() / 255 - 0.25) / 0.5
    torch.testing.assert_close(dataset[0]["image"][0], want)


def test_default_normalisation_uses_the_cache_statistics(cache_dir: Path) -> None:
    cache = PreparedCache.open(cache_dir)
    rois = np.asarray(cache.rois, dtype=np.float64) / 255
    assert cache.roi_stats() == pytest.approx((rois.mean(), rois.std()))
    dataset = DiscROIDataset(cache, "supervised", config=DiscDatasetConfig(input_size=32))
    images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    labeled = np.asarray(cache.rois)[cache.table.label != -1] / 255
    expected = (labeled - rois.mean()) / rois.std()
    assert float(images.mean()) == pytest.approx(float(expected.mean()), abs=1e-4)


def test_contrastive_views_differ_and_are_keyed_by_seed_epoch_and_stream(cache_dir: Path) -> None:
    dataset = DiscROIDataset(cache_dir, "contrastive", config=SMALL, seed=3)
    views = dataset[0]["image"]
    assert views.shape == (3, 1, 48, 48)  # V = 3 views
    assert not torch.equal(views[0], views[1])
    assert not torch.equal(views[1], views[2])
    torch.manual_seed(123)  # the global generator plays no part
    torch.testing.assert_close(dataset[0]["image"], views, rtol=0, atol=0)
    dataset.set_epoch(1)
    assert not torch.equal(dataset[0]["image"], views)
    dataset.set_epoch(0)
    torch.testing.assert_close(dataset[0]["image"], views, rtol=0, atol=0)
    for other in (
        DiscROIDataset(cache_dir, "contrastive", config=SMALL, seed=4),
        DiscROIDataset(cache_dir, "contrastive", config=SMALL, seed=3, stream=1),
    ):
        assert not torch.equal(other[0]["image"], views)


def _fixed(transform: object, params: dict[str, object], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transform, "make_params", lambda flat_inputs: params)


@pytest.mark.parametrize("contrast_first", [False, True])
@pytest.mark.parametrize("flip", [False, True])
def test_keyed_view_applies_the_train_transform_kernels_exactly(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch, contrast_first: bool, flip: bool
) -> None:
    # Independent reference: torchvision's own RandomRotation, ColorJitter, flip and
    # RandomResizedCrop (train_transform) with their parameter draws pinned to ours.
    dataset = DiscROIDataset(cache_dir, "contrastive", config=SMALL, seed=1)
    roi = dataset.recipe.to_tensor(np.array(dataset.cache.rois[int(dataset.rows[2])]))
    compose = dataset.recipe.train_transform(SMALL)
    rotation, jitter, hflip, crop, _ = compose.transforms
    order = [1, 0, 2, 3] if contrast_first else [0, 1, 2, 3]
    _fixed(rotation, {"angle": -7.25}, monkeypatch)
    _fixed(
        jitter,
        {
            "fn_idx": torch.tensor(order),
            "brightness_factor": 1.13,
            "contrast_factor": 0.87,
            "saturation_factor": None,
            "hue_factor": None,
        },
        monkeypatch,
    )
    monkeypatch.setattr(hflip, "p", 1.0 if flip else 0.0)
    _fixed(crop, {"top": 3, "left": 2, "height": 27, "width": 29}, monkeypatch)
    expected = compose(roi)
    got = dataset.recipe.augmented_view(
        roi,
        angle=-7.25,
        flip=flip,
        box=(3, 2, 27, 29),
        brightness=1.13,
        contrast=0.87,
        contrast_first=contrast_first,
    )
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("persistent", [False, True])
def test_keyed_views_do_not_depend_on_loader_workers(cache_dir: Path, persistent: bool) -> None:
    dataset = DiscROIDataset(cache_dir, "contrastive", config=SMALL, seed=2)
    loader = DataLoader(
        dataset, batch_size=4, num_workers=2, persistent_workers=persistent, shuffle=False
    )
    for epoch in (0, 1, 2):
        dataset.set_epoch(epoch)  # before iterating, as the trainer does
        got = torch.cat([batch["image"] for batch in loader])
        direct = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
        torch.testing.assert_close(got, direct, rtol=0, atol=0)


def test_multislice_items_have_a_mask(cache_dir: Path) -> None:
    dataset = DiscROIDataset(cache_dir, "multislice", config=SMALL)
    item = dataset[0]
    assert item["image"].shape == (3, 1, 48, 48)
    assert item["mask"].dtype == torch.bool
    assert item["mask"].shape == (3,)
    cache = PreparedCache.open(cache_dir)
    # The middle slice is the annotated one: the same ROI as in supervised mode.
    supervised = DiscROIDataset(cache, "supervised", config=SMALL)
    torch.testing.assert_close(item["image"][1], supervised[0]["image"])


def test_multislice_mode_needs_a_multislice_cache(fixture: Fixture, tmp_path: Path) -> None:
    prepare_cache(fixture.root, tmp_path, PrepareConfig(roi_size=16), progress=False)
    with pytest.raises(ValueError, match="--slices"):
        DiscROIDataset(tmp_path, "multislice")


def test_indices_select_a_split(cache_dir: Path) -> None:
    cache = PreparedCache.open(cache_dir)
    train, test = study_level_split(cache.table.label, cache.table.study_id, test_size=0.25)
    dataset = DiscROIDataset(cache, "supervised", config=SMALL, indices=test)
    np.testing.assert_array_equal(dataset.rows, test)
    np.testing.assert_array_equal(dataset.labels, cache.table.label[test])
    assert [int(dataset[i]["index"]) for i in range(len(dataset))] == test.tolist()
    assert not set(dataset.study_ids) & set(cache.table.study_id[train])
    with pytest.raises(IndexError, match=r"indices must be in \[0, "):
        DiscROIDataset(cache, indices=[len(cache)])


@pytest.mark.parametrize("mode", ["supervised", "contrastive"])
def test_dataloader_with_two_workers(cache_dir: Path, mode: str) -> None:
    dataset = DiscROIDataset(cache_dir, mode, config=SMALL)  # type: ignore[arg-type]
    loader = DataLoader(dataset, batch_size=8, num_workers=2, shuffle=False)
    batches = list(loader)
    assert sum(len(b["label"]) for b in batches) == len(dataset)
    shape = (8, 1, 48, 48) if mode == "supervised" else (8, 3, 1, 48, 48)
    assert tuple(batches[0]["image"].shape) == shape
    if mode == "supervised":
        serial = torch.stack([dataset[i]["image"] for i in range(8)])
        torch.testing.assert_close(batches[0]["image"], serial, rtol=0, atol=0)


def test_dataset_pickles_without_its_memmaps(cache_dir: Path) -> None:
    dataset = DiscROIDataset(cache_dir, "supervised", config=SMALL)
    _ = dataset[0]  # opens the memmap in this process
    copy = pickle.loads(pickle.dumps(dataset))
    assert copy.cache._arrays == {}
    torch.testing.assert_close(copy[0]["image"], dataset[0]["image"])


def test_from_rsna_equals_the_prepared_cache(fixture: Fixture, cache_dir: Path) -> None:
    prepare = PrepareConfig(roi_size=32, slices=3, localizer_size=64)
    direct = DiscROIDataset.from_rsna(
        fixture.root, "supervised", prepare_config=prepare, config=SMALL
    )
    cached = DiscROIDataset(cache_dir, "supervised", config=SMALL)
    assert len(direct) == len(cached)
    for i in (0, len(cached) - 1):
        torch.testing.assert_close(direct[i]["image"], cached[i]["image"])
        assert int(direct[i]["label"]) == int(cached[i]["label"])


def test_localizer_items(fixture: Fixture, cache_dir: Path) -> None:
    cache = PreparedCache.open(cache_dir)
    dataset = LocalizerDataset(cache)
    assert len(dataset) == len(cache)  # unlabeled discs have coordinates too
    for i in range(len(dataset)):
        item = dataset[i]
        assert item["image"].shape == (3, 64, 64)
        assert 0.0 <= float(item["image"].min()) <= float(item["image"].max()) <= 1.0
        assert ((item["target"] >= 0) & (item["target"] <= 1)).all()
        back = item["target"].double() * item["scale"].double()
        torch.testing.assert_close(
            back, torch.tensor([cache.table.x[i], cache.table.y[i]], dtype=torch.float64)
        )
        assert int(item["level"]) == int(cache.table.level_id[i])
        torch.testing.assert_close(item["spacing"], torch.tensor([0.625, 0.5]))
    wide = int(np.flatnonzero(cache.table.study_id == 7)[0])
    # x is scaled by the width, y by the height.
    torch.testing.assert_close(dataset[wide]["scale"], torch.tensor([64.0, 48.0]))
    x, y = cache.table.x[wide], cache.table.y[wide]
    torch.testing.assert_close(
        dataset[wide]["target"], torch.tensor([x / 64, y / 48], dtype=torch.float32)
    )


def test_localizer_dataset_from_rsna_and_dataloader(fixture: Fixture) -> None:
    dataset = LocalizerDataset.from_rsna(
        fixture.root, prepare_config=PrepareConfig(roi_size=16, localizer_size=32)
    )
    batch = next(iter(DataLoader(dataset, batch_size=4, num_workers=2)))
    assert tuple(batch["image"].shape) == (4, 3, 32, 32)
    assert tuple(batch["target"].shape) == (4, 2)


def test_incomplete_cache_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a completed prepare output"):
        DiscROIDataset(tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"input_size": 0}, "input_size must be >= 1, got 0"),
     ({"n_views": 0}, "n_views must be >= 1, got 0"),
     ({"crop_scale": (0.9, 0.8)}, r"crop_scale must satisfy"),
     ({"rotation_degrees": -1.0}, r"rotation_degrees must be in \[0, 180\], got -1.0"),
     ({"brightness": 1.5}, r"brightness must be in \[0, 1\), got 1.5"),
     ({"std": 0.0}, "std must be > 0, got 0.0")],
)  # fmt: skip
def test_dataset_config_validation(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DiscDatasetConfig(**kwargs)  # type: ignore[arg-type]


def test_dataset_config_round_trips_through_json() -> None:
    config = DiscDatasetConfig(input_size=128, n_views=4, crop_scale=(0.7, 0.9), mean=0.1, std=0.2)
    assert DiscDatasetConfig.from_json(config.to_json()) == config
    assert DiscDatasetConfig.from_dict(config.to_dict()) == config


def test_paper_defaults() -> None:
    config = DiscDatasetConfig()
    assert (config.input_size, config.n_views, config.crop_scale, config.rotation_degrees) == (
        224,
        3,
        (0.8, 1.0),
        15.0,
    )
    assert (PrepareConfig().roi_size, PrepareConfig().localizer_size) == (96, 256)


def test_unknown_mode_is_rejected(cache_dir: Path) -> None:
    with pytest.raises(ValueError, match="mode must be one of supervised, contrastive, multislice"):
        DiscROIDataset(cache_dir, "views")  # type: ignore[arg-type]
