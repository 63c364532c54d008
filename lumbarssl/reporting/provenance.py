"""Where a result came from: data source, profile, seed and software versions.

Every table and figure the library writes carries a :class:`Provenance` so a number can
never be separated from the data (real RSNA or synthetic), profile and seed that made it.
"""

from __future__ import annotations

import dataclasses
import platform
from typing import Any

import torch

from lumbarssl import __version__
from lumbarssl._core.data_source import DataSource, check_data_source

__all__ = ["DataSource", "Provenance"]


@dataclasses.dataclass(frozen=True)
class Provenance:
    """The facts that identify a run.

    Attributes:
        data_source: ``"synthetic"`` for the built-in generator, ``"real"`` for an RSNA 2024
            download.
        profile: Name of the run profile (``"smoke"``, ``"quick"``, ``"paper"`` or custom).
        seed: The run's seed.
        data_dir: The dataset directory the run read.
        lumbarssl_version: Library version that produced the result.
        torch_version: PyTorch version that produced the result.
        device: Device the models ran on (e.g. ``"cpu"``, ``"cuda"``).
        python_version: Python version.
    """

    data_source: DataSource
    profile: str
    seed: int
    data_dir: str = ""
    lumbarssl_version: str = __version__
    torch_version: str = torch.__version__
    device: str = "cpu"
    python_version: str = platform.python_version()

    def __post_init__(self) -> None:
        check_data_source(self.data_source)

    @property
    def data_label(self) -> str:
        """A human-readable name of the data source."""
        return "synthetic phantom" if self.data_source == "synthetic" else "real RSNA 2024"

    def caption(self) -> str:
        """One line naming data, profile and seed, for table captions and figure footers.

        Returns:
            For example ``"data: synthetic phantom · profile: quick · seed: 0"``.
        """
        return f"data: {self.data_label} · profile: {self.profile} · seed: {self.seed}"

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dictionary."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Provenance:
        """Rebuild from :meth:`to_dict` output, ignoring unknown keys."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
