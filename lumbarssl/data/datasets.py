"""PyTorch datasets over the prepared ROI cache: disc ROIs (Sec. 4.2) and localizer inputs (4.5).

Both read the arrays that ``lumbarssl prepare`` wrote (:class:`~lumbarssl.data.cache.
PreparedCache`, memory-mapped lazily in each process), so no DICOM is decoded while training.
Inputs are built only by a recipe (:class:`~lumbarssl.data.recipes.RoiRecipe`,
:class:`~lumbarssl.data.recipes.LocalizerRecipe`), the same one ``predict`` uses.
Random views are keyed: each view's parameters are a pure function of ``(seed, stream, epoch,
cache row, view)`` (:func:`~lumbarssl.data.batch_augment.draw_augment_params`), never of a
generator's state, so they do not depend on loader workers, batch composition or a resume. The
trainer calls :meth:`DiscROIDataset.set_epoch` before each epoch (as it does for a
``DistributedSampler``); a validation set keeps its epoch, so its views never change.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import Tensor
from torch.utils.data import Dataset, DistributedSampler, Sampler

from lumbarssl import paper
from lumbarssl._core.config import ConfigBase
from lumbarssl.data.batch_augment import draw_augment_params
from lumbarssl.data.cache import PreparedCache
from lumbarssl.data.constants import LEVELS, MISSING_LABEL
from lumbarssl.data.prepare.config import PrepareConfig
from lumbarssl.data.prepare.study import prepare_in_memory
from lumbarssl.data.recipes import LocalizerRecipe, RoiRecipe
from lumbarssl.errors import ConfigError, DataError

__all__ = [
    "TRAIN_STREAM",
    "VALIDATION_STREAM",
    "DiscDatasetConfig",
    "DiscROIDataset",
    "EpochKeyedSampler",
    "LocalizerDataset",
    "Mode",
    "SeriesLocalizerDataset",
]

#: Key stream of training views (:func:`~lumbarssl.data.keyed_random.keyed_uniforms`).
TRAIN_STREAM = 0
#: Key stream of validation views: independent of the training views of the same disc.
VALIDATION_STREAM = 1

#: ``supervised``: one deterministic view; ``contrastive``: V random views;
#: ``multislice``: the S neighbouring-slice ROIs of a disc.
Mode = Literal["supervised", "contrastive", "multislice"]
_MODES: tuple[str, ...] = ("supervised", "contrastive", "multislice")


@dataclass(frozen=True, kw_only=True)
class DiscDatasetConfig(ConfigBase):
    """Views and augmentations of :class:`DiscROIDataset` (paper Sec. 4.2, 4.3).

    The paper lists brightness, contrast and saturation jitter; saturation has no meaning for
    one-channel MRI and is left out. It gives no jitter magnitudes, no flip probability and
    no normalisation constants: ours are marked below.

    Keyword-only; positional arguments (in the order below) still work with a
    :class:`DeprecationWarning`.

    The augmentations live here, not in the :class:`~lumbarssl.data.recipes.RoiRecipe`:
    they shape training only, never the input a served model sees, so they do not travel
    with the checkpoint. ``input_size``, ``mean`` and ``std`` are kept for compatibility:
    they build the recipe when the dataset is given none, and must agree with it otherwise.

    Attributes:
        input_size: Side of the network input (Sec. 4.2: ROIs resized to 224 x 224); prefer
            ``RoiRecipe.input_size``.
        n_views: Views per disc in ``contrastive`` mode (Sec. 4.3: V, 3 by default).
        crop_scale: Area range of the random resized crop (Sec. 4.2: 0.8-1.0).
        hflip_p: Probability of the horizontal flip (Sec. 4.2; 0.5 is our choice).
        rotation_degrees: Rotation range, +/- degrees (Sec. 4.2: 15).
        brightness: Brightness jitter factor range 1 +/- this (our choice).
        contrast: Contrast jitter factor range 1 +/- this (our choice).
        mean: Intensity mean subtracted after scaling to [0, 1]; ``None`` uses the mean of
            all ROI pixels of the cache (Sec. 4.2: "channel-wise statistics"; no labels are
            involved, so using every disc does not leak grades); prefer ``RoiRecipe.mean``.
        std: Intensity standard deviation divided by; ``None`` uses the cache's.
    """

    _positional_fields: ClassVar[tuple[str, ...]] = (
        "input_size",
        "n_views",
        "crop_scale",
        "hflip_p",
        "rotation_degrees",
        "brightness",
        "contrast",
        "mean",
        "std",
    )

    input_size: int = paper.INPUT_SIZE  # Sec. 4.2
    n_views: int = paper.N_VIEWS  # Sec. 4.3: V views per disc
    crop_scale: tuple[float, float] = paper.CROP_SCALE  # Sec. 4.2
    hflip_p: float = 0.5  # Sec. 4.2 flips; the probability is ours
    rotation_degrees: float = paper.ROTATION_DEGREES  # Sec. 4.2: +/- 15 degrees
    brightness: float = 0.2  # Sec. 4.2 jitter; the magnitude is ours
    contrast: float = 0.2  # Sec. 4.2 jitter; the magnitude is ours
    mean: float | None = None  # Sec. 4.2: dataset statistics
    std: float | None = None

    def __post_init__(self) -> None:
        if self.input_size < 1:
            raise ValueError(f"input_size must be >= 1, got {self.input_size}")
        if self.n_views < 1:
            raise ValueError(f"n_views must be >= 1, got {self.n_views}")
        low, high = self.crop_scale
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        if not 0.0 <= self.hflip_p <= 1.0:
            raise ValueError(f"hflip_p must be in [0, 1], got {self.hflip_p}")
        if not 0.0 <= self.rotation_degrees <= 180.0:
            raise ValueError(f"rotation_degrees must be in [0, 180], got {self.rotation_degrees}")
        for name in ("brightness", "contrast"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.std is not None and self.std <= 0.0:
            raise ValueError(f"std must be > 0, got {self.std}")


def _open(cache: PreparedCache | str | Path) -> PreparedCache:
    return cache if isinstance(cache, PreparedCache) else PreparedCache.open(cache)


def _rows(cache: PreparedCache, indices: ArrayLike | None) -> np.ndarray:
    if indices is None:
        return np.arange(len(cache), dtype=np.int64)
    rows = np.asarray(indices, dtype=np.int64).reshape(-1)
    if rows.size and (rows.min() < 0 or rows.max() >= len(cache)):
        raise IndexError(
            f"indices must be in [0, {len(cache) - 1}], got {rows.min()}..{rows.max()}"
        )
    return rows


def _spinal(cache: PreparedCache, rows: np.ndarray) -> np.ndarray:
    """The spinal canal rows among ``rows``.

    The localizer finds the five canal points on the sagittal T2 stack, so the other conditions
    of a ``conditions="all"`` cache stay out of its datasets.
    """
    if not cache.table.has_conditions:
        return rows
    spinal: np.ndarray = rows[cache.table.condition_id[rows] == 0]
    return spinal


class DiscROIDataset(Dataset[dict[str, Tensor]]):
    """Disc ROIs of a prepared cache as network inputs (paper Sec. 4.2, 4.3).

    Each item is a dict:

    * ``"image"``: float32, shape (1, H, W) in ``supervised`` mode (resize to
      ``input_size`` and normalise, deterministic); (V, 1, H, W) in ``contrastive`` mode (V
      random views: random resized crop, horizontal flip, rotation, brightness/contrast
      jitter, then normalisation); (S, 1, H, W) in ``multislice`` mode (the ROIs at the same
      ``(x, y)`` on S neighbouring slices, deterministic).
    * ``"mask"`` (``multislice`` only): bool (S,), ``False`` where the series edge repeated a
      slice.
    * ``"label"``: int64 scalar, 0/1/2, or -1 for an unlabeled disc.
    * ``"level"``: int64 scalar, 0-4 for L1/L2 ... L5/S1.
    * ``"index"``: int64 scalar, the row of the cache (of ``index.csv``).
    * ``"condition"`` (caches prepared with ``conditions="all"`` only): int64 scalar, index
      into :data:`~lumbarssl.data.constants.CONDITIONS`.

    Args:
        cache: A :class:`~lumbarssl.data.cache.PreparedCache` or the ``OUT_DIR`` of
            ``lumbarssl prepare``.
        mode: ``"supervised"``, ``"contrastive"`` or ``"multislice"``.
        config: Views and augmentations; the paper's when ``None``.
        indices: Rows of the cache to use (e.g. from :func:`~lumbarssl.data.splits.
            study_level_split`); all rows when ``None``.
        labeled_only: Keep only graded discs. Defaults to ``True`` except in ``contrastive``
            mode, which may use unlabeled discs; ``supervised`` mode does not accept
            ``False``, so label -1 never reaches a supervised loss.
        recipe: How ROIs become inputs; when ``None``, :meth:`RoiRecipe.from_cache
            <lumbarssl.data.recipes.RoiRecipe.from_cache>` with ``config``'s input size and
            statistics.
        seed: Run seed of the random views (``contrastive`` mode).
        stream: Key stream of the random views: :data:`TRAIN_STREAM` for training,
            :data:`VALIDATION_STREAM` for validation, so the two never share views.

    Random views (``contrastive`` mode) are drawn from the distributions of
    :meth:`RoiRecipe.train_transform <lumbarssl.data.recipes.RoiRecipe.train_transform>`, with
    parameters keyed by ``(seed, stream, epoch, cache row, view)``: the same item gives the
    same views until :meth:`set_epoch` changes the epoch, in any process. The epoch lives in
    shared memory, so loader workers (persistent or not) see a ``set_epoch`` made before the
    loader is iterated.

    Raises:
        ValueError: If ``mode`` is unknown, ``labeled_only=False`` in supervised mode, or
            ``multislice`` is asked of a cache prepared without ``--slices``.
        ConfigError: If ``config`` sets an input size or statistics other than the recipe's.
        DataError: If the recipe's ROI size or padding is not the cache's.
        IndexError: If an index is outside the cache.
    """

    def __init__(
        self,
        cache: PreparedCache | str | Path,
        mode: Mode = "supervised",
        *,
        config: DiscDatasetConfig | None = None,
        indices: ArrayLike | None = None,
        labeled_only: bool | None = None,
        recipe: RoiRecipe | None = None,
        seed: int = 0,
        stream: int = TRAIN_STREAM,
    ) -> None:
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {', '.join(_MODES)}, got {mode!r}")
        if labeled_only is None:
            labeled_only = mode != "contrastive"
        if mode == "supervised" and not labeled_only:
            raise ValueError("supervised mode uses graded discs only; labeled_only must be True")
        self.cache = _open(cache)
        if mode == "multislice" and not self.cache.has_multislice:
            raise ValueError(
                "multislice mode needs rois_multislice.npy: run lumbarssl prepare --slices S"
            )
        self.mode: Mode = mode
        self.config = config or DiscDatasetConfig()
        rows = _rows(self.cache, indices)
        if labeled_only:
            rows = rows[self.cache.table.label[rows] != MISSING_LABEL]
        self.rows = rows
        if recipe is None:
            recipe = RoiRecipe.from_cache(
                self.cache,
                input_size=self.config.input_size,
                mean=self.config.mean,
                std=self.config.std,
            )
        else:
            _check_agrees(self.config, recipe)
            recipe.check_cache(self.cache)
        self.recipe = recipe
        self.deterministic = recipe.eval_transform()
        self.augment = recipe.train_transform(self.config)
        self.seed = int(seed)
        self.stream = int(stream)
        # One int64 in shared memory: worker processes read the epoch the trainer sets.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()  # type: ignore[no-untyped-call]

    @property
    def epoch(self) -> int:
        """The epoch that keys the random views (0 until :meth:`set_epoch`)."""
        return int(self._epoch.item())

    def set_epoch(self, epoch: int) -> None:
        """Key the random views of the coming epoch (call before iterating the loader).

        Args:
            epoch: 0-based epoch number.
        """
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self._epoch.fill_(epoch)

    def views(self, row: int, roi: Tensor, epoch: int | None = None) -> Tensor:
        """The ``n_views`` random views of cache row ``row`` in an epoch.

        Args:
            row: The cache row (the randomness key).
            roi: float32 (1, H, W) in [0, 1], that row's ROI.
            epoch: The epoch keying the views; ``None``: :attr:`epoch`.

        Returns:
            float32 (V, 1, S, S).
        """
        params = draw_augment_params(
            self.seed,
            self.epoch if epoch is None else epoch,
            torch.tensor([row], dtype=torch.int64),
            self.config,
            roi_size=(int(roi.shape[-2]), int(roi.shape[-1])),
            stream=self.stream,
        )
        angle, flip = params.angle[0].tolist(), params.flip[0].tolist()
        box, contrast_first = params.box[0].tolist(), params.contrast_first[0].tolist()
        brightness, contrast = params.brightness[0].tolist(), params.contrast[0].tolist()
        return torch.stack(
            [
                self.recipe.augmented_view(
                    roi,
                    angle=angle[v],
                    flip=flip[v],
                    box=(box[v][0], box[v][1], box[v][2], box[v][3]),
                    brightness=brightness[v],
                    contrast=contrast[v],
                    contrast_first=contrast_first[v],
                )
                for v in range(self.config.n_views)
            ]
        )

    @classmethod
    def from_rsna(
        cls,
        data_dir: str | Path,
        mode: Mode = "supervised",
        *,
        prepare_config: PrepareConfig | None = None,
        config: DiscDatasetConfig | None = None,
        indices: ArrayLike | None = None,
        labeled_only: bool | None = None,
        recipe: RoiRecipe | None = None,
    ) -> DiscROIDataset:
        """Build the dataset straight from an RSNA directory, extracting ROIs in memory.

        Runs the extraction of ``lumbarssl prepare`` (same ROIs, same skips) without writing
        files; for repeated use, prepare once and open the cache instead.

        Args:
            data_dir: RSNA 2024 layout directory.
            mode: See the class.
            prepare_config: Extraction settings; in ``multislice`` mode the default is
                ``PrepareConfig(slices=3)``, the annotated slice and one neighbour each side.
            config: See the class.
            indices: See the class.
            labeled_only: See the class.
            recipe: See the class.

        Returns:
            The dataset.
        """
        if mode == "multislice" and prepare_config is None:
            prepare_config = PrepareConfig(slices=3)
        cache, _ = prepare_in_memory(data_dir, prepare_config)
        return cls(
            cache, mode, config=config, indices=indices, labeled_only=labeled_only, recipe=recipe
        )

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def labels(self) -> np.ndarray:
        """Labels of the dataset's discs, int64 (len(self),)."""
        return np.asarray(self.cache.table.label[self.rows])

    @property
    def study_ids(self) -> np.ndarray:
        """Studies of the dataset's discs, int64 (len(self),)."""
        return np.asarray(self.cache.table.study_id[self.rows])

    @property
    def condition_ids(self) -> np.ndarray:
        """Conditions of the dataset's rows (indices into ``CONDITIONS``), int64 (len(self),)."""
        return np.asarray(self._condition_ids[self.rows])

    @functools.cached_property
    def _condition_ids(self) -> np.ndarray:
        return self.cache.table.condition_id

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Tensor]:
        """The sample at a position of the dataset.

        Args:
            item: The position, or ``(epoch, position)`` from an :class:`EpochKeyedSampler`:
                the random views of that epoch, whatever :attr:`epoch` is.

        Returns:
            The sample: ``"image"``, ``"label"``, ``"level"``, ``"index"`` (the cache row)
            and, where the mode or the cache has them, ``"mask"`` and ``"condition"``.
        """
        epoch: int | None = None
        if isinstance(item, tuple):
            epoch, item = item
        row = int(self.rows[item])
        table = self.cache.table
        sample = {
            "label": torch.tensor(int(table.label[row]), dtype=torch.int64),
            "level": torch.tensor(int(table.level_id[row]), dtype=torch.int64),
            "index": torch.tensor(row, dtype=torch.int64),
        }
        if table.has_conditions:
            condition = int(self._condition_ids[row])
            sample["condition"] = torch.tensor(condition, dtype=torch.int64)
        if self.mode == "multislice":
            stack = self.recipe.to_tensor(np.array(self.cache.multislice[row]))
            sample["image"] = self.deterministic(stack)
            sample["mask"] = torch.from_numpy(np.array(self.cache.multislice_mask[row]))
            return sample
        roi = self.recipe.to_tensor(np.array(self.cache.rois[row]))
        if self.mode == "supervised":
            sample["image"] = self.deterministic(roi)
        else:
            sample["image"] = self.views(row, roi, epoch)
        return sample


class EpochKeyedSampler(Sampler[tuple[int, int]]):
    """Pairs each index of a sampler with the epoch: yields ``(epoch, index)``.

    With it the epoch travels to the loader workers with every index, so a dataset whose
    randomness is keyed by the epoch (:class:`DiscROIDataset`'s contrastive views) makes each
    epoch's samples in persistent workers (``persistent_workers=True``) exactly as in workers
    started afresh for the epoch, without any state shared with them. The trainer's
    ``set_epoch`` reaches it as the loader's sampler; it is passed on to the wrapped sampler
    (a :class:`~torch.utils.data.DistributedSampler` reshuffles with it).

    Args:
        sampler: The sampler of the indices, e.g. a
            :class:`~torch.utils.data.RandomSampler` over the loader's generator.
    """

    def __init__(self, sampler: Sampler[int]) -> None:
        self.sampler = sampler
        self.epoch = 0
        #: Tells the trainer the indices are this process's shard under torchrun.
        self.shards_by_rank = isinstance(sampler, DistributedSampler) or bool(
            getattr(sampler, "shards_by_rank", False)
        )

    @property
    def generator(self) -> torch.Generator | None:
        """The wrapped sampler's generator (the trainer seeds and saves it)."""
        generator = getattr(self.sampler, "generator", None)
        return generator if isinstance(generator, torch.Generator) else None

    def set_epoch(self, epoch: int) -> None:
        """Pair the coming pass's indices with ``epoch`` (0-based)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = epoch
        set_epoch = getattr(self.sampler, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        for index in self.sampler:
            yield epoch, int(index)

    def __len__(self) -> int:
        if not isinstance(self.sampler, Sized):
            raise TypeError(f"{type(self.sampler).__name__} has no length")
        return len(self.sampler)


def _check_agrees(config: DiscDatasetConfig, recipe: RoiRecipe) -> None:
    """Raise if the legacy input fields of ``config`` contradict ``recipe``."""
    default = DiscDatasetConfig.__dataclass_fields__["input_size"].default
    clashes = [
        f"{name} {value} (recipe: {getattr(recipe, name)})"
        for name, value, unset in (
            ("input_size", config.input_size, default),
            ("mean", config.mean, None),
            ("std", config.std, None),
        )
        if value != unset and value != getattr(recipe, name)
    ]
    if clashes:
        raise ConfigError(
            "DiscDatasetConfig sets " + ", ".join(clashes) + "; the recipe decides the input: "
            "leave these fields unset when passing recipe="
        )


class SeriesLocalizerDataset(Dataset[dict[str, Tensor]]):
    """All annotated levels of one 2.5D localizer input per item (paper Sec. 3.2, 4.5).

    The one localizer dataset: training, evaluation and :class:`LocalizerDataset` read
    through it. The five discs of a series share one input stack, and the localizer's
    backbone features do not depend on the level, so each stack is passed through the
    backbone once and the head once per level (:meth:`~lumbarssl.models.Localizer2p5D.
    forward` with ``(B, K)`` levels).

    Each item is a dict: ``"image"`` float32 (S, L, L), the stored stack made a network input
    by :meth:`LocalizerRecipe.network_input <lumbarssl.data.recipes.LocalizerRecipe.
    network_input>` (values in [0, 1], ``L = recipe.input_size``); ``"level"`` int64 (5,),
    the levels 0-4; ``"target"`` float32 (5, 2), the centres ``(x / W, y / H)`` normalised by
    the slice's (W, H); ``"mask"`` bool (5,), which levels have a coordinate; ``"scale"``
    float32 (2,), (W, H) of the slice; ``"spacing"`` float32 (2,), PixelSpacing (column,
    row) in mm (NaN if unknown); ``"row"`` int64 (5,), the cache row of each level or -1.

    Args:
        cache: A :class:`~lumbarssl.data.cache.PreparedCache` or a prepare ``OUT_DIR``.
        rows: Cache rows to include (their stacks are grouped); all rows when ``None``.
        recipe: How stacks become inputs; the cache's stacks at their own size when ``None``.

    Raises:
        ValueError: If two included rows give the same level of the same stack.
        DataError: If the recipe's stack is not the cache's.
        IndexError: If a row is outside the cache.
    """

    def __init__(
        self,
        cache: PreparedCache | str | Path,
        rows: ArrayLike | None = None,
        *,
        recipe: LocalizerRecipe | None = None,
    ) -> None:
        self.cache = _open(cache)
        if recipe is None:
            recipe = LocalizerRecipe.from_cache(self.cache)
        else:
            recipe.check_cache(self.cache)
        self.recipe = recipe
        table = self.cache.table
        groups: dict[int, list[int]] = {}
        for row in _spinal(self.cache, _rows(self.cache, rows)).tolist():
            groups.setdefault(int(table.localizer_index[row]), []).append(int(row))
        for index, members in groups.items():
            levels = table.level_id[members]
            if len(set(levels.tolist())) != len(members):
                raise DataError(f"localizer input {index}: two discs of one level {members}")
        self.groups = sorted(groups.items())

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, item: int) -> dict[str, Tensor]:
        index, members = self.groups[item]
        table = self.cache.table
        n = len(LEVELS)
        target = torch.zeros(n, 2)
        mask = torch.zeros(n, dtype=torch.bool)
        row_ids = torch.full((n,), -1, dtype=torch.int64)
        first = members[0]
        width, height = float(table.width[first]), float(table.height[first])
        for row in members:
            level = int(table.level_id[row])
            target[level, 0] = float(table.x[row]) / width
            target[level, 1] = float(table.y[row]) / height
            mask[level] = True
            row_ids[level] = row
        stack = np.array(self.cache.localizer_images[index])
        return {
            "image": self.recipe.network_input(stack),
            "level": torch.arange(n),
            "target": target,
            "mask": mask,
            "scale": torch.tensor([width, height]),
            "spacing": torch.tensor(
                [float(table.col_spacing_mm[first]), float(table.row_spacing_mm[first])]
            ),
            "row": row_ids,
        }


class LocalizerDataset(Dataset[dict[str, Tensor]]):
    """One disc per item: a per-disc view of :class:`SeriesLocalizerDataset`.

    Each item is a dict:

    * ``"image"``: float32 (3, L, L) in [0, 1]: the annotated slice and its two spatial
      neighbours (edges repeated), each min-max normalised and resized to L x L (paper: 256),
      as the recipe builds it.
    * ``"target"``: float32 (2,), the disc centre ``(x / W, y / H)`` in [0, 1], where
      ``(x, y)`` are pixels of the annotated slice of shape (H, W).
    * ``"level"``: int64 scalar, 0-4 for L1/L2 ... L5/S1 (the localizer's level embedding).
    * ``"scale"``: float32 (2,), ``(W, H)``: ``target * scale`` gives original pixels.
    * ``"spacing"``: float32 (2,), PixelSpacing ``(column, row)`` in mm (NaN if unknown):
      ``target * scale * spacing`` gives millimetres.
    * ``"index"``: int64 scalar, the row of the cache.

    Every disc with a coordinate is used, graded or not.

    Args:
        cache: A :class:`~lumbarssl.data.cache.PreparedCache` or a prepare ``OUT_DIR``.
        indices: Rows of the cache to use; all when ``None``.
        recipe: See :class:`SeriesLocalizerDataset`.

    Raises:
        IndexError: If an index is outside the cache.
    """

    def __init__(
        self,
        cache: PreparedCache | str | Path,
        *,
        indices: ArrayLike | None = None,
        recipe: LocalizerRecipe | None = None,
    ) -> None:
        self.series = SeriesLocalizerDataset(cache, indices, recipe=recipe)
        self.cache = self.series.cache
        self.rows = _spinal(self.cache, _rows(self.cache, indices))
        where = {
            row: (item, int(self.cache.table.level_id[row]))
            for item, (_, members) in enumerate(self.series.groups)
            for row in members
        }
        self._where = [where[int(row)] for row in self.rows]

    @classmethod
    def from_rsna(
        cls,
        data_dir: str | Path,
        *,
        prepare_config: PrepareConfig | None = None,
        indices: ArrayLike | None = None,
        recipe: LocalizerRecipe | None = None,
    ) -> LocalizerDataset:
        """Build the dataset straight from an RSNA directory, extracting in memory.

        Args:
            data_dir: RSNA 2024 layout directory.
            prepare_config: Extraction settings.
            indices: See the class.
            recipe: See the class.

        Returns:
            The dataset.
        """
        cache, _ = prepare_in_memory(data_dir, prepare_config)
        return cls(cache, indices=indices, recipe=recipe)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: int) -> dict[str, Tensor]:
        stack_item, level = self._where[item]
        stack = self.series[stack_item]
        return {
            "image": stack["image"],
            "target": stack["target"][level],
            "level": stack["level"][level],
            "scale": stack["scale"],
            "spacing": stack["spacing"],
            "index": stack["row"][level],
        }
