"""Train/test splits of the disc index: the paper's disc-level split and a leakage-free one.

The paper (Sec. 3.1, 4.1) splits at the disc level, stratified by grade, 80/20. A *disc* is
one level of one study, so the five discs of one patient are split independently: the same
patient's L3/L4 may be in training while their L4/L5 is in the test set. Their images share
the patient's anatomy, scanner and contrast, so this split can leak and flatter the test
score. :func:`study_level_split` keeps every disc of a study on one side (grouped by study,
stratified by grade) and is the leakage-free choice; :func:`disc_level_split` reproduces the
paper.

Unlabeled discs (label -1) are left out of both sides of every split: they are never used for
supervised training or metrics. Splits return sorted indices into the arrays given.

Every split of the library lives here: the grading splits above, :func:`make_splits` (the
train/val/test/unlabeled rows of a prepared cache that every training stage shares) and
:func:`localizer_splits` (the localizer's study-grouped split).
"""

from __future__ import annotations

import dataclasses
from typing import Final, Protocol

import numpy as np
from numpy.typing import ArrayLike
from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold, train_test_split

from lumbarssl import paper
from lumbarssl.data.cache import PreparedCache
from lumbarssl.data.constants import CONDITIONS, MISSING_LABEL
from lumbarssl.errors import DataError

__all__ = [
    "SplitSettings",
    "Splits",
    "disc_level_split",
    "localizer_splits",
    "make_splits",
    "study_level_split",
    "train_val_test_split",
]

#: The paper's held-out fraction (Sec. 4.1: 80/20; 94 severe test discs = 20 % of 470); an
#: alias of :data:`lumbarssl.paper.TEST_SIZE`.
TEST_SIZE: Final = paper.TEST_SIZE
#: Validation fraction of :func:`train_val_test_split` (not given in the paper).
VAL_SIZE = 0.1


def _labels(labels: ArrayLike) -> np.ndarray:
    array = np.asarray(labels)
    if array.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {array.dtype}")
    return array.astype(np.int64)


def _check_size(name: str, size: float) -> None:
    if not 0.0 < size < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {size}")


def disc_level_split(
    labels: ArrayLike, *, test_size: float = TEST_SIZE, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Split labeled discs into train and test, stratified by grade (the paper's protocol).

    Discs of one study can fall on both sides; see :func:`study_level_split` for a split
    without that leak.

    Args:
        labels: Grade per disc, shape (N,): 0, 1, 2, or -1 for unlabeled (left out).
        test_size: Fraction of the labeled discs held out (paper: 0.2).
        seed: Random seed.

    Returns:
        ``(train, test)``: sorted int64 indices into ``labels``.

    Raises:
        ValueError: If ``test_size`` is not in (0, 1), ``labels`` is not a 1-D integer array,
            or a grade has too few discs to stratify (from scikit-learn).
    """
    _check_size("test_size", test_size)
    array = _labels(labels)
    labeled = np.flatnonzero(array != MISSING_LABEL)
    train, test = train_test_split(
        labeled, test_size=test_size, random_state=seed, stratify=array[labeled]
    )
    return np.sort(train).astype(np.int64), np.sort(test).astype(np.int64)


def study_level_split(
    labels: ArrayLike, study_ids: ArrayLike, *, test_size: float = TEST_SIZE, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Split labeled discs into train and test with every study on one side only.

    Grouped by study and stratified by grade with scikit-learn's ``StratifiedGroupKFold``:
    the test part is one of ``round(1 / test_size)`` folds, so its size is close to, not
    exactly, ``test_size`` (exact in expectation for ``test_size = 1 / k``).

    Args:
        labels: Grade per disc, shape (N,): 0, 1, 2, or -1 for unlabeled (left out).
        study_ids: Study of each disc, shape (N,).
        test_size: Approximate fraction of the labeled discs held out.
        seed: Random seed.

    Returns:
        ``(train, test)``: sorted int64 indices into ``labels``; no study appears in both.

    Raises:
        ValueError: If ``test_size`` is not in (0, 1), the shapes differ, or there are fewer
            labeled studies than folds.
    """
    _check_size("test_size", test_size)
    array = _labels(labels)
    groups = np.asarray(study_ids)
    if groups.shape != array.shape:
        raise ValueError(f"study_ids has shape {groups.shape}, labels {array.shape}")
    labeled = np.flatnonzero(array != MISSING_LABEL)
    n_splits = max(2, round(1.0 / test_size))
    n_studies = len(np.unique(groups[labeled]))
    if n_studies < n_splits:
        raise DataError(
            f"test_size={test_size} needs at least {n_splits} labeled studies, got {n_studies}"
        )
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    train, test = next(folds.split(labeled, array[labeled], groups=groups[labeled]))
    return np.sort(labeled[train]).astype(np.int64), np.sort(labeled[test]).astype(np.int64)


def train_val_test_split(
    labels: ArrayLike,
    study_ids: ArrayLike | None = None,
    *,
    val_size: float = VAL_SIZE,
    test_size: float = TEST_SIZE,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three-way split: test first, then validation from the rest, both stratified by grade.

    With ``study_ids`` the split is grouped by study (:func:`study_level_split`, leakage-free),
    without it at the disc level as in the paper (:func:`disc_level_split`).

    Args:
        labels: Grade per disc, shape (N,): 0, 1, 2, or -1 for unlabeled (left out).
        study_ids: Study of each disc, shape (N,), or ``None`` for a disc-level split.
        val_size: Fraction of the labeled discs for validation.
        test_size: Fraction of the labeled discs for testing.
        seed: Random seed.

    Returns:
        ``(train, val, test)``: disjoint sorted int64 indices into ``labels``.

    Raises:
        ValueError: If a fraction is not in (0, 1) or ``val_size + test_size`` >= 1.
    """
    _check_size("val_size", val_size)
    _check_size("test_size", test_size)
    if val_size + test_size >= 1.0:
        raise ValueError(f"val_size + test_size must be < 1, got {val_size} + {test_size}")
    array = _labels(labels)
    val_of_rest = val_size / (1.0 - test_size)
    if study_ids is None:
        rest, test = disc_level_split(array, test_size=test_size, seed=seed)
        remaining = np.full_like(array, MISSING_LABEL)
        remaining[rest] = array[rest]
        train, val = disc_level_split(remaining, test_size=val_of_rest, seed=seed)
    else:
        rest, test = study_level_split(array, study_ids, test_size=test_size, seed=seed)
        remaining = np.full_like(array, MISSING_LABEL)
        remaining[rest] = array[rest]
        train, val = study_level_split(remaining, study_ids, test_size=val_of_rest, seed=seed)
    return train, val, test


class SplitSettings(Protocol):
    """The split fields of a run's settings (every stage config of :mod:`lumbarssl.pipeline`)."""

    @property
    def split(self) -> str:
        """``"disc"`` (the paper's split) or ``"study"`` (leakage-free)."""

    @property
    def val_size(self) -> float:
        """Fraction of the graded discs for model selection."""

    @property
    def test_size(self) -> float:
        """Fraction of the graded discs held out."""

    @property
    def seed(self) -> int:
        """Random seed of the split."""


@dataclasses.dataclass(frozen=True)
class Splits:
    """Row indices of the prepared cache for one run.

    Attributes:
        train: Graded discs for supervised training, int64 (N_train,).
        val: Graded discs for model selection, int64 (N_val,).
        test: Graded discs held out for the reported metrics, int64 (N_test,).
        unlabeled: Discs without a grade that may join contrastive pretraining, int64; with a
            study-level split, those of validation and test studies are left out.
    """

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    unlabeled: np.ndarray

    def to_dict(self) -> dict[str, list[int]]:
        """Return the index lists, JSON-serialisable."""
        return {f.name: getattr(self, f.name).tolist() for f in dataclasses.fields(self)}

    def for_condition(self, cache: PreparedCache, condition: str) -> Splits:
        """The rows of one condition (a name of ``CONDITIONS``) in each set.

        Every condition of a study lands in the same set with a study-level split, so the
        per-condition sets of one run never share a study across train and test.
        """
        if condition not in CONDITIONS:
            raise ValueError(f"unknown condition {condition!r}; expected one of {CONDITIONS}")
        ids = cache.table.condition_id
        wanted = CONDITIONS.index(condition)
        return Splits(
            **{
                f.name: getattr(self, f.name)[ids[getattr(self, f.name)] == wanted]
                for f in dataclasses.fields(self)
            }
        )


def make_splits(cache: PreparedCache, config: SplitSettings) -> Splits:
    """Split the cache's discs the same way for every stage of a run.

    The split is a pure function of the cache, ``config.split``, the fractions and the seed,
    so pretraining, fine-tuning and evaluation agree without sharing state.

    Args:
        cache: The prepared ROI cache.
        config: Any stage config (its split fields are used).

    Returns:
        The four index sets.
    """
    table = cache.table
    labels = np.asarray(table.label)
    studies = np.asarray(table.study_id)
    # A conditions="all" cache is stratified by (condition, grade); a spinal-only cache has
    # condition 0 everywhere, so its strata (and splits) are the grades as before.
    strata = np.where(labels == MISSING_LABEL, labels, labels + 3 * table.condition_id)
    train, val, test = train_val_test_split(
        strata,
        studies if config.split == "study" else None,
        val_size=config.val_size,
        test_size=config.test_size,
        seed=config.seed,
    )
    unlabeled = np.flatnonzero(labels == MISSING_LABEL)
    if config.split == "study":
        held_out = np.isin(studies[unlabeled], studies[np.concatenate([val, test])])
        unlabeled = unlabeled[~held_out]
    return Splits(train=train, val=val, test=test, unlabeled=unlabeled.astype(np.int64))


def localizer_splits(
    study_ids: np.ndarray, *, val_size: float, test_size: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split every disc with a coordinate into train/val/test, grouped by study.

    The five levels of a series share one input image, so the localizer is always split by
    study (whatever the grading split), keeping a test image out of training entirely.

    Args:
        study_ids: Study of each cache row, shape (N,).
        val_size: Approximate fraction of rows for validation.
        test_size: Approximate fraction of rows for testing.
        seed: Random seed.

    Returns:
        ``(train, val, test)``: sorted int64 row indices.
    """
    rows = np.arange(len(study_ids))
    outer = GroupShuffleSplit(n_splits=1, test_size=test_size, random_state=seed)
    rest, test = next(outer.split(rows, groups=study_ids))
    inner = GroupShuffleSplit(n_splits=1, test_size=val_size / (1.0 - test_size), random_state=seed)
    train, val = next(inner.split(rest, groups=study_ids[rest]))
    return (
        np.sort(rest[train]).astype(np.int64),
        np.sort(rest[val]).astype(np.int64),
        np.sort(test).astype(np.int64),
    )
