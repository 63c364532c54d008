from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lumbarssl.data.cache import DiscTable, PreparedCache
from lumbarssl.data.constants import LEVELS
from lumbarssl.data.splits import (
    Splits,
    disc_level_split,
    localizer_splits,
    make_splits,
    study_level_split,
    train_val_test_split,
)


@st.composite
def disc_sets(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """Studies of 1-5 discs; every grade on at least 10 discs; some unlabeled."""
    n_studies = draw(st.integers(30, 80))
    sizes = draw(st.lists(st.integers(1, 5), min_size=n_studies, max_size=n_studies))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    study_ids = np.repeat(rng.permutation(10_000)[:n_studies], sizes)
    labels = rng.choice([0, 0, 0, 1, 2, -1], size=len(study_ids))
    labels[:30] = np.tile([0, 1, 2], 10)
    return labels, study_ids


def _labeled(labels: np.ndarray) -> np.ndarray:
    return np.flatnonzero(labels != -1)


@given(disc_sets(), st.sampled_from([0.2, 0.25, 0.3]), st.integers(0, 3))
def test_disc_level_split_partitions_labeled_discs_by_grade(
    data: tuple[np.ndarray, np.ndarray], test_size: float, seed: int
) -> None:
    labels, _ = data
    train, test = disc_level_split(labels, test_size=test_size, seed=seed)
    assert not set(train) & set(test)
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), _labeled(labels))
    assert (np.diff(train) > 0).all()
    assert (np.diff(test) > 0).all()
    for grade in (0, 1, 2):
        n = int((labels == grade).sum())
        # Stratified: scikit-learn holds out ceil(test_size * N) discs and gives each grade
        # the floor or ceiling of its proportional share, so the gap is below 1 + n / N.
        assert abs(int((labels[test] == grade).sum()) - test_size * n) < 2


@given(disc_sets(), st.integers(0, 3))
def test_study_level_split_keeps_each_study_on_one_side(
    data: tuple[np.ndarray, np.ndarray], seed: int
) -> None:
    labels, study_ids = data
    train, test = study_level_split(labels, study_ids, seed=seed)
    assert not set(study_ids[train]) & set(study_ids[test])
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), _labeled(labels))
    assert -1 not in labels[train]
    assert -1 not in labels[test]


def test_study_level_split_is_stratified_on_a_large_set() -> None:
    rng = np.random.default_rng(0)
    study_ids = np.repeat(np.arange(1000), 5)
    labels = rng.choice([0, 1, 2], p=[0.878, 0.075, 0.047], size=5000)
    _, test = study_level_split(labels, study_ids, test_size=0.2, seed=0)
    assert abs(len(test) / 5000 - 0.2) < 0.01
    for grade in (0, 1, 2):
        share = (labels[test] == grade).sum() / (labels == grade).sum()
        assert abs(share - 0.2) < 0.02


def test_disc_level_split_can_put_one_patient_on_both_sides() -> None:
    # The documented leak of the paper's protocol: five discs per study, split independently.
    labels = np.tile([0, 0, 1, 2, 0], 40)
    study_ids = np.repeat(np.arange(40), 5)
    train, test = disc_level_split(labels, seed=0)
    assert set(study_ids[train]) & set(study_ids[test])
    train, test = study_level_split(labels, study_ids, seed=0)
    assert not set(study_ids[train]) & set(study_ids[test])


@given(disc_sets(), st.booleans())
def test_three_way_split_is_a_partition(data: tuple[np.ndarray, np.ndarray], grouped: bool) -> None:
    labels, study_ids = data
    train, val, test = train_val_test_split(labels, study_ids if grouped else None, seed=1)
    parts = [set(train), set(val), set(test)]
    assert all(not a & b for i, a in enumerate(parts) for b in parts[i + 1 :])
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val, test])), _labeled(labels))
    if grouped:
        groups = [set(study_ids[p]) for p in (train, val, test)]
        assert all(not a & b for i, a in enumerate(groups) for b in groups[i + 1 :])


def test_splits_are_reproducible_and_depend_on_the_seed() -> None:
    labels = np.tile([0, 1, 2, 0, 0], 40)
    a = disc_level_split(labels, seed=3)
    b = disc_level_split(labels, seed=3)
    c = disc_level_split(labels, seed=4)
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


@pytest.mark.parametrize("size", [0.0, 1.0, -0.1, 1.5])
def test_test_size_outside_the_open_unit_interval_is_rejected(size: float) -> None:
    with pytest.raises(ValueError, match=rf"test_size must be in \(0, 1\), got {size}"):
        disc_level_split(np.zeros(10, dtype=int), test_size=size)


def test_val_plus_test_must_leave_training_data() -> None:
    with pytest.raises(ValueError, match=r"val_size \+ test_size must be < 1, got 0\.5 \+ 0\.5"):
        train_val_test_split(np.zeros(10, dtype=int), val_size=0.5, test_size=0.5)


def test_shape_mismatch_and_float_labels_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"study_ids has shape \(3,\), labels \(4,\)"):
        study_level_split(np.zeros(4, dtype=int), np.arange(3))
    with pytest.raises(ValueError, match="labels must be integers"):
        disc_level_split(np.zeros(4))


def test_too_few_studies_for_the_folds() -> None:
    with pytest.raises(ValueError, match="needs at least 5 labeled studies, got 3"):
        study_level_split(np.zeros(9, dtype=int), np.repeat(np.arange(3), 3))


@dataclasses.dataclass(frozen=True)
class _Settings:
    split: str
    val_size: float = 0.1
    test_size: float = 0.2
    seed: int = 0


def _cache(labels: np.ndarray, study_ids: np.ndarray) -> PreparedCache:
    rows = [
        {
            "study_id": int(study),
            "series_id": 1,
            "instance_number": i,
            "level": LEVELS[i % 5],
            "x": 1.0,
            "y": 1.0,
            "severity": "",
            "label": int(label),
            "roi_path": "",
            "row_spacing_mm": None,
            "col_spacing_mm": None,
            "height": 8,
            "width": 8,
            "slice_index": 0,
            "n_slices": 1,
            "localizer_index": 0,
        }
        for i, (label, study) in enumerate(zip(labels, study_ids, strict=True))
    ]
    return PreparedCache(DiscTable.from_rows(rows))


@given(disc_sets(), st.sampled_from(["disc", "study"]), st.integers(0, 3))
def test_make_splits_of_a_cache(data: tuple[np.ndarray, np.ndarray], level: str, seed: int) -> None:
    labels, study_ids = data
    settings = _Settings(split=level, seed=seed)
    splits = make_splits(_cache(labels, study_ids), settings)
    assert isinstance(splits, Splits)
    # The graded rows are the three-way split of the grades (grouped for a study split).
    expected = train_val_test_split(
        labels, study_ids if level == "study" else None, val_size=0.1, test_size=0.2, seed=seed
    )
    for got, want in zip((splits.train, splits.val, splits.test), expected, strict=True):
        np.testing.assert_array_equal(got, want)
    # Unlabeled rows: all of them for a disc split; for a study split, none of a study that
    # has a validation or test disc.
    unlabeled = np.flatnonzero(labels == -1)
    if level == "disc":
        np.testing.assert_array_equal(splits.unlabeled, unlabeled)
    else:
        held_out = set(study_ids[np.concatenate([splits.val, splits.test])].tolist())
        kept = [i for i in unlabeled.tolist() if study_ids[i] not in held_out]
        assert splits.unlabeled.tolist() == kept
    assert splits.unlabeled.dtype == np.int64
    assert splits.to_dict() == {
        "train": splits.train.tolist(),
        "val": splits.val.tolist(),
        "test": splits.test.tolist(),
        "unlabeled": splits.unlabeled.tolist(),
    }


@given(disc_sets(), st.integers(0, 3))
def test_localizer_splits_partition_the_rows_by_study(
    data: tuple[np.ndarray, np.ndarray], seed: int
) -> None:
    _, study_ids = data
    train, val, test = localizer_splits(study_ids, val_size=0.1, test_size=0.2, seed=seed)
    np.testing.assert_array_equal(
        np.sort(np.concatenate([train, val, test])), np.arange(len(study_ids))
    )
    parts = [set(study_ids[part].tolist()) for part in (train, val, test)]
    assert sum(len(part) for part in parts) == len(set.union(*parts))  # no shared study
    assert all(len(part) for part in parts)
    for part in (train, val, test):
        assert part.dtype == np.int64
        assert (np.diff(part) > 0).all()
