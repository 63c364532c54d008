from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _rsna_factory import Fixture, make_rsna_dir

from lumbarssl import paper
from lumbarssl.data.cache import PreparedCache
from lumbarssl.data.datasets import (
    DiscDatasetConfig,
    DiscROIDataset,
    LocalizerDataset,
    SeriesLocalizerDataset,
)
from lumbarssl.data.prepare import PrepareConfig, prepare_cache
from lumbarssl.data.recipes import (
    LocalizerRecipe,
    RoiRecipe,
    recipe_from_metadata,
    recipe_to_metadata,
)
from lumbarssl.data.roi import localizer_channel, localizer_input
from lumbarssl.errors import ConfigError, DataError, InputError
from lumbarssl.models import Localizer2p5D, read_checkpoint, save_checkpoint
from lumbarssl.models.checkpoint import RECIPE_KEY
from lumbarssl.pipeline.evaluate import supervised_dataset


@pytest.fixture(scope="module")
def fixture(tmp_path_factory: pytest.TempPathFactory) -> Fixture:
    return make_rsna_dir(tmp_path_factory.mktemp("rsna"), n_plain=3)


@pytest.fixture(scope="module")
def cache(fixture: Fixture, tmp_path_factory: pytest.TempPathFactory) -> PreparedCache:
    out = tmp_path_factory.mktemp("cache")
    config = PrepareConfig(roi_size=32, localizer_size=64, pad_value=0.25)
    prepare_cache(fixture.root, out, config, progress=False)
    return PreparedCache.open(out)


def test_defaults_are_the_papers() -> None:
    roi = RoiRecipe()
    assert (roi.roi_size, roi.input_size, roi.pad_value) == (paper.ROI_SIZE, paper.INPUT_SIZE, 0)
    assert (roi.roi_size, roi.input_size) == (96, 224)  # Sec. 4.2
    loc = LocalizerRecipe()
    assert (loc.slices, loc.stack_size, loc.input_size) == (3, 256, 256)  # Sec. 4.5


@pytest.mark.parametrize(
    "recipe",
    [
        RoiRecipe(roi_size=64, pad_value=0.5, input_size=128, mean=0.3, std=0.2),
        RoiRecipe(mean=0.1, std=0.9, interpolation="bicubic"),
        LocalizerRecipe(input_size=96),
        LocalizerRecipe(slices=5, stack_size=128, interpolation="nearest", antialias=False),
    ],
)
def test_recipes_round_trip_through_checkpoint_metadata(
    recipe: RoiRecipe | LocalizerRecipe,
) -> None:
    stored = recipe_to_metadata(recipe)
    if isinstance(recipe, RoiRecipe):
        assert recipe_from_metadata(stored, RoiRecipe, "x.pt") == recipe
    else:
        assert recipe_from_metadata(stored, LocalizerRecipe, "x.pt") == recipe
    assert type(recipe).from_json(recipe.to_json()) == recipe


def test_the_checkpoint_stores_the_recipe_under_its_key(tmp_path: Path) -> None:
    recipe = LocalizerRecipe(input_size=64)
    path = save_checkpoint(
        tmp_path / "m.pt", Localizer2p5D(), metadata={"seed": 1}, recipe=recipe_to_metadata(recipe)
    )
    metadata = read_checkpoint(path).metadata
    assert metadata["seed"] == 1
    assert metadata[RECIPE_KEY] == {"kind": "localizer", "config": recipe.to_dict()}
    assert recipe_from_metadata(metadata[RECIPE_KEY], LocalizerRecipe, str(path)) == recipe


def test_stored_recipes_are_checked() -> None:
    with pytest.raises(InputError, match=r"x.pt: checkpoint has no preprocessing recipe"):
        recipe_from_metadata(None, RoiRecipe, "x.pt")
    with pytest.raises(InputError, match="malformed"):
        recipe_from_metadata({"kind": "other"}, RoiRecipe, "x.pt")
    with pytest.raises(InputError, match="invalid: unknown RoiRecipe key 'size'"):
        recipe_from_metadata({"kind": "roi", "config": {"size": 3}}, RoiRecipe, "x.pt")
    with pytest.raises(ConfigError, match="no intensity statistics"):
        recipe_to_metadata(RoiRecipe())


@pytest.mark.parametrize(
    ("make", "match"),
    [(lambda: RoiRecipe(pad_value=1.5), r"pad_value must be in \[0, 1\], got 1.5"),
     (lambda: RoiRecipe(mean=0.5), "give both mean and std or neither"),
     (lambda: RoiRecipe(mean=0.5, std=0.0), "std must be > 0, got 0.0"),
     (lambda: RoiRecipe(input_size=0), "roi_size and input_size must be >= 1"),
     (lambda: RoiRecipe(interpolation="lanczos"), "interpolation must be one of"),  # type: ignore[arg-type]
     (lambda: RoiRecipe(interpolation="nearest"), "antialias has no meaning"),
     (lambda: LocalizerRecipe(slices=2), "slices must be an odd number >= 1, got 2"),
     (lambda: LocalizerRecipe(normalization="zscore"), "normalization must be"),  # type: ignore[arg-type]
     (lambda: RoiRecipe(96), "positional")],  # type: ignore[call-arg]
)  # fmt: skip
def test_recipe_validation(make: object, match: str) -> None:
    with pytest.raises((ConfigError, TypeError), match=match):
        make()  # type: ignore[operator]


def test_roi_input_is_the_scaled_standardised_roi_when_sizes_agree() -> None:
    rois = np.arange(2 * 8 * 8, dtype=np.uint8).reshape(2, 8, 8)
    recipe = RoiRecipe(roi_size=8, input_size=8, mean=0.25, std=0.5)
    want = (torch.from_numpy(rois).float()[:, None] / 255 - 0.25) / 0.5
    torch.testing.assert_close(recipe.network_input(rois), want)
    assert recipe.network_input(rois[0]).shape == (1, 8, 8)
    with pytest.raises(ConfigError, match=r"RoiRecipe.from_cache\(cache\)"):
        RoiRecipe().network_input(rois)


def test_localizer_input_is_the_stack_resized_once(cache: PreparedCache) -> None:
    stacks = np.array(cache.localizer_images[:2])
    same = LocalizerRecipe.from_cache(cache)
    assert same.stack_size == same.input_size == 64
    torch.testing.assert_close(same.network_input(stacks), torch.from_numpy(stacks) / 255.0)
    smaller = LocalizerRecipe.from_cache(cache, input_size=40)
    batch = smaller.network_input(stacks)
    want = F.interpolate(
        torch.from_numpy(stacks).float() / 255, size=(40, 40), mode="bilinear", antialias=True
    )
    torch.testing.assert_close(batch, want, rtol=0, atol=0)
    # One stack at a time gives the values of the batch.
    assert torch.equal(smaller.network_input(stacks[1]), batch[1])


def test_localizer_stack_is_what_prepare_stores() -> None:
    rng = np.random.default_rng(1)
    slices = [rng.normal(size=(30, 40)) for _ in range(4)]
    recipe = LocalizerRecipe(stack_size=24)
    stack = recipe.stack(slices, 0)
    assert stack.shape == (3, 24, 24)
    for channel, index in zip(stack, (0, 0, 1), strict=True):  # the edge slice repeated
        np.testing.assert_array_equal(channel, localizer_channel(slices[index], 24))
    five = localizer_input(slices, 1, 8, channels=5)
    np.testing.assert_array_equal(five[4], localizer_channel(slices[3], 8))
    np.testing.assert_array_equal(five[0], localizer_channel(slices[0], 8))


def test_recipes_from_the_cache_carry_its_settings(cache: PreparedCache) -> None:
    roi = RoiRecipe.from_cache(cache, input_size=48)
    assert (roi.roi_size, roi.pad_value, roi.input_size) == (32, 0.25, 48)
    assert (roi.mean, roi.std) == cache.roi_stats()
    with pytest.raises(
        DataError, match=r"holds 32-px ROIs padded with 0.25.*roi_size=96 and pad_value=0.0"
    ):
        DiscROIDataset(cache, recipe=RoiRecipe(mean=0.5, std=0.2))
    with pytest.raises(DataError, match=r"padded with 0\.25, the recipe wants 32-px ROIs padded"):
        DiscROIDataset(cache, recipe=RoiRecipe(roi_size=32, mean=0.5, std=0.2))
    with pytest.raises(DataError, match=r"localizer stacks of shape \(3, 64, 64\)"):
        SeriesLocalizerDataset(cache, recipe=LocalizerRecipe())


def test_dataset_config_may_not_contradict_the_recipe(cache: PreparedCache) -> None:
    recipe = RoiRecipe.from_cache(cache, input_size=48)
    dataset = DiscROIDataset(cache, config=DiscDatasetConfig(n_views=2), recipe=recipe)
    assert dataset[0]["image"].shape == (1, 48, 48)
    with pytest.raises(ConfigError, match=r"input_size 40 \(recipe: 48\)"):
        DiscROIDataset(cache, config=DiscDatasetConfig(input_size=40), recipe=recipe)
    with pytest.raises(ConfigError, match=r"mean 0.1 \(recipe: "):
        DiscROIDataset(cache, config=DiscDatasetConfig(mean=0.1, std=0.2), recipe=recipe)


def test_dataset_without_recipe_builds_the_one_the_training_stage_stores(
    cache: PreparedCache,
) -> None:
    legacy = DiscROIDataset(cache, config=DiscDatasetConfig(input_size=48))
    assert legacy.recipe == RoiRecipe.from_cache(cache, input_size=48)
    explicit = DiscROIDataset(cache, recipe=RoiRecipe.from_cache(cache, input_size=48))
    assert torch.equal(legacy[1]["image"], explicit[1]["image"])


def test_per_disc_localizer_view_matches_the_per_stack_dataset(cache: PreparedCache) -> None:
    recipe = LocalizerRecipe.from_cache(cache, input_size=32)
    stacks = SeriesLocalizerDataset(cache, recipe=recipe)
    discs = LocalizerDataset(cache, recipe=recipe)
    assert len(discs) == len(cache) == 5 * len(stacks)
    seen = 0
    for item in range(len(stacks)):
        sample = stacks[item]
        for level in np.flatnonzero(sample["mask"].numpy()):
            row = int(sample["row"][level])
            disc = discs[row]
            assert int(disc["index"]) == row
            assert int(disc["level"]) == level
            assert torch.equal(disc["image"], sample["image"])
            assert torch.equal(disc["target"], sample["target"][level])
            seen += 1
    assert seen == len(discs)


def test_evaluation_refuses_a_checkpoint_without_a_recipe(cache: PreparedCache) -> None:
    old = {"input_size": 224, "roi_mean": 0.3, "roi_std": 0.2}
    with pytest.raises(InputError, match=r"old\.pt: checkpoint has no preprocessing recipe"):
        supervised_dataset(cache, np.arange(3), old, "old.pt")
    recipe = RoiRecipe.from_cache(cache, input_size=40)
    stored = {RECIPE_KEY: recipe_to_metadata(recipe)}
    dataset = supervised_dataset(cache, np.arange(3), stored, "new.pt")
    assert dataset.recipe == recipe
