"""Train/serve parity: the tensors ``predict`` feeds a model are bit for bit those it trained on.

Training reads the cache ``prepare`` wrote, through the datasets; serving reads the DICOM
series again, through :class:`~lumbarssl.pipeline.DiscGrader` built from checkpoints that
carry their recipes. The slices hold random noise (every pixel differs, so any difference in
resampling, normalisation or padding shows), are not square, and the disc centres sit close
to the border, so the ROIs are padded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from _rsna_factory import Series, make_rsna_dir, plain_study

from lumbarssl.data.cache import PreparedCache
from lumbarssl.data.datasets import DiscROIDataset, SeriesLocalizerDataset
from lumbarssl.data.dicom import DicomSeries, read_series
from lumbarssl.data.prepare import PrepareConfig, prepare_cache
from lumbarssl.data.recipes import LocalizerRecipe, RoiRecipe
from lumbarssl.data.roi import localizer_input
from lumbarssl.errors import InputError
from lumbarssl.models import (
    DiscClassifier,
    Localizer2p5D,
    load_checkpoint,
    read_checkpoint,
    resnet18_encoder,
    save_checkpoint,
)
from lumbarssl.pipeline import DiscGrader, convert_checkpoint, legacy_recipe, load_recipe

SIZES = (64, 96, 128, 224, 256)
PAD = 0.3  # not the default, so a serve path that forgot the padding fails


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, PreparedCache]:
    root = tmp_path_factory.mktemp("rsna")
    wide = plain_study(7, Series(71, shape=(150, 210)))
    fixture = make_rsna_dir(root, n_plain=1, extra=[wide])
    rng = np.random.default_rng(0)
    for path in sorted(fixture.root.rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        shape = ds.pixel_array.shape
        ds.PixelData = rng.integers(0, 4000, shape).astype(np.uint16).tobytes()
        ds.save_as(path)
    out = tmp_path_factory.mktemp("cache")
    config = PrepareConfig(roi_size=96, localizer_size=256, pad_value=PAD)
    prepare_cache(fixture.root, out, config, progress=False)
    return fixture.root, PreparedCache.open(out)


@pytest.fixture(scope="module")
def old_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A classifier and a localizer saved without recipes, as before recipes existed."""
    folder = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    classifier = DiscClassifier(resnet18_encoder(in_chans=1), num_classes=3, mode="finetune")
    localizer = Localizer2p5D()
    return (
        save_checkpoint(folder / "classifier.pt", classifier, metadata={"input_size": 224}),
        save_checkpoint(folder / "localizer.pt", localizer, metadata={"input_size": 256}),
    )


def _series(root: Path, cache: PreparedCache, row: int) -> tuple[DicomSeries, int]:
    table = cache.table
    series = read_series(
        root / "train_images" / str(table.study_id[row]) / str(table.series_id[row])
    )
    return series, series.geometry.index_of(int(table.instance_number[row]))


def _grader(
    checkpoints: tuple[Path, Path], roi: RoiRecipe, loc: LocalizerRecipe, folder: Path
) -> DiscGrader:
    classifier, localizer = checkpoints
    return DiscGrader(
        convert_checkpoint(localizer, loc, out=folder / "localizer.pt"),
        convert_checkpoint(classifier, roi, out=folder / "classifier.pt"),
        device="cpu",
    )


@pytest.mark.parametrize("size", SIZES)
def test_training_and_serving_build_identical_inputs(
    data: tuple[Path, PreparedCache],
    old_checkpoints: tuple[Path, Path],
    tmp_path: Path,
    size: int,
) -> None:
    root, cache = data
    roi_recipe = RoiRecipe.from_cache(cache, input_size=size)
    loc_recipe = LocalizerRecipe.from_cache(cache, input_size=size)
    grader = _grader(old_checkpoints, roi_recipe, loc_recipe, tmp_path)
    # The recipes went through the checkpoints' metadata and came back equal.
    assert (grader.roi_recipe, grader.localizer_recipe) == (roi_recipe, loc_recipe)

    discs = DiscROIDataset(cache, "supervised", recipe=roi_recipe)
    assert len(discs) >= 10
    for item in range(len(discs)):
        row = int(discs.rows[item])
        series, index = _series(root, cache, row)
        served = grader.classifier_input(
            series.pixels[index], float(cache.table.x[row]), float(cache.table.y[row])
        )
        trained = discs[item]["image"]
        assert trained.shape == (1, size, size)
        assert torch.equal(served, trained), f"disc row {row} at {size} px"

    stacks = SeriesLocalizerDataset(cache, recipe=loc_recipe)
    assert len(stacks) == 2
    for item in range(len(stacks)):
        sample = stacks[item]
        row = int(sample["row"][sample["mask"]][0])
        series, center = _series(root, cache, row)
        served = grader.localizer_input(list(series.pixels), center)
        assert sample["image"].shape == (3, size, size)
        assert torch.equal(served, sample["image"]), f"localizer stack {item} at {size} px"
        if size != loc_recipe.stack_size:
            # The serve path before recipes (the raw slices resized straight to the input
            # size) differs: this test can tell the two apart.
            skewed = torch.from_numpy(localizer_input(list(series.pixels), center, size)) / 255.0
            assert not torch.equal(skewed, sample["image"])


def test_a_checkpoint_without_a_recipe_is_refused_with_the_conversion(
    old_checkpoints: tuple[Path, Path],
) -> None:
    classifier, localizer = old_checkpoints
    with pytest.raises(InputError, match=r"no preprocessing recipe.*convert_checkpoint\("):
        DiscGrader(localizer, classifier, device="cpu")


def test_conversion_checks_the_kind_of_recipe(
    old_checkpoints: tuple[Path, Path], tmp_path: Path
) -> None:
    classifier, localizer = old_checkpoints
    with pytest.raises(InputError, match="Localizer2p5D, which needs a LocalizerRecipe"):
        convert_checkpoint(localizer, RoiRecipe(mean=0.5, std=0.2), out=tmp_path / "x.pt")
    with pytest.raises(InputError, match="needs a RoiRecipe"):
        convert_checkpoint(classifier, LocalizerRecipe(), out=tmp_path / "x.pt")
    converted = convert_checkpoint(classifier, RoiRecipe(mean=0.5, std=0.2), out=tmp_path / "c.pt")
    with pytest.raises(InputError, match="already holds another recipe"):
        convert_checkpoint(converted, RoiRecipe(mean=0.4, std=0.2))
    # A classifier's recipe given for the localizer: the kinds are told apart.
    loc = convert_checkpoint(localizer, LocalizerRecipe(), out=tmp_path / "l.pt")
    with pytest.raises(InputError, match="holds a 'localizer' recipe, expected a 'roi' one"):
        load_recipe(read_checkpoint(loc).metadata, RoiRecipe, loc)


def test_legacy_recipe_reads_the_old_metadata_and_the_cache(
    data: tuple[Path, PreparedCache], old_checkpoints: tuple[Path, Path], tmp_path: Path
) -> None:
    _, cache = data
    classifier, localizer = old_checkpoints
    assert legacy_recipe(localizer, cache) == LocalizerRecipe(stack_size=256, input_size=256)
    with pytest.raises(InputError, match="old metadata has no number 'roi_mean'"):
        legacy_recipe(classifier, cache)
    model, _ = load_checkpoint(classifier)
    old = {"input_size": 128, "roi_mean": 0.4, "roi_std": 0.3, "roi_size": 96}
    full = save_checkpoint(tmp_path / "old.pt", model, metadata=old)
    recipe = legacy_recipe(full, cache)
    assert recipe == RoiRecipe(roi_size=96, pad_value=PAD, input_size=128, mean=0.4, std=0.3)
    converted = convert_checkpoint(full, recipe)  # in place
    assert load_recipe(read_checkpoint(converted).metadata, RoiRecipe, converted) == recipe
    wrong = save_checkpoint(tmp_path / "w.pt", model, metadata=old | {"roi_size": 64})
    with pytest.raises(InputError, match="trained on 64-px ROIs, the cache holds 96-px"):
        legacy_recipe(wrong, cache)
