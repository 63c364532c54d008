"""Stages of the automatic chain beyond the paper (issue 13): heatmap localizer, slice selector.

Both read a prepared cache (``lumbarssl prepare``) and split it by study exactly as the paper's
localizer does (:func:`~lumbarssl.data.splits.localizer_splits`, same seed, same held-out
studies), train with the plain loops of :mod:`lumbarssl.pipeline.auto_train`, export
``model.pt`` with its provenance (and, for the localizer, the
:class:`~lumbarssl.data.recipes.LocalizerRecipe` that ``predict`` rebuilds its input with),
and score the held-out studies in ``report_test.json``. Neither model is part of the paper.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lumbarssl import paper
from lumbarssl.data.cache import PreparedCache
from lumbarssl.data.dicom import read_series
from lumbarssl.data.recipes import LocalizerRecipe, recipe_to_metadata
from lumbarssl.data.splits import localizer_splits, make_splits
from lumbarssl.errors import ConfigError, MissingFileError
from lumbarssl.layout import IMAGES_DIR, LEVELS
from lumbarssl.metrics.localization import localization_summary
from lumbarssl.models import save_checkpoint
from lumbarssl.models.slice_select import (
    baseline_slice_scores,
    extract_level_patches,
    select_slices,
    slice_selection_accuracy,
)
from lumbarssl.pipeline._common import (
    MODEL_FILE,
    base_metadata,
    locked_stage,
    start_stage,
    write_json,
)
from lumbarssl.pipeline.auto_train import (
    predict_heatmap_localizer,
    train_heatmap_localizer,
    train_patch_refiner,
    train_slice_selector,
)
from lumbarssl.pipeline.config import StageConfig, param
from lumbarssl.pipeline.inference import SELECTOR_SETTINGS_KEY
from lumbarssl.pipeline.result import StageResult
from lumbarssl.training import select_device

__all__ = [
    "HeatmapConfig",
    "SliceSelectorConfig",
    "heatmap_arrays",
    "run_heatmap_training",
    "run_slice_selector_training",
    "selector_arrays",
]


@dataclasses.dataclass(frozen=True, kw_only=True)
class HeatmapConfig(StageConfig):
    """Heatmap localizer training (issue 13; not in the paper).

    Attributes:
        epochs: Passes over the training stacks.
        batch_size: Stacks per step.
        lr: AdamW learning rate (cosine-annealed to 0).
        sigma: Standard deviation of the Gaussian targets, in heatmap cells (stride 4).
        decoder_dim: Channels of the feature-pyramid decoder.
        max_shift: Largest random translation of a training stack (input pixels).
        input_size: Side of the 3-slice input (a multiple of 32).
        refine_patch: Side (stored-stack pixels) of the local refiner's patch around each
            coarse peak; 0 trains no refiner. At a small ``input_size`` one heatmap cell
            spans 10-16 original pixels, and the refiner recovers the lost precision.
        refine_epochs: Passes of the refiner over the annotated levels.
        refine_width: Channels of the refiner.
        refine_steps: Refinement passes at prediction time.
        refine_offset: Largest offset (stored-stack pixels) of a training patch's centre from
            the annotation; about twice the coarse localizer's error per axis.
        hold_out_grading_test: Also leave out of training the test studies of the
            study-level grading split (same seed and fractions), so the automatic chain can be
            scored on studies no model of it saw (the reproduction does).
    """

    epochs: int = param(20, "passes over the training stacks (our choice)")
    batch_size: int = param(8, "stacks per step (our choice)")
    lr: float = param(1e-3, "AdamW learning rate, cosine-annealed (our choice)")
    sigma: float = param(1.5, "Gaussian target sd in heatmap cells (our choice)")
    decoder_dim: int = param(64, "decoder channels (our choice)")
    max_shift: int = param(16, "largest random translation in pixels (our choice)")
    input_size: int = param(paper.LOCALIZER_SIZE, "side of the 3-slice input, a multiple of 32")
    refine_patch: int = param(
        32, "local refiner's patch side in stored-stack pixels; 0: no refiner (our choice)"
    )
    refine_epochs: int = param(8, "passes of the local refiner (our choice)")
    refine_width: int = param(32, "channels of the local refiner (our choice)")
    refine_steps: int = param(2, "refinement passes at prediction time (our choice)")
    refine_offset: float = param(
        8.0, "largest training offset from the annotation, stored-stack pixels (our choice)"
    )
    hold_out_grading_test: bool = param(
        False, "also keep the study-level grading split's test studies out of training"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self._require_positive("epochs", "batch_size", "decoder_dim", "input_size")
        if self.input_size % 32:
            raise ValueError(f"input_size must be a multiple of 32, got {self.input_size}")
        if not self.lr > 0 or not self.sigma > 0 or self.max_shift < 0:
            raise ValueError("lr and sigma must be > 0 and max_shift >= 0")
        if self.refine_patch:
            self._require_positive("refine_epochs", "refine_width", "refine_steps")
            if self.refine_patch < 8 or self.refine_patch % 2:
                raise ValueError(
                    f"refine_patch must be 0 or an even number >= 8, got {self.refine_patch}"
                )
            if not 0 <= self.refine_offset < self.refine_patch / 2:
                raise ValueError(
                    f"refine_offset must be in [0, refine_patch / 2), got {self.refine_offset}"
                )


@dataclasses.dataclass(frozen=True, kw_only=True)
class SliceSelectorConfig(StageConfig):
    """Slice selector training (issue 13; not in the paper).

    Attributes:
        data_dir: The RSNA-layout directory the cache was prepared from (the selector sees
            whole series, which the cache does not hold).
        epochs: Passes over the training levels.
        batch_size: Level sequences per step.
        lr: AdamW learning rate (cosine-annealed to 0).
        width: CNN width of the selector.
        hidden: GRU size per direction.
        patch_mm: Side of the patch around each level's point (mm).
        patch_px: Side of the resampled patch (pixels).
        hold_out_grading_test: Also leave out of training the test studies of the
            study-level grading split (same seed and fractions), so the automatic chain can be
            scored on studies no model of it saw (the reproduction does).
    """

    data_dir: str = param("", "RSNA-layout directory the cache was prepared from")
    epochs: int = param(25, "passes over the training levels (our choice)")
    batch_size: int = param(16, "level sequences per step (our choice)")
    lr: float = param(3e-3, "AdamW learning rate, cosine-annealed (our choice)")
    width: int = param(16, "CNN width (our choice)")
    hidden: int = param(32, "GRU size per direction (our choice)")
    patch_mm: float = param(48.0, "patch side in mm (our choice)")
    patch_px: int = param(32, "patch side in pixels (our choice)")
    hold_out_grading_test: bool = param(
        False, "also keep the study-level grading split's test studies out of training"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.data_dir:
            raise ValueError("data_dir is required: the RSNA-layout directory of the cache")
        self._require_positive("epochs", "batch_size", "width", "hidden", "patch_px")
        if not self.lr > 0 or not self.patch_mm > 0:
            raise ValueError("lr and patch_mm must be > 0")


def _input_px(value: np.ndarray, extent: np.ndarray, size: int) -> np.ndarray:
    """Original pixels -> input pixels of a side-``size`` resize (pixel centres kept)."""
    return np.asarray((value + 0.5) * size / extent - 0.5, dtype=np.float64)


def _original_px(value: np.ndarray, extent: np.ndarray, size: int) -> np.ndarray:
    """Input pixels of a side-``size`` resize -> original pixels."""
    return np.asarray((value + 0.5) * extent / size - 0.5, dtype=np.float64)


def heatmap_arrays(
    cache: PreparedCache, rows: np.ndarray, recipe: LocalizerRecipe
) -> dict[str, np.ndarray | torch.Tensor]:
    """The localizer stacks of ``rows`` with their centres in input and original pixels.

    Args:
        cache: The prepared cache.
        rows: Cache rows (their stacks are grouped as in the paper's localizer).
        recipe: How stacks become inputs.

    Returns:
        ``images`` (U, 3, S, S) float32 tensor; ``points`` (U, 5, 2) input-pixel centres
        tensor (-1e3 where missing); ``mask`` (U, 5) bool tensor; ``xy`` (U, 5, 2) original
        pixels (NaN where missing); ``scale`` (U, 2) ``(W, H)``; ``spacing`` (U, 2) mm
        ``(col, row)``; ``rows`` (U, 5) cache rows or -1; ``stacks`` (U, 3, L, L) uint8
        tensor, the stored stacks (for the local refiner); ``stack_points`` (U, 5, 2) the
        centres in stored-stack pixels (-1e3 where missing).
    """
    from lumbarssl.data.datasets import SeriesLocalizerDataset

    dataset = SeriesLocalizerDataset(cache, rows, recipe=recipe)
    items = [dataset[i] for i in range(len(dataset))]
    size = recipe.input_size
    scale = np.stack([it["scale"].numpy() for it in items]).astype(np.float64)
    target = np.stack([it["target"].numpy() for it in items]).astype(np.float64)
    mask = np.stack([it["mask"].numpy() for it in items])
    xy = target * scale[:, None, :]
    xy[~mask] = np.nan
    points = _input_px(xy, scale[:, None, :], size)
    row_ids = np.stack([it["row"].numpy() for it in items])
    first = np.take_along_axis(row_ids, np.argmax(row_ids >= 0, axis=1)[:, None], axis=1)[:, 0]
    stack_index = np.asarray(cache.table.localizer_index)[first]
    stacks = np.stack([np.asarray(cache.localizer_images[int(i)]) for i in stack_index])
    stack_points = _input_px(xy, scale[:, None, :], recipe.stack_size)
    return {
        "images": torch.stack([it["image"] for it in items]),
        "points": torch.from_numpy(np.nan_to_num(points, nan=-1e3)).float(),
        "mask": torch.from_numpy(mask),
        "xy": xy,
        "scale": scale,
        "spacing": np.stack([it["spacing"].numpy() for it in items]).astype(np.float64),
        "rows": row_ids,
        "stacks": torch.from_numpy(stacks),
        "stack_points": torch.from_numpy(np.nan_to_num(stack_points, nan=-1e3)).float(),
    }


@locked_stage
def run_heatmap_training(config: HeatmapConfig) -> StageResult:
    """Train :class:`~lumbarssl.models.HeatmapLocalizer` and score it on held-out studies.

    Writes ``model.pt`` (with its :class:`~lumbarssl.data.recipes.LocalizerRecipe`),
    ``report_test.json`` (RMSE in px and mm, share within 5 px / 3 mm, per level) and
    ``predictions_test.csv``.

    Args:
        config: The stage config.

    Returns:
        Paths of the run (no per-epoch history: a plain loop).
    """
    _, out, cache = start_stage(config)
    train, test = _train_test_rows(cache, config, config.hold_out_grading_test)
    recipe = LocalizerRecipe.from_cache(cache, input_size=config.input_size)
    data = heatmap_arrays(cache, train, recipe)
    device = select_device(config.runtime.device)
    model = train_heatmap_localizer(
        data["images"],  # type: ignore[arg-type]
        data["points"],  # type: ignore[arg-type]
        data["mask"],  # type: ignore[arg-type]
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        sigma=config.sigma,
        decoder_dim=config.decoder_dim,
        max_shift=config.max_shift,
        seed=config.seed,
        device=device,
    )
    if config.refine_patch:
        refiner = train_patch_refiner(
            data["stacks"],  # type: ignore[arg-type]
            data["stack_points"],  # type: ignore[arg-type]
            data["mask"],  # type: ignore[arg-type]
            epochs=config.refine_epochs,
            patch=config.refine_patch,
            width=config.refine_width,
            max_offset=config.refine_offset,
            seed=config.seed,
            device=device,
        )
        model.refine_steps = config.refine_steps
        model.attach_refiner(refiner)
    metadata = base_metadata(config, "heatmap_localizer")
    model_path = out / MODEL_FILE
    save_checkpoint(model_path, model.cpu(), metadata=metadata, recipe=recipe_to_metadata(recipe))
    held_out = heatmap_arrays(cache, test, recipe)
    pred_in, _ = predict_heatmap_localizer(
        model,
        held_out["images"],  # type: ignore[arg-type]
        stacks=held_out["stacks"],  # type: ignore[arg-type]
    )
    scale = np.asarray(held_out["scale"])[:, None, :]
    pred = _original_px(pred_in.numpy().astype(np.float64), scale, recipe.input_size)
    xy = np.asarray(held_out["xy"])
    has = ~np.isnan(xy[..., 0])
    spacing = np.repeat(np.asarray(held_out["spacing"])[:, None, ::-1], len(LEVELS), axis=1)
    levels = np.broadcast_to(np.array(LEVELS), has.shape)
    summary = localization_summary(
        pred[has], xy[has], pixel_spacing=spacing[has], levels=list(levels[has])
    )
    _write_points(out / "predictions_test.csv", np.asarray(held_out["rows"]), xy, pred)
    write_json(
        out / "report_test.json",
        summary.to_dict() | {"provenance": metadata | {"recipe": recipe_to_metadata(recipe)}},
    )
    return StageResult(out_dir=out, model_path=model_path, history=())


def _write_points(path: Path, rows: np.ndarray, xy: np.ndarray, pred: np.ndarray) -> None:
    """``predictions_test.csv`` in the columns of ``train-localizer``'s."""
    lines = ["row,level,x_true,y_true,x_pred,y_pred,error_px"]
    for u in range(rows.shape[0]):
        for k in range(rows.shape[1]):
            if int(rows[u, k]) < 0:
                continue
            error = float(np.hypot(*(pred[u, k] - xy[u, k])))
            lines.append(
                f"{int(rows[u, k])},{LEVELS[k]},{xy[u, k, 0]:.2f},{xy[u, k, 1]:.2f},"
                f"{pred[u, k, 0]:.2f},{pred[u, k, 1]:.2f},{error:.2f}"
            )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _train_test_rows(
    cache: PreparedCache, config: StageConfig, hold_out: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Training rows (less the grading test studies if asked) and test rows of one split."""
    studies = np.asarray(cache.table.study_id)
    train, _, test = localizer_splits(
        studies, val_size=config.val_size, test_size=config.test_size, seed=config.seed
    )
    if hold_out:
        grading = make_splits(cache, dataclasses.replace(config, split="study"))
        train = train[~np.isin(studies[train], studies[grading.test])]
    return train, test


def selector_arrays(
    cache: PreparedCache,
    rows: np.ndarray,
    data_dir: str | Path,
    *,
    patch_mm: float = 48.0,
    patch_px: int = 32,
) -> dict[str, Any]:
    """Per annotated level of ``rows``: the patch sequence around its point, and the truth.

    Args:
        cache: The prepared cache.
        rows: Cache rows.
        data_dir: The RSNA-layout directory the cache was prepared from.
        patch_mm: Patch side (mm).
        patch_px: Patch side (pixels).

    Returns:
        ``patches`` (list of (S_i, P, P) tensors), ``targets`` (N,) int64 (the annotated
        slice's spatial index), ``baseline`` (N,) the CSF baseline's choice, ``rows`` (N,).

    Raises:
        MissingFileError: If a series directory is missing under ``data_dir``.
    """
    table = cache.table
    groups: dict[tuple[int, int], list[int]] = {}
    for row in np.asarray(rows).tolist():
        key = (int(table.study_id[row]), int(table.series_id[row]))
        groups.setdefault(key, []).append(int(row))
    patches: list[torch.Tensor] = []
    targets: list[int] = []
    baseline: list[int] = []
    order: list[int] = []
    for (study, series_id), members in sorted(groups.items()):
        directory = Path(data_dir) / IMAGES_DIR / str(study) / str(series_id)
        if not directory.is_dir():
            raise MissingFileError(
                f"{directory}: series of the cache not found; --data-dir must be the directory "
                "the cache was prepared from"
            )
        series = read_series(directory)
        if len({p.shape for p in series.pixels}) != 1:
            continue  # slices of different sizes: no volume to select from
        volume = np.stack(series.pixels).astype(np.float32)
        xy = np.array([[float(table.x[r]), float(table.y[r])] for r in members])
        spacing = float(table.col_spacing_mm[members[0]])
        spacing = spacing if np.isfinite(spacing) and spacing > 0 else 1.0
        level_patches = extract_level_patches(
            torch.from_numpy(volume),
            torch.from_numpy(xy).float(),
            spacing,
            patch_mm=patch_mm,
            patch_px=patch_px,
        )
        chosen, _ = select_slices(baseline_slice_scores(volume, xy, spacing))
        for j, row in enumerate(members):
            patches.append(level_patches[j])
            targets.append(int(table.slice_index[row]))
            baseline.append(int(chosen[j]))
            order.append(row)
    return {
        "patches": patches,
        "targets": torch.tensor(targets, dtype=torch.int64),
        "baseline": np.array(baseline, dtype=np.int64),
        "rows": np.array(order, dtype=np.int64),
    }


@locked_stage
def run_slice_selector_training(config: SliceSelectorConfig) -> StageResult:
    """Train :class:`~lumbarssl.models.SliceSelector` and score it on held-out studies.

    Writes ``model.pt`` (its patch settings under
    :data:`~lumbarssl.pipeline.inference.SELECTOR_SETTINGS_KEY`) and ``report_test.json``:
    exact and within-one-slice accuracy of the model, of the CSF baseline and of the centre
    slice, at the annotated points.

    Args:
        config: The stage config.

    Returns:
        Paths of the run (no per-epoch history: a plain loop).

    Raises:
        ConfigError: If no training level could be read.
    """
    _, out, cache = start_stage(config)
    train, test = _train_test_rows(cache, config, config.hold_out_grading_test)
    settings = {"patch_mm": config.patch_mm, "patch_px": config.patch_px}
    data = selector_arrays(cache, train, config.data_dir, **settings)  # type: ignore[arg-type]
    if not data["patches"]:
        raise ConfigError(f"{config.cache_dir}: no training level with a readable series")
    device = select_device(config.runtime.device)
    model = train_slice_selector(
        data["patches"],
        data["targets"],
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        width=config.width,
        hidden=config.hidden,
        seed=config.seed,
        device=device,
    ).eval()
    metadata = base_metadata(config, "slice_selector") | {SELECTOR_SETTINGS_KEY: settings}
    model_path = out / MODEL_FILE
    save_checkpoint(model_path, model.cpu(), metadata=metadata)
    held_out = selector_arrays(cache, test, config.data_dir, **settings)  # type: ignore[arg-type]
    truth = held_out["targets"].numpy()
    with torch.no_grad():
        chosen = np.array([int(model(p[None]).argmax()) for p in held_out["patches"]])
    centre = np.asarray(cache.table.n_slices)[held_out["rows"]] // 2
    write_json(
        out / "report_test.json",
        {
            "n_levels": len(truth),
            "model": _accuracy(chosen, truth),
            "csf_baseline": _accuracy(held_out["baseline"], truth),
            "centre_slice": _accuracy(centre, truth),
            "provenance": metadata,
        },
    )
    return StageResult(out_dir=out, model_path=model_path, history=())


def _accuracy(chosen: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    exact, within_one = slice_selection_accuracy(chosen, truth)
    return {"exact": exact, "within_one": within_one}
