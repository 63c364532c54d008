"""Device-resident training data: the ROI cache and localizer stacks held on the device once.

The whole prepared cache is small next to an accelerator's memory (the paper's 9,686 ROIs of
96 x 96 uint8 are 89 MB, its 1,975 localizer stacks of 3 x 256 x 256 are 388 MB). Held on
the device, a batch is an index gather: no loader workers, no per-sample Python, no
host-to-device copy per step. :class:`RoiBank` holds the disc ROIs (for
:class:`~lumbarssl.data.batch_augment.BatchAugment`), :class:`StackBank` the localizer
inputs grouped by series, and :class:`EpochSampler` gives each process its shard of an
epoch's permutation, the same shards as :class:`torch.utils.data.DistributedSampler`.
:func:`should_use_device_data` decides when to use them.
"""

from __future__ import annotations

import math
from typing import Final, Literal

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import Tensor

from lumbarssl._core.distributed import get_rank, get_world_size
from lumbarssl.data.cache import PreparedCache
from lumbarssl.data.constants import LEVELS, MISSING_LABEL
from lumbarssl.errors import ConfigError

__all__ = [
    "DEVICE_DATA_SHARE",
    "DeviceDataMode",
    "EpochSampler",
    "RoiBank",
    "StackBank",
    "resolve_device_data",
    "should_use_device_data",
]

#: Largest share of the device's free memory the data may take (our choice: the rest is for
#: the model, its activations and the allocator's cache).
DEVICE_DATA_SHARE: Final = 0.5
#: ``auto``: on where :func:`should_use_device_data` says so; ``on``/``off``: forced.
DeviceDataMode = Literal["auto", "on", "off"]
_UINT8_MAX: Final = 255.0


def should_use_device_data(
    nbytes: int, device: torch.device | str, *, share: float = DEVICE_DATA_SHARE
) -> bool:
    """Whether ``nbytes`` of training data should live on ``device``.

    On CUDA: when the data takes at most ``share`` of the device's free memory
    (:func:`torch.cuda.mem_get_info`). On the CPU the data is in memory anyway and the default
    path is kept (off): the measured gain of the batched path there is in the augmentation,
    which does not need the bank (see ``benchmarks/bench_gpu.py``). Other devices: off.

    Args:
        nbytes: Bytes the data takes (:meth:`RoiBank.nbytes_for`, :meth:`StackBank.nbytes_for`).
        device: The training device.
        share: Largest share of free memory to use, in (0, 1].

    Returns:
        ``True`` to hold the data on the device.

    Raises:
        ValueError: If ``share`` or ``nbytes`` is out of range.
    """
    if not 0.0 < share <= 1.0:
        raise ValueError(f"share must be in (0, 1], got {share}")
    if nbytes < 0:
        raise ValueError(f"nbytes must be >= 0, got {nbytes}")
    device = torch.device(device)
    if device.type != "cuda":
        return False
    free, _total = torch.cuda.mem_get_info(device)
    return nbytes <= share * free


def resolve_device_data(
    mode: DeviceDataMode,
    nbytes: int,
    device: torch.device | str,
    *,
    share: float = DEVICE_DATA_SHARE,
) -> bool:
    """Turn a stage's ``device_data`` setting into a decision.

    Args:
        mode: ``"auto"`` (:func:`should_use_device_data`), ``"on"`` or ``"off"``.
        nbytes: Bytes the data takes.
        device: The training device.
        share: See :func:`should_use_device_data`.

    Returns:
        ``True`` to hold the data on the device.

    Raises:
        ConfigError: If ``mode`` is unknown, or ``"on"`` on a CUDA device whose free memory
            cannot hold the data.
    """
    if mode == "off":
        return False
    if mode == "auto":
        return should_use_device_data(nbytes, device, share=share)
    if mode != "on":
        raise ConfigError(f"device_data must be auto, on or off, got {mode!r}")
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        if nbytes > free:
            raise ConfigError(
                f"device_data=on: the data takes {nbytes / 2**20:.0f} MiB but {device} has "
                f"{free / 2**20:.0f} MiB free; use device_data=auto or off"
            )
    return True


def _rows(cache: PreparedCache, rows: ArrayLike | None) -> np.ndarray:
    if rows is None:
        return np.arange(len(cache), dtype=np.int64)
    out = np.asarray(rows, dtype=np.int64).reshape(-1)
    if out.size and (out.min() < 0 or out.max() >= len(cache)):
        raise IndexError(f"rows must be in [0, {len(cache) - 1}], got {out.min()}..{out.max()}")
    return out


def _upload(array: np.ndarray, device: torch.device) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).to(device)


class EpochSampler:
    """Each process's positions for an epoch: a seeded permutation, sharded by rank.

    The order depends only on ``(seed, epoch)``, so a resumed run sees the same batches; the
    shards are those of :class:`torch.utils.data.DistributedSampler` with the same settings
    (padding by repetition, or dropping the tail with ``drop_last``).

    Args:
        n: Number of items (e.g. ``len(bank)``).
        seed: Seed of the permutation.
        shuffle: Permute every epoch; otherwise ``0 .. n - 1`` in order.
        drop_last: Drop the tail that does not divide among the processes instead of
            repeating items to pad it.
        rank: This process; :func:`~lumbarssl._core.distributed.get_rank` when ``None``.
        world_size: Number of processes; ``get_world_size()`` when ``None``.

    Raises:
        ValueError: If ``n`` is negative or the rank is outside the world.
    """

    def __init__(
        self,
        n: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        self.world_size = get_world_size() if world_size is None else world_size
        self.rank = get_rank() if rank is None else rank
        if n < 0 or self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(
                f"need n >= 0 and 0 <= rank < world_size, got n={n}, rank={self.rank}, "
                f"world_size={self.world_size}"
            )
        self.n = n
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        if drop_last and n % self.world_size:
            self.per_rank = n // self.world_size
        else:
            self.per_rank = math.ceil(n / self.world_size)

    def __len__(self) -> int:
        return self.per_rank

    def positions(self, epoch: int) -> Tensor:
        """This process's positions for ``epoch``.

        Args:
            epoch: Epoch number.

        Returns:
            int64 (len(self),) on the CPU.
        """
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(self.seed + epoch)
            order = torch.randperm(self.n, generator=generator)
        else:
            order = torch.arange(self.n)
        total = self.per_rank * self.world_size
        if total > self.n:  # pad by repeating from the start, as DistributedSampler does
            repeats = math.ceil((total - self.n) / max(self.n, 1))
            order = torch.cat([order, order.repeat(repeats)[: total - self.n]])
        return order[:total][self.rank : total : self.world_size]

    def batches(
        self,
        epoch: int,
        batch_size: int,
        *,
        drop_last: bool = False,
        device: torch.device | str | None = None,
    ) -> list[Tensor]:
        """This process's batches of positions for ``epoch``, moved to ``device`` in one copy.

        Args:
            epoch: Epoch number.
            batch_size: Positions per batch.
            drop_last: Drop a last incomplete batch.
            device: Where the positions go (the bank's device); CPU when ``None``.

        Returns:
            int64 (batch_size,) tensors, views of one tensor on ``device``.

        Raises:
            ValueError: If ``batch_size`` is not positive.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        positions = self.positions(epoch)
        if drop_last:
            positions = positions[: len(positions) // batch_size * batch_size]
        if device is not None:
            positions = positions.to(device)
        return [positions[i : i + batch_size] for i in range(0, len(positions), batch_size)]


class RoiBank:
    """Disc ROIs and their labels on one device; batches are index gathers.

    Position ``p`` of the bank holds cache row ``rows[p]``.

    Args:
        rois: uint8 (N, H, W).
        rows: int64 (N,), the cache rows (the augmentation's randomness key).
        labels: int64 (N,), 0/1/2 or -1 for an unlabeled disc.
        levels: int64 (N,), 0-4 for L1/L2 ... L5/S1.
        multislice: uint8 (N, S, H, W) neighbouring-slice ROIs, or ``None``.
        multislice_mask: bool (N, S), or ``None``.

    Raises:
        ValueError: If the lengths or devices differ.
    """

    def __init__(
        self,
        rois: Tensor,
        rows: Tensor,
        labels: Tensor,
        levels: Tensor,
        *,
        multislice: Tensor | None = None,
        multislice_mask: Tensor | None = None,
    ) -> None:
        tensors = [rois, rows, labels, levels] + [
            t for t in (multislice, multislice_mask) if t is not None
        ]
        if len({len(t) for t in tensors}) != 1 or len({t.device for t in tensors}) != 1:
            raise ValueError(
                "bank tensors must have one length and one device, got "
                + ", ".join(f"{tuple(t.shape)} on {t.device}" for t in tensors)
            )
        if rois.dim() != 3 or rois.dtype != torch.uint8:
            raise ValueError(f"rois must be uint8 (N, H, W), got {rois.dtype} {tuple(rois.shape)}")
        self.rois = rois
        self.rows = rows
        self.labels = labels
        self.levels = levels
        self.multislice = multislice
        self.multislice_mask = multislice_mask

    @staticmethod
    def select_rows(
        cache: PreparedCache, rows: ArrayLike | None = None, *, labeled_only: bool = False
    ) -> np.ndarray:
        """The cache rows a bank holds, as ``DiscROIDataset`` selects them.

        Args:
            cache: The prepared cache.
            rows: Rows to use; all when ``None``.
            labeled_only: Keep graded discs only.

        Returns:
            int64 (N,).

        Raises:
            IndexError: If a row is outside the cache.
        """
        selected = _rows(cache, rows)
        if labeled_only:
            selected = selected[cache.table.label[selected] != MISSING_LABEL]
        return selected

    @staticmethod
    def nbytes_for(cache: PreparedCache, n_rows: int, *, multislice: bool = False) -> int:
        """Bytes a bank of ``n_rows`` of ``cache`` takes on the device.

        Args:
            cache: The prepared cache.
            n_rows: Rows the bank will hold.
            multislice: Whether the neighbouring-slice ROIs are included.

        Returns:
            The size in bytes.
        """
        per_row = int(np.prod(cache.rois.shape[1:])) + 3 * 8
        if multislice:
            per_row += int(np.prod(cache.multislice.shape[1:])) + cache.multislice.shape[1]
        return n_rows * per_row

    @classmethod
    def from_cache(
        cls,
        cache: PreparedCache,
        device: torch.device | str,
        *,
        rows: ArrayLike | None = None,
        labeled_only: bool = False,
        multislice: bool = False,
    ) -> RoiBank:
        """Copy rows of a prepared cache to ``device``, once.

        Args:
            cache: The prepared cache.
            device: Where the bank lives.
            rows: Cache rows to hold (e.g. a split); all when ``None``.
            labeled_only: Keep graded discs only (supervised stages).
            multislice: Also hold the neighbouring-slice ROIs and their mask.

        Returns:
            The bank.

        Raises:
            IndexError: If a row is outside the cache.
        """
        device = torch.device(device)
        selected = cls.select_rows(cache, rows, labeled_only=labeled_only)
        table = cache.table
        return cls(
            _upload(cache.rois[selected], device),
            _upload(selected, device),
            _upload(table.label[selected].astype(np.int64), device),
            _upload(table.level_id[selected].astype(np.int64), device),
            multislice=_upload(cache.multislice[selected], device) if multislice else None,
            multislice_mask=(
                _upload(cache.multislice_mask[selected].astype(bool), device)
                if multislice
                else None
            ),
        )

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def device(self) -> torch.device:
        """The device the bank lives on."""
        return self.rois.device

    @property
    def nbytes(self) -> int:
        """Bytes the bank takes."""
        tensors = [self.rois, self.rows, self.labels, self.levels]
        tensors += [t for t in (self.multislice, self.multislice_mask) if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)

    def gather(self, positions: Tensor) -> dict[str, Tensor]:
        """A batch by positions, without leaving the device.

        Args:
            positions: int64 (B,) positions in the bank, on its device.

        Returns:
            ``"roi"``: uint8 (B, H, W); ``"label"``, ``"level"``: int64 (B,); ``"index"``:
            int64 (B,), the cache rows; with multislice, ``"multislice"``: uint8
            (B, S, H, W) and ``"mask"``: bool (B, S).
        """
        batch = {
            "roi": self.rois[positions],
            "label": self.labels[positions],
            "level": self.levels[positions],
            "index": self.rows[positions],
        }
        if self.multislice is not None and self.multislice_mask is not None:
            batch["multislice"] = self.multislice[positions]
            batch["mask"] = self.multislice_mask[positions]
        return batch


class StackBank:
    """2.5D localizer inputs, one per series, with the targets of its discs, on one device.

    The grouping is that of the localizer stage's ``SeriesLocalizerDataset``: the given cache
    rows are grouped by their localizer stack (sorted by stack), each stack with the
    normalised centres of its (up to five) levels.

    Args:
        images: uint8 (U, 3, L, L) stacks.
        target: float32 (U, 5, 2), the centres ``(x / W, y / H)``, 0 where absent.
        mask: bool (U, 5), which levels have a coordinate.
        scale: float32 (U, 2), ``(W, H)`` of the annotated slice.
        spacing: float32 (U, 2), PixelSpacing ``(column, row)`` in mm (NaN if unknown).
        row: int64 (U, 5), the cache row of each level or -1.

    Raises:
        ValueError: If the lengths or devices differ.
    """

    def __init__(
        self,
        images: Tensor,
        target: Tensor,
        mask: Tensor,
        scale: Tensor,
        spacing: Tensor,
        row: Tensor,
    ) -> None:
        tensors = (images, target, mask, scale, spacing, row)
        if len({len(t) for t in tensors}) != 1 or len({t.device for t in tensors}) != 1:
            raise ValueError(
                "bank tensors must have one length and one device, got "
                + ", ".join(f"{tuple(t.shape)} on {t.device}" for t in tensors)
            )
        self.images = images
        self.target = target
        self.mask = mask
        self.scale = scale
        self.spacing = spacing
        self.row = row

    @staticmethod
    def nbytes_for(cache: PreparedCache, n_stacks: int) -> int:
        """Bytes a bank of ``n_stacks`` stacks takes on the device.

        Args:
            cache: The prepared cache.
            n_stacks: Stacks the bank will hold.

        Returns:
            The size in bytes.
        """
        n_levels = len(LEVELS)
        per_stack = int(np.prod(cache.localizer_images.shape[1:]))
        per_stack += n_levels * (2 * 4 + 1 + 8) + 2 * 4 * 2
        return n_stacks * per_stack

    @classmethod
    def from_cache(
        cls, cache: PreparedCache, device: torch.device | str, *, rows: ArrayLike | None = None
    ) -> StackBank:
        """Group rows of a prepared cache by localizer stack and copy them to ``device``.

        Args:
            cache: The prepared cache.
            device: Where the bank lives.
            rows: Cache rows whose stacks to hold (e.g. a split); all when ``None``.

        Returns:
            The bank.

        Raises:
            IndexError: If a row is outside the cache.
            ValueError: If two rows give the same level of the same stack.
        """
        device = torch.device(device)
        table = cache.table
        selected = _rows(cache, rows)
        stacks = np.unique(table.localizer_index[selected])  # sorted
        slot = np.searchsorted(stacks, table.localizer_index[selected])
        levels = table.level_id[selected]
        n, n_levels = len(stacks), len(LEVELS)
        row = np.full((n, n_levels), -1, dtype=np.int64)
        if np.unique(slot * n_levels + levels).size != len(selected):
            raise ValueError("two rows give the same level of one localizer stack")
        row[slot, levels] = selected
        _, first_position = np.unique(slot, return_index=True)
        first = selected[first_position]  # the first given row of each stack
        width = table.width[first].astype(np.float64)
        height = table.height[first].astype(np.float64)
        target = np.zeros((n, n_levels, 2), dtype=np.float32)
        target[slot, levels, 0] = table.x[selected] / width[slot]
        target[slot, levels, 1] = table.y[selected] / height[slot]
        spacing = np.stack([table.col_spacing_mm[first], table.row_spacing_mm[first]], axis=1)
        return cls(
            _upload(cache.localizer_images[stacks], device),
            _upload(target, device),
            _upload(row >= 0, device),
            _upload(np.stack([width, height], axis=1).astype(np.float32), device),
            _upload(spacing.astype(np.float32), device),
            _upload(row, device),
        )

    def __len__(self) -> int:
        return len(self.images)

    @property
    def device(self) -> torch.device:
        """The device the bank lives on."""
        return self.images.device

    @property
    def nbytes(self) -> int:
        """Bytes the bank takes."""
        tensors = (self.images, self.target, self.mask, self.scale, self.spacing, self.row)
        return sum(t.numel() * t.element_size() for t in tensors)

    def gather(self, positions: Tensor) -> dict[str, Tensor]:
        """A batch of stacks by positions, with the keys of ``SeriesLocalizerDataset``.

        Args:
            positions: int64 (B,) positions in the bank, on its device.

        Returns:
            ``"image"``: float32 (B, 3, L, L) in [0, 1]; ``"level"``: int64 (B, 5), the levels
            0-4; ``"target"``: float32 (B, 5, 2); ``"mask"``: bool (B, 5); ``"scale"``,
            ``"spacing"``: float32 (B, 2); ``"row"``: int64 (B, 5).
        """
        n_levels = self.row.shape[1]
        levels = torch.arange(n_levels, device=self.device).expand(len(positions), n_levels)
        return {
            "image": self.images[positions].float() / _UINT8_MAX,
            "level": levels,
            "target": self.target[positions],
            "mask": self.mask[positions],
            "scale": self.scale[positions],
            "spacing": self.spacing[positions],
            "row": self.row[positions],
        }
