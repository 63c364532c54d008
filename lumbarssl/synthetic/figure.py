"""The synthetic counterpart of the paper's Figure 1: a slice, its five coordinates, five crops."""

from __future__ import annotations

import csv
import dataclasses
import os
import tempfile
from pathlib import Path

import numpy as np
import pydicom
from numpy.typing import NDArray

from lumbarssl.layout import (
    CONDITION_SLUGS,
    CONDITIONS,
    COORDINATES_CSV,
    IMAGES_DIR,
    LEVEL_SLUGS,
    LEVELS,
    SPINAL_CANAL,
    TRAIN_CSV,
)
from lumbarssl.synthetic.config import SyntheticConfig
from lumbarssl.synthetic.generate import generate_dataset

__all__ = ["plot_figure1"]

# Paper Sec. 4.1: 96 x 96 pixel crops centred on each disc's coordinate.
_CROP_SIZE = 96
# One colour per level, shared by the dots and the crop frames (matplotlib's tab10).
_COLORS = ("tab:red", "tab:orange", "tab:green", "tab:blue", "tab:purple")
# The slice panel (a) shows, by condition.
_SEQUENCE = {
    CONDITIONS[0]: "annotated mid-sagittal T2 slice",
    CONDITIONS[1]: "annotated parasagittal T1 slice",
    CONDITIONS[2]: "annotated parasagittal T1 slice",
    CONDITIONS[3]: "annotated axial T2 slice",
    CONDITIONS[4]: "annotated axial T2 slice",
}
# Display window: these percentiles of the slice map to black and white.
_DISPLAY_PERCENTILES = (0.5, 99.5)


def plot_figure1(
    path: str | os.PathLike[str],
    *,
    config: SyntheticConfig | None = None,
    study_index: int = 0,
    crop_size: int = _CROP_SIZE,
    dpi: int = 100,
    condition: str = SPINAL_CANAL,
) -> Path:
    """Draw one synthetic study like the paper's Figure 1 and save it as a PNG.

    The study is written to a temporary RSNA-layout directory by :func:`generate_dataset` and read
    back the way a user would: coordinates from ``train_label_coordinates.csv`` and the annotated
    mid-sagittal T2 instance with pydicom (rescale applied). Panel (a) shows the slice with the five
    coordinates as coloured dots; panel (b) the ``crop_size`` x ``crop_size`` crops centred on
    them (constant padding at the border), framed in the same colours and titled with the grade.

    Needs matplotlib (``pip install "lumbarssl[plot]"``).

    Args:
        path: PNG file to write.
        config: Generator parameters (default: :class:`SyntheticConfig` defaults); ``n_studies``
            is replaced by ``study_index + 1``.
        study_index: Which study of the dataset to draw.
        crop_size: Side of the square crops (pixels).
        dpi: Resolution of the PNG.
        condition: Which condition to draw, as in the coordinates CSV: the spinal canal on
            Sagittal T2 (default), a foraminal narrowing on parasagittal Sagittal T1, or a
            subarticular stenosis on Axial T2 (these two need ``conditions="all"``).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ImportError: If matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError('plot_figure1 needs matplotlib: pip install "lumbarssl[plot]"') from error

    if condition not in CONDITIONS:
        raise ValueError(f"unknown condition {condition!r}; expected one of {CONDITIONS}")
    config = dataclasses.replace(config or SyntheticConfig(), n_studies=study_index + 1)
    with tempfile.TemporaryDirectory() as tmp:
        generate_dataset(tmp, config, progress=False)
        images, points, grades, study_id = _read_study(Path(tmp), study_index, condition)
    if not images:
        raise ValueError(
            f"study {study_index} has no {condition!r} coordinates; generate with "
            'conditions="all" for the foraminal and subarticular conditions'
        )
    # Panel (a) shows the middle level's instance; each crop comes from its own level's instance.
    image = images[sorted(images)[len(images) // 2]]

    lo, hi = np.percentile(image, _DISPLAY_PERCENTILES)
    fig = plt.figure(figsize=(8.0, 6.2), dpi=dpi)
    grid = fig.add_gridspec(
        len(LEVELS), 2, width_ratios=(4.0, 1.0), wspace=0.04, hspace=0.3, left=0.02, right=0.98
    )
    ax = fig.add_subplot(grid[:, 0])
    ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
    for level, color in zip(LEVELS, _COLORS, strict=True):
        if level in points:
            x, y = points[level]
            ax.plot(x, y, "o", color=color, markersize=6, markeredgecolor="white", label=level)
    ax.legend(loc="lower left", fontsize=8, framealpha=0.8)
    ax.set_title(f"(a) {condition}: {_SEQUENCE[condition]}, study {study_id}", fontsize=10)
    ax.set_axis_off()
    for row, (level, color) in enumerate(zip(LEVELS, _COLORS, strict=True)):
        crop_ax = fig.add_subplot(grid[row, 1])
        if level in points:
            crop = _crop(images[level], *points[level], crop_size)
            crop_ax.imshow(crop, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        crop_ax.set_title(f"{level}: {grades.get(level) or 'no label'}", fontsize=8, color=color)
        crop_ax.set_xticks([])
        crop_ax.set_yticks([])
        for spine in crop_ax.spines.values():
            spine.set_edgecolor(color)
            spine.set_linewidth(2.0)
        if row == 0:
            crop_ax.text(
                0.5,
                1.45,
                f"(b) {crop_size}x{crop_size} crops",
                transform=crop_ax.transAxes,
                ha="center",
                fontsize=10,
            )
    fig.suptitle(
        f"Synthetic data: lumbarssl generator {config.generator_version}, seed {config.seed}, "
        f"study index {study_index}",
        fontsize=9,
        y=0.005,
        va="bottom",
    )
    out = Path(path)
    fig.savefig(out, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return out


def _read_study(
    root: Path, study_index: int, condition: str = SPINAL_CANAL
) -> tuple[dict[str, NDArray[np.float64]], dict[str, tuple[float, float]], dict[str, str], int]:
    """Each level's annotated slice (rescaled), coordinates and grades of one condition."""
    with open(root / TRAIN_CSV, newline="", encoding="utf-8") as f:
        train = list(csv.DictReader(f))[study_index]
    study_id = int(train["study_id"])
    prefix = CONDITION_SLUGS[CONDITIONS.index(condition)]
    grades = {
        level: train[f"{prefix}_{slug}"] for level, slug in zip(LEVELS, LEVEL_SLUGS, strict=True)
    }
    with open(root / COORDINATES_CSV, newline="", encoding="utf-8") as f:
        rows = [
            r
            for r in csv.DictReader(f)
            if int(r["study_id"]) == study_id and r["condition"] == condition
        ]
    points = {r["level"]: (float(r["x"]), float(r["y"])) for r in rows}
    images: dict[str, NDArray[np.float64]] = {}
    for r in rows:
        path = root / IMAGES_DIR / str(study_id) / r["series_id"] / f"{r['instance_number']}.dcm"
        ds = pydicom.dcmread(path)
        slope = float(getattr(ds, "RescaleSlope", 1.0))
        intercept = float(getattr(ds, "RescaleIntercept", 0.0))
        images[r["level"]] = ds.pixel_array.astype(np.float64) * slope + intercept
    return images, points, grades, study_id


def _crop(image: NDArray[np.float64], x: float, y: float, size: int) -> NDArray[np.float64]:
    """Square crop whose pixel ``(size // 2, size // 2)`` is image pixel ``(round(y), round(x))``.

    Pixels outside the image are the image minimum (constant padding, paper Sec. 4.1).
    """
    half = size // 2
    padded = np.pad(image, size, mode="constant", constant_values=float(image.min()))
    row, col = round(y) + size - half, round(x) + size - half
    return padded[row : row + size, col : col + size]
