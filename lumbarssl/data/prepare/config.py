"""Settings and result of ``lumbarssl prepare``: :class:`PrepareConfig`, :class:`PrepareResult`.

Plain types only: importing this module (as every Dataset does through
:func:`~lumbarssl.data.prepare.extract.prepare_in_memory`) loads no process pool and no writer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from lumbarssl._core.config import ConfigBase
from lumbarssl.data.cache import SKIPPED_CSV
from lumbarssl.data.roi import LOCALIZER_SIZE, ROI_SIZE
from lumbarssl.data.skips import OnError, SkipReason

__all__ = [
    "CACHE_FORMAT_VERSION",
    "PrepareConfig",
    "PrepareResult",
    "format_summary",
]

#: Bumped when the layout of the prepared files changes.
CACHE_FORMAT_VERSION = 1
#: Highest zlib level of a PNG.
_MAX_PNG_LEVEL = 9


@dataclass(frozen=True, kw_only=True)
class PrepareConfig(ConfigBase):
    """Settings of ``lumbarssl prepare``; saved in ``prepare_meta.json``.

    Keyword-only; positional arguments (``roi_size, slices, ...`` in the order below) still
    work with a :class:`DeprecationWarning`.

    Attributes:
        roi_size: Side of the square ROI in pixels (paper Sec. 4.1: 96).
        slices: ROIs per disc in ``rois_multislice.npy``: the annotated slice and its
            ``slices // 2`` spatial neighbours on each side; odd; 1 writes no such file.
        localizer_size: Side of the 2.5D localizer input (paper Sec. 4.5: 256).
        pad_value: Constant padding in normalised units (paper Sec. 3.1: constant padding;
            0 = the slice's darkest value).
        on_error: ``"skip"`` records a bad row or file in ``skipped.csv`` and goes on;
            ``"raise"`` stops at the first one.
        png_compress_level: zlib level of the ROI PNGs, 0-9; lossless at every level. The
            default 0 stores them uncompressed, as large as their rows of ``rois.npy``: MR
            noise leaves deflate little to gain (level 1 saves about a fifth of the size on
            synthetic ROIs) for about 30 % more time per PNG.
        conditions: ``"spinal"`` (default): the paper's input, one ROI per spinal canal
            coordinate on Sagittal T2/STIR; the outputs are those of earlier versions byte for
            byte (this field is then left out of :meth:`to_dict`). ``"all"``: one ROI per
            (condition, side, level) coordinate on the series and instance it names (Sagittal
            T1 for foraminal narrowing, Axial T2 for subarticular stenosis), axial levels
            checked against the geometry (:mod:`lumbarssl.data.prepare.conditions`);
            ``index.csv`` gains a ``condition`` column.
    """

    _positional_fields: ClassVar[tuple[str, ...]] = (
        "roi_size",
        "slices",
        "localizer_size",
        "pad_value",
        "on_error",
        "png_compress_level",
    )

    roi_size: int = ROI_SIZE  # Sec. 4.1: 96 x 96 crops
    slices: int = 1
    localizer_size: int = LOCALIZER_SIZE  # Sec. 4.5: 256 x 256 2.5D input
    pad_value: float = 0.0  # Sec. 3.1: constant padding
    on_error: OnError = "skip"
    png_compress_level: int = 0
    conditions: str = "spinal"

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dictionary; ``conditions`` only when it is not ``"spinal"``."""
        data = super().to_dict()
        if self.conditions == "spinal":
            # Keeps prepare_meta.json and the resume fingerprint of spinal runs as they were.
            del data["conditions"]
        return data

    def __post_init__(self) -> None:
        if self.conditions not in ("spinal", "all"):
            raise ValueError(f"conditions must be 'spinal' or 'all', got {self.conditions!r}")
        if self.roi_size < 1:
            raise ValueError(f"roi_size must be >= 1, got {self.roi_size}")
        if self.slices < 1 or self.slices % 2 == 0:
            raise ValueError(f"slices must be an odd number >= 1, got {self.slices}")
        if self.localizer_size < 1:
            raise ValueError(f"localizer_size must be >= 1, got {self.localizer_size}")
        if not 0.0 <= self.pad_value <= 1.0:
            raise ValueError(f"pad_value must be in [0, 1], got {self.pad_value}")
        if self.on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', got {self.on_error!r}")
        if not 0 <= self.png_compress_level <= _MAX_PNG_LEVEL:
            raise ValueError(
                f"png_compress_level must be in [0, {_MAX_PNG_LEVEL}], "
                f"got {self.png_compress_level}"
            )


@dataclass(frozen=True)
class PrepareResult:
    """What a prepare run produced.

    Attributes:
        out_dir: The output directory.
        n_discs: Rows of ``index.csv``.
        n_labeled: Discs with a grade (the others have label -1).
        n_localizer_images: Rows of ``localizer_images.npy``.
        n_studies: Studies with at least one disc to extract.
        n_resumed: Studies found already done from an interrupted run.
        skip_counts: Rows of ``skipped.csv`` per reason code.
    """

    out_dir: Path
    n_discs: int
    n_labeled: int
    n_localizer_images: int
    n_studies: int
    n_resumed: int
    skip_counts: dict[str, int] = field(default_factory=dict)


def format_summary(result: PrepareResult) -> str:
    """Human-readable summary of a run: counts of discs and of skipped rows per reason.

    Args:
        result: The run's result.

    Returns:
        Several lines of text.
    """
    unlabeled = result.n_discs - result.n_labeled
    lines = [
        f"prepared {result.n_discs} discs ({result.n_labeled} labeled, {unlabeled} unlabeled) "
        f"and {result.n_localizer_images} localizer inputs from {result.n_studies} studies "
        f"into {result.out_dir}"
        + (f" ({result.n_resumed} studies resumed)" if result.n_resumed else ""),
    ]
    total = sum(result.skip_counts.values())
    if total == 0:
        lines.append("skipped nothing")
    else:
        lines.append(f"skipped {total} rows (details in {result.out_dir / SKIPPED_CSV}):")
        width = max(len(reason) for reason in result.skip_counts)
        for reason in SkipReason:
            if reason.value in result.skip_counts:
                lines.append(f"  {reason.value:<{width}}  {result.skip_counts[reason.value]:>6}")
    return "\n".join(lines)
