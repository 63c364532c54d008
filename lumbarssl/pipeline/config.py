"""Stage configurations: frozen dataclasses that round-trip to JSON and drive the CLI.

Each stage of the paper (contrastive pretraining, supervised adaptation, localizer training)
is configured by one flat frozen dataclass. Its defaults are the paper's hyper-parameters,
each field's ``metadata["help"]`` says where a value comes from, and the command line is
generated from the fields, so a default lives in exactly one place.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

from lumbarssl.training.device import AmpMode

SplitLevel = Literal["disc", "study"]
DataSourceName = Literal["synthetic", "real"]

_C = TypeVar("_C", bound="StageConfig")


def param(default: Any, help: str) -> Any:
    """A dataclass field with a default and a command-line help text.

    Args:
        default: The default value (immutable).
        help: One line for ``--help``: what the value means and where it comes from.

    Returns:
        A :func:`dataclasses.field`.
    """
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass(frozen=True, kw_only=True)
class StageConfig:
    """Settings shared by every training stage: data, split, hardware and provenance.

    Attributes:
        cache_dir: Output directory of ``lumbarssl prepare`` (the ROI cache).
        out_dir: Directory for checkpoints, history, config and reports of this stage.
        split: ``"disc"``: stratified by grade at the disc level as in the paper (Sec. 4.1;
            discs of one patient can land on both sides); ``"study"``: grouped by study,
            leakage-free.
        val_size: Fraction of the graded discs used for model selection.
        test_size: Fraction of the graded discs held out for the reported metrics (Sec. 4.1:
            20 %).
        seed: Seed of the split, the initialisation, the data order and the augmentations.
        device: ``"auto"`` (CUDA, then MPS, then CPU) or a device name.
        amp: Mixed precision; ``"auto"`` turns it on for GPUs only.
        channels_last: Channels-last memory format (faster on tensor-core GPUs).
        compile: Compile the model with :func:`torch.compile`.
        num_workers: DataLoader worker processes; ``None`` derives it from the CPU count.
        progress: ``"auto"``, ``"bar"``, ``"lines"`` or ``"off"``.
        resume: Continue from ``out_dir/last.pt`` instead of starting over.
        data_source: ``"synthetic"`` or ``"real"``, recorded in every output.
        profile: Name of the run profile, recorded in every output.
    """

    cache_dir: str = param("", "output directory of `lumbarssl prepare`")
    out_dir: str = param("", "directory for this stage's outputs")
    split: SplitLevel = param("disc", "disc: the paper's split (Sec. 4.1); study: leakage-free")
    val_size: float = param(0.1, "fraction of graded discs for model selection")
    test_size: float = param(0.2, "fraction of graded discs held out (Sec. 4.1: 20%%)")
    seed: int = param(0, "seed for split, initialisation, order and augmentation")
    device: str = param("auto", "auto, cpu, cuda, cuda:1, mps")
    amp: AmpMode = param("auto", "mixed precision: auto (GPU only), bf16, fp16, off")
    channels_last: bool = param(False, "channels-last memory format")
    compile: bool = param(False, "torch.compile the model")
    num_workers: int | None = param(None, "DataLoader workers (default: from CPU count)")
    progress: Literal["auto", "bar", "lines", "off"] = param("auto", "progress display")
    resume: bool = param(False, "continue from OUT_DIR/last.pt")
    data_source: DataSourceName = param("real", "synthetic or real, recorded in outputs")
    profile: str = param("custom", "profile name recorded in outputs")

    def __post_init__(self) -> None:
        if not self.cache_dir:
            raise ValueError("cache_dir is required: the OUT_DIR of `lumbarssl prepare`")
        if not self.out_dir:
            raise ValueError("out_dir is required")
        if self.split not in ("disc", "study"):
            raise ValueError(f"split must be 'disc' or 'study', got {self.split!r}")
        for name in ("val_size", "test_size"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {value}")
        if self.val_size + self.test_size >= 1.0:
            raise ValueError(
                f"val_size + test_size must be < 1, got {self.val_size} + {self.test_size}"
            )
        if self.data_source not in ("synthetic", "real"):
            raise ValueError(f"data_source must be 'synthetic' or 'real', got {self.data_source!r}")
        if self.num_workers is not None and self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")

    def _require_positive(self, *names: str) -> None:
        """Raise if any of the named integer fields is below 1."""
        for name in names:
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dictionary (tuples become lists)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[_C], data: Mapping[str, Any]) -> _C:
        """Rebuild from :meth:`to_dict` output.

        Args:
            data: Field values; unknown keys raise.

        Returns:
            The config.

        Raises:
            ValueError: If ``data`` names a field the config does not have.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields: {unknown}")
        hints = typing.get_type_hints(cls)
        values = {k: _tuple_if_needed(hints[k], v) for k, v in data.items()}
        return cls(**values)

    def save(self, path: str | Path) -> None:
        """Write the config as indented JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls: type[_C], path: str | Path) -> _C:
        """Read a config written by :meth:`save`."""
        return cls.from_dict(json.loads(Path(path).read_text()))


def _tuple_if_needed(hint: Any, value: Any) -> Any:
    if isinstance(value, list) and _is_tuple_hint(hint):
        return tuple(value)
    return value


def _is_tuple_hint(hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin is tuple:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_is_tuple_hint(arg) for arg in typing.get_args(hint))
    return False
