"""Slice selection: the CSF baseline and the slice-wise CNN + GRU find an off-centre midline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lumbarssl.models import SliceSelector, build_model, model_config
from lumbarssl.models.slice_select import (
    baseline_slice_scores,
    extract_level_patches,
    select_slices,
    slice_selection_accuracy,
)
from lumbarssl.pipeline.auto_train import train_slice_selector
from lumbarssl.synthetic import SyntheticConfig, sample_study_plan
from lumbarssl.synthetic.plan import PIXEL_STREAM, StudyPlan, study_rng
from lumbarssl.synthetic.render import render_series

# Small images, strong drift: most levels' midline is off the centre slice.
CONFIG = SyntheticConfig(
    seed=21,
    image_size_range=(128, 128),
    pixel_spacing_range=(1.6, 1.9),
    field_of_view_range=(205.0, 240.0),
    slices_range=(11, 13),
    midline_drift_slices=3.0,
)


def _series(index: int) -> tuple[StudyPlan, np.ndarray]:
    plan = sample_study_plan(CONFIG, index)
    t2 = plan.sagittal_t2
    rng = study_rng(CONFIG, index, PIXEL_STREAM)
    volume = np.stack([s.pixels.astype(np.float32) for s in render_series(plan, t2, CONFIG, rng)])
    return plan, volume


def test_baseline_finds_an_off_centre_midline() -> None:
    chosen, truth, off_centre = [], [], 0
    for i in range(6):
        plan, volume = _series(i)
        xy = np.array([d.true_coordinate for d in plan.discs])
        index, position = select_slices(baseline_slice_scores(volume, xy, plan.spacing))
        true_index = [round(d.midline_index) for d in plan.discs]
        off_centre += sum(t != plan.sagittal_t2.n_slices // 2 for t in true_index)
        chosen += index.tolist()
        truth += true_index
        assert np.all(np.abs(position - index) <= 0.5)
    exact, within_one = slice_selection_accuracy(np.array(chosen), np.array(truth))
    assert off_centre >= 15  # of 30 levels: the centre-slice guess would be wrong here
    assert exact >= 0.85
    assert within_one == 1.0


def test_select_slices_refines_to_the_parabola_vertex() -> None:
    # A parabola sampled at integers with its vertex at 2.3: argmax 2, position 2.3.
    scores = -((np.arange(6.0) - 2.3) ** 2)[None]
    index, position = select_slices(scores)
    assert index.tolist() == [2]
    assert position[0] == pytest.approx(2.3)
    assert slice_selection_accuracy(np.array([1, 2, 5]), np.array([1, 3, 3])) == (1 / 3, 2 / 3)


def test_patches_are_resampled_around_the_point() -> None:
    volume = torch.zeros(2, 40, 50)
    volume[1, 20, 30] = 100.0  # a bright dot on slice 1 at (x, y) = (30, 20)
    patches = extract_level_patches(
        volume, torch.tensor([[30.0, 20.0]]), 1.0, patch_mm=8.0, patch_px=9
    )
    assert patches.shape == (1, 2, 9, 9)
    assert [int(v) for v in np.unravel_index(int(patches[0, 1].argmax()), (9, 9))] == [4, 4]
    assert float(patches[0, 0].max()) < float(patches[0, 1].max())


def test_selector_shapes_mask_and_registry() -> None:
    model = SliceSelector(width=4, hidden=8)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[0, 5:] = False
    logits = model(torch.randn(3, 7, 24, 24), mask)
    assert logits.shape == (3, 7)
    assert torch.isinf(logits[0, 5:]).all()
    assert torch.isfinite(logits[1]).all()
    torch.autograd.backward(logits[1:].sum())
    assert all(p.grad is not None for p in model.parameters())
    assert isinstance(build_model(model_config(model)), SliceSelector)


def test_a_tiny_trained_selector_finds_the_midline() -> None:
    """Train on 10 phantom series, test on 4 others: far better than the centre-slice guess."""
    torch.manual_seed(0)
    patches, targets = [], []
    for i in range(14):
        plan, volume = _series(i)
        xy = torch.tensor([d.true_coordinate for d in plan.discs])
        p = extract_level_patches(torch.from_numpy(volume), xy, plan.spacing, patch_px=24)
        patches += list(p)
        targets += [round(d.midline_index) for d in plan.discs]
    n_train = 50
    model = train_slice_selector(
        patches[:n_train],
        torch.tensor(targets[:n_train]),
        epochs=25,
        batch_size=10,
        lr=3e-3,
        width=8,
        hidden=16,
    )
    model.eval()
    with torch.no_grad():
        chosen = [int(model(p[None]).argmax()) for p in patches[n_train:]]
    exact, within_one = slice_selection_accuracy(np.array(chosen), np.array(targets[n_train:]))
    centre = [p.shape[0] // 2 for p in patches[n_train:]]
    centre_exact, _ = slice_selection_accuracy(np.array(centre), np.array(targets[n_train:]))
    assert within_one >= 0.9
    assert exact > centre_exact + 0.2
