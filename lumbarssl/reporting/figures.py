"""The paper's figures (Fig. 1-4) and the prediction overlay, as PNG files.

matplotlib is imported lazily (install the ``plot`` extra); every figure carries a footer
naming its data source, profile and seed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from lumbarssl.reporting.provenance import Provenance
from lumbarssl.training import EpochRecord

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: One colour per level, L1/L2 first (shared by Fig. 1 and the overlay).
LEVEL_COLORS: tuple[str, ...] = ("#e41a1c", "#ff7f00", "#ffd92f", "#4daf4a", "#377eb8")
_GRADE_COLORS = {"Normal/Mild": "#4daf4a", "Moderate": "#ff7f00", "Severe": "#e41a1c"}


class LevelMark(Protocol):
    """One level of an overlay: a :class:`~lumbarssl.pipeline.LevelPrediction`, centre and grade.

    A protocol, so that figures never import the pipeline that produces predictions.
    """

    @property
    def level(self) -> str:
        """``"L1/L2"`` ... ``"L5/S1"``."""

    @property
    def x(self) -> float:
        """Column of the centre, in pixels."""

    @property
    def y(self) -> float:
        """Row of the centre, in pixels."""

    @property
    def grade(self) -> str:
        """Predicted severity."""

    @property
    def probabilities(self) -> Mapping[str, float]:
        """Severity -> probability."""


class OverlayPrediction(Protocol):
    """What :func:`plot_prediction_overlay` draws: a :class:`~lumbarssl.pipeline.SeriesPrediction`.

    A protocol, so that figures never import the pipeline that produces predictions.
    """

    @property
    def instance_number(self) -> int:
        """InstanceNumber of the slice the centres refer to."""

    @property
    def levels(self) -> Sequence[LevelMark]:
        """One mark per level."""

    @property
    def provenance(self) -> Mapping[str, Any]:
        """Facts about the checkpoints; ``provenance["classifier"]`` fills the footer."""


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError('figures need matplotlib: pip install "lumbarssl[plot]"') from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Figure, path: str | Path, footer: str | None) -> Path:
    plt = _pyplot()
    if footer:
        fig.text(0.5, 0.005, footer, ha="center", va="bottom", fontsize=8, color="0.3")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


def plot_rois(
    image: np.ndarray,
    points: Sequence[tuple[str, float, float]],
    crops: Sequence[np.ndarray],
    path: str | Path,
    provenance: Provenance | None = None,
    *,
    slice_title: str = "(a) mid-sagittal T2 slice",
    crop_titles: Sequence[str] | None = None,
) -> Path:
    """Fig. 1: a sagittal slice with the disc coordinates, and the crops beside it.

    Args:
        image: The slice, (H, W), any real dtype.
        points: ``(level, x, y)`` per disc in slice pixels.
        crops: The ROI of each point, (h, w) uint8, same order as ``points``.
        path: Output PNG.
        provenance: Data source, profile and seed for the footer.
        slice_title: Title of the slice panel (another sequence's figure names its own).
        crop_titles: Title of each crop. By default the crops are those of ``points`` and are
            titled by their level; with titles, ``points`` may be any subset of the crops
            (the targets that lie on the slice shown).

    Returns:
        The written path.
    """
    if crop_titles is None:
        if len(points) != len(crops):
            raise ValueError(f"{len(points)} points but {len(crops)} crops")
        crop_titles = [level for level, _, _ in points]
    elif len(crop_titles) != len(crops):
        raise ValueError(f"{len(crop_titles)} crop titles but {len(crops)} crops")
    plt = _pyplot()
    n = max(1, len(crops))
    fig = plt.figure(figsize=(4 + 1.6 * n, 4.6))
    grid = fig.add_gridspec(2, n + 2, width_ratios=[1.2, 1.2] + [1.0] * n)
    ax = fig.add_subplot(grid[:, :2])
    ax.imshow(image, cmap="gray")
    for (level, x, y), color in zip(points, LEVEL_COLORS, strict=False):
        ax.plot(x, y, "o", ms=6, mfc=color, mec="white", mew=0.8)
        ax.annotate(
            level, (x, y), xytext=(8, 0), textcoords="offset points", color=color, fontsize=8
        )
    ax.set_title(slice_title)
    ax.axis("off")
    for i, (title, crop) in enumerate(zip(crop_titles, crops, strict=True)):
        sub = fig.add_subplot(grid[:, i + 2])
        sub.imshow(crop, cmap="gray", vmin=0, vmax=255)
        sub.set_title(title, color=LEVEL_COLORS[i % len(LEVEL_COLORS)], fontsize=9)
        sub.axis("off")
    fig.suptitle(f"(b) {crops[0].shape[0]}x{crops[0].shape[1]} disc ROIs" if crops else "")
    return _save(fig, path, provenance.caption() if provenance else None)


def plot_contrastive_history(
    history: Sequence[EpochRecord], path: str | Path, provenance: Provenance | None = None
) -> Path:
    """Fig. 2: contrastive loss (train and validation) and the learning rate per epoch.

    Args:
        history: Records of the pretraining stage.
        path: Output PNG.
        provenance: For the footer.

    Returns:
        The written path.
    """
    plt = _pyplot()
    epochs = [r.epoch for r in history]
    fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_loss.plot(epochs, [r.train_loss for r in history], "o-", label="train")
    ax_loss.plot(epochs, [r.val.get("loss", np.nan) for r in history], "s-", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="multi-positive NT-Xent", title="(a) contrastive loss")
    ax_loss.legend()
    ax_lr.plot(epochs, [r.lr[0] if r.lr else np.nan for r in history], "o-", color="C2")
    ax_lr.set(xlabel="epoch", ylabel="learning rate", title="(b) cosine schedule")
    fig.tight_layout()
    return _save(fig, path, provenance.caption() if provenance else None)


def plot_finetune_history(
    history: Sequence[EpochRecord],
    confusion: np.ndarray,
    path: str | Path,
    provenance: Provenance | None = None,
    title: str = "",
) -> Path:
    """Fig. 3: validation balanced accuracy, per-class recall, confusion at the chosen epoch.

    Args:
        history: Records of a fine-tuning stage (validation metrics ``bal_acc``,
            ``recall_normal``, ``recall_moderate``, ``recall_severe``).
        confusion: Validation confusion matrix of the selected epoch, (3, 3), rows = truth.
        path: Output PNG.
        provenance: For the footer.
        title: Optional figure title (e.g. which Table 1 row).

    Returns:
        The written path.
    """
    plt = _pyplot()
    epochs = [r.epoch for r in history]
    best = [r.epoch for r in history if r.is_best]
    chosen = best[-1] if best else None
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.9))
    axes[0].plot(epochs, [r.val.get("bal_acc", np.nan) for r in history], "o-")
    axes[0].set(
        xlabel="epoch", ylabel="balanced accuracy", title="(a) validation balanced accuracy"
    )
    for key, name, color in (
        ("recall_normal", "Normal/Mild", "C2"),
        ("recall_moderate", "Moderate", "C1"),
        ("recall_severe", "Severe", "C3"),
    ):
        axes[1].plot(
            epochs, [r.val.get(key, np.nan) for r in history], "o-", color=color, label=name
        )
    axes[1].set(xlabel="epoch", ylabel="recall", title="(b) per-class recall", ylim=(-0.02, 1.02))
    axes[1].legend(fontsize=8)
    if chosen is not None:
        for ax in axes[:2]:
            ax.axvline(chosen, ls="--", color="0.4", lw=1)
    matrix = np.asarray(confusion)
    axes[2].imshow(matrix, cmap="Blues")
    for (i, j), value in np.ndenumerate(matrix):
        axes[2].text(j, i, str(int(value)), ha="center", va="center", color="black")
    short = ["N/M", "Mod", "Sev"]
    axes[2].set_xticks(range(3), short)
    axes[2].set_yticks(range(3), short)
    axes[2].set(xlabel="predicted", ylabel="true", title=f"(c) confusion, epoch {chosen}")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path, provenance.caption() if provenance else None)


def plot_localizer_predictions(
    images: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    predictions: Sequence[np.ndarray],
    path: str | Path,
    provenance: Provenance | None = None,
    titles: Sequence[str] | None = None,
) -> Path:
    """Fig. 4: localizer predictions (red crosses) against ground truth (green circles).

    Args:
        images: One slice per panel, (H, W).
        truths: True centres per panel, (K, 2) as (x, y) in that slice's pixels.
        predictions: Predicted centres per panel, (K, 2).
        path: Output PNG.
        provenance: For the footer.
        titles: Optional title per panel.

    Returns:
        The written path.
    """
    plt = _pyplot()
    n = len(images)
    fig, axes = plt.subplots(1, max(1, n), figsize=(3.4 * max(1, n), 3.8), squeeze=False)
    for i, ax in enumerate(axes[0]):
        if i >= n:
            ax.axis("off")
            continue
        ax.imshow(images[i], cmap="gray")
        truth, pred = np.asarray(truths[i]), np.asarray(predictions[i])
        ax.plot(truth[:, 0], truth[:, 1], "o", mfc="none", mec="lime", ms=9, mew=1.5, label="truth")
        ax.plot(pred[:, 0], pred[:, 1], "x", color="red", ms=8, mew=1.8, label="prediction")
        if titles is not None:
            ax.set_title(titles[i], fontsize=9)
        ax.axis("off")
    axes[0][0].legend(loc="lower left", fontsize=7)
    fig.tight_layout()
    return _save(fig, path, provenance.caption() if provenance else None)


def plot_prediction_overlay(
    image: np.ndarray, prediction: OverlayPrediction, path: str | Path
) -> Path:
    """The mid slice with each level's predicted centre and grade (``lumbarssl predict``).

    Args:
        image: The slice the prediction refers to, (H, W).
        prediction: Output of :meth:`lumbarssl.pipeline.DiscGrader.predict_series`.
        path: Output PNG.

    Returns:
        The written path.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.imshow(image, cmap="gray")
    for level in prediction.levels:
        color = _GRADE_COLORS.get(level.grade, "white")
        ax.plot(level.x, level.y, "o", ms=7, mfc=color, mec="white")
        p = level.probabilities[level.grade]
        ax.annotate(
            f"{level.level}: {level.grade} ({p:.2f})",
            (level.x, level.y),
            xytext=(10, 0),
            textcoords="offset points",
            color=color,
            fontsize=9,
            bbox={"facecolor": "black", "alpha": 0.5, "pad": 1, "edgecolor": "none"},
        )
    ax.set_title(f"instance {prediction.instance_number}: automated grading")
    ax.axis("off")
    clf = prediction.provenance.get("classifier", {})
    footer = (
        f"model trained on {clf.get('data_source', '?')} data · profile {clf.get('profile', '?')} "
        f"· seed {clf.get('seed', '?')} · not for clinical use"
    )
    return _save(fig, path, footer)


__all__ = [
    "LEVEL_COLORS",
    "LevelMark",
    "OverlayPrediction",
    "plot_contrastive_history",
    "plot_finetune_history",
    "plot_localizer_predictions",
    "plot_prediction_overlay",
    "plot_rois",
]
