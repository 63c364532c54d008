"""Per-epoch training records and their JSON-lines file."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, BinaryIO

from lumbarssl._core.atomic import atomic_write
from lumbarssl.errors import InputError

__all__ = ["EpochRecord", "append_history", "read_history", "write_history"]

JSONValue = float | int | bool | str | None | list[float | None] | dict[str, object]

# Prefix of validation metrics in records and in ``monitor`` names.
VAL_PREFIX = "val_"
TRAIN_LOSS = "train_loss"
_FIXED_KEYS = ("epoch", TRAIN_LOSS, "lr", "seconds", "images_per_s", "is_best")
# Written only when not empty, so older readers of the file see the same keys as before.
_CHANGES = "changes"


@dataclass(frozen=True)
class EpochRecord:
    """What one training epoch produced.

    Serialised as one flat JSON object per line of ``history.jsonl``: the fields below, with
    each validation metric ``name`` stored as ``val_<name>``. Non-finite numbers are written as
    ``null`` so that every JSON reader accepts the file.

    Attributes:
        epoch: 1-based epoch number.
        train_loss: Mean training loss over the epoch's samples (over all processes under
            ``torchrun``).
        lr: Learning rate of each optimizer parameter group during the epoch.
        seconds: Wall-clock time of the epoch, validation included.
        images_per_s: Training throughput over all processes, validation excluded, in samples
            per second as counted by the Trainer's ``batch_size_fn`` (for contrastive batches of
            shape (B, V, C, H, W), count ``B * V`` to get images).
        val: Validation metrics by name (without the ``val_`` prefix); empty without validation.
        is_best: Whether this epoch improved the monitored metric (and wrote ``best.pt``).
        changes: Settings changed when the run was resumed before this epoch, by name:
            ``{"old": ..., "new": ...}`` (``--allow-change``); empty for other epochs.
    """

    epoch: int
    train_loss: float
    lr: tuple[float, ...]
    seconds: float
    images_per_s: float
    val: Mapping[str, float] = field(default_factory=dict)
    is_best: bool = False
    changes: Mapping[str, Mapping[str, object]] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """Return the metrics that ``monitor`` and ``scheduler_metric`` may name.

        Returns:
            ``{"train_loss": ..., "val_<name>": ...}``.
        """
        return {TRAIN_LOSS: self.train_loss} | {
            f"{VAL_PREFIX}{name}": value for name, value in self.val.items()
        }

    def metric(self, name: str) -> float:
        """Look up a metric by its record name.

        Args:
            name: ``"train_loss"`` or ``"val_<name>"``.

        Returns:
            The metric's value.

        Raises:
            KeyError: If the epoch has no such metric; the message lists those it has.
        """
        available = self.metrics()
        if name not in available:
            raise KeyError(f"epoch {self.epoch} has no metric {name!r}; it has {sorted(available)}")
        return available[name]

    def to_dict(self) -> dict[str, JSONValue]:
        """Flatten to the JSON object written to ``history.jsonl``.

        Returns:
            A dict of JSON-compatible values.
        """
        out: dict[str, JSONValue] = {
            "epoch": self.epoch,
            TRAIN_LOSS: _finite_or_none(self.train_loss),
        }
        for name, value in self.val.items():
            out[f"{VAL_PREFIX}{name}"] = _finite_or_none(value)
        out["lr"] = [_finite_or_none(lr) for lr in self.lr]
        out["seconds"] = self.seconds
        out["images_per_s"] = self.images_per_s
        out["is_best"] = self.is_best
        if self.changes:
            out[_CHANGES] = {name: dict(change) for name, change in self.changes.items()}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> EpochRecord:
        """Rebuild a record from :meth:`to_dict`'s output.

        Args:
            data: The flat dict.

        Returns:
            The record.

        Raises:
            ValueError: If a required key is missing or an unknown key is present.
        """
        missing = [key for key in _FIXED_KEYS if key not in data]
        if missing:
            raise ValueError(f"history record {dict(data)} lacks the keys {missing}")
        unknown = [
            k for k in data if k not in (*_FIXED_KEYS, _CHANGES) and not k.startswith(VAL_PREFIX)
        ]
        if unknown:
            raise ValueError(f"history record has unknown keys {unknown}")
        lr = data["lr"]
        if not isinstance(lr, Sequence):
            raise ValueError(f"history record 'lr' must be a list, got {lr!r}")
        changes = data.get(_CHANGES, {})
        if not isinstance(changes, Mapping) or not all(
            isinstance(change, Mapping) for change in changes.values()
        ):
            raise ValueError(f"history record 'changes' must map names to objects: {changes!r}")
        return cls(
            epoch=_as_int(data["epoch"]),
            train_loss=_as_float(data[TRAIN_LOSS]),
            lr=tuple(_as_float(value) for value in lr),
            seconds=_as_float(data["seconds"]),
            images_per_s=_as_float(data["images_per_s"]),
            val={
                key.removeprefix(VAL_PREFIX): _as_float(value)
                for key, value in data.items()
                if key.startswith(VAL_PREFIX)
            },
            is_best=bool(data["is_best"]),
            changes={str(name): dict(change) for name, change in changes.items()},
        )


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _as_float(value: object) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number in a history record, got {value!r}")
    return float(value)


def _as_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer epoch in a history record, got {value!r}")
    return value


def _dump_line(record: EpochRecord) -> str:
    return json.dumps(record.to_dict(), allow_nan=False) + "\n"


def write_history(path: str | Path, records: Iterable[EpochRecord]) -> None:
    """Write records to a JSON-lines file, replacing it atomically.

    Args:
        path: The ``history.jsonl`` file.
        records: The epochs, in order.
    """
    text = "".join(_dump_line(record) for record in records).encode()

    def write(handle: BinaryIO) -> None:
        handle.write(text)

    atomic_write(Path(path), write)


def append_history(path: str | Path, record: EpochRecord) -> None:
    """Append one record as a line of a JSON-lines file.

    Args:
        path: The ``history.jsonl`` file (created if missing).
        record: The epoch to append.
    """
    handle: IO[str]
    with Path(path).open("a", encoding="utf-8") as handle:
        handle.write(_dump_line(record))


def read_history(path: str | Path) -> list[EpochRecord]:
    """Read a ``history.jsonl`` file.

    Args:
        path: The file.

    Returns:
        The records in file order.

    Raises:
        ValueError: If a line is not a valid record; the message names the file and line.
    """
    records = []
    with Path(path).open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                if not isinstance(data, dict):
                    raise ValueError(f"expected a JSON object, got {type(data).__name__}")
                records.append(EpochRecord.from_dict(data))
            except ValueError as err:
                raise InputError(f"{path}, line {number}: {err}") from err
    return records
