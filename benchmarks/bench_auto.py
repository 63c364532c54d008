"""Slice selection and the heatmap localizer on a synthetic dataset (issue 13), on CPU.

Reads an RSNA-layout dataset written by ``lumbarssl synth`` (generator 2.0: the midline drifts
per level), splits its studies into train and test, and reports on the test studies:

* slice selection, exact and within one slice of the annotated instance: the centre-slice
  guess, the CSF baseline and the trained CNN+GRU selector, each at the annotated in-plane
  points and in the automatic chain (points from the heatmap localizer run on the centre
  slice's stack);
* the heatmap localizer's RMSE (px, mm) and share within 5 px / 3 mm, against the noise-free
  centre and against the annotations, on the stack around each level's annotated instance,
  beside the annotation-noise floor (annotation vs true centre).

Example::

    lumbarssl synth /tmp/auto-synth --studies 48 --seed 3 --config auto.json --quiet
    python benchmarks/bench_auto.py /tmp/auto-synth --train 36 --heatmap-epochs 12
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lumbarssl.data.dicom import read_series
from lumbarssl.layout import COORDINATES_CSV, IMAGES_DIR, LEVELS, SAGITTAL_T2, SERIES_CSV
from lumbarssl.metrics import localization_summary
from lumbarssl.models.slice_select import (
    baseline_slice_scores,
    extract_level_patches,
    select_slices,
    slice_selection_accuracy,
)
from lumbarssl.pipeline.auto_train import (
    predict_heatmap_localizer,
    train_heatmap_localizer,
    train_slice_selector,
)
from lumbarssl.synthetic import TRUTH_CSV


@dataclass
class Study:
    """One study: its T2 series and per-level truth."""

    volume: np.ndarray  # (S, H, W) float32, spatial order
    spacing: float
    true_index: np.ndarray  # (5,) spatial index of each level's true (= annotated) instance
    true_xy: np.ndarray  # (5, 2) noise-free centres
    ann_xy: np.ndarray  # (5, 2) annotations (nan where missing)


def load(root: Path) -> list[Study]:
    with open(root / SERIES_CSV, newline="", encoding="utf-8") as f:
        t2 = {
            r["study_id"]: r["series_id"]
            for r in csv.DictReader(f)
            if r["series_description"] == SAGITTAL_T2
        }
    with open(root / TRUTH_CSV, newline="", encoding="utf-8") as f:
        truth = list(csv.DictReader(f))
    with open(root / COORDINATES_CSV, newline="", encoding="utf-8") as f:
        ann = {(r["study_id"], r["level"]): r for r in csv.DictReader(f)}
    studies = []
    for study_id in dict.fromkeys(r["study_id"] for r in truth):
        series = read_series(root / IMAGES_DIR / study_id / t2[study_id])
        volume = np.stack(series.pixels).astype(np.float32)
        spacing = series.geometry.slices[0].pixel_spacing
        assert spacing is not None
        rows = {r["level"]: r for r in truth if r["study_id"] == study_id}
        true_index, true_xy, ann_xy = [], [], []
        for level in LEVELS:
            r = rows[level]
            true_index.append(series.geometry.index_of(int(r["true_instance"])))
            true_xy.append((float(r["true_x"]), float(r["true_y"])))
            a = ann.get((study_id, level))
            ann_xy.append((float(a["x"]), float(a["y"])) if a else (np.nan, np.nan))
        studies.append(
            Study(volume, spacing[0], np.array(true_index), np.array(true_xy), np.array(ann_xy))
        )
    return studies


def stack(volume: np.ndarray, centre: int) -> torch.Tensor:
    """Three slices around ``centre`` (edge slices repeated), standardised: (3, H, W)."""
    idx = np.clip([centre - 1, centre, centre + 1], 0, volume.shape[0] - 1)
    x = torch.from_numpy(volume[idx])
    return (x - x.mean()) / x.std().clamp_min(1e-6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--train", type=int, default=36, help="studies for training")
    parser.add_argument("--heatmap-epochs", type=int, default=12)
    parser.add_argument("--selector-epochs", type=int, default=25)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=8, help="heatmap stacks per step")
    parser.add_argument("--json", type=Path, help="write the numbers here too")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    studies = load(args.data)
    train, test = studies[: args.train], studies[args.train :]
    print(
        f"{len(studies)} studies ({len(train)} train / {len(test)} test), "
        f"loaded in {time.perf_counter() - started:.0f} s"
    )
    results: dict[str, object] = {}

    # --- heatmap localizer: stacks around each distinct annotated instance of a study.
    images, points, masks = [], [], []
    for s in train:
        for centre in sorted(set(s.true_index.tolist())):
            images.append(stack(s.volume, centre))
            points.append(torch.from_numpy(np.nan_to_num(s.ann_xy, nan=-1e3)).float())
            masks.append(torch.from_numpy(~np.isnan(s.ann_xy[:, 0])))
    t0 = time.perf_counter()
    heatmap = train_heatmap_localizer(
        torch.stack(images),
        torch.stack(points),
        torch.stack(masks),
        epochs=args.heatmap_epochs,
        batch_size=args.batch_size,
        lr=1e-3,
        decoder_dim=64,
        device=args.device,
    )
    results["heatmap_train_s"] = time.perf_counter() - t0
    results["heatmap_train_stacks"] = len(images)

    # Evaluate each level on the stack around its own annotated instance.
    per_level_pred, true_xy, ann_xy, spacing, levels = [], [], [], [], []
    centre_pred = []
    for s in test:
        for k in range(len(LEVELS)):
            xy, _ = predict_heatmap_localizer(heatmap, stack(s.volume, int(s.true_index[k]))[None])
            per_level_pred.append(xy[0, k].numpy())
            true_xy.append(s.true_xy[k])
            ann_xy.append(s.ann_xy[k])
            spacing.append((s.spacing, s.spacing))
            levels.append(LEVELS[k])
        xy, _ = predict_heatmap_localizer(heatmap, stack(s.volume, s.volume.shape[0] // 2)[None])
        centre_pred.append(xy[0].numpy())
    pred = np.array(per_level_pred)
    true = np.array(true_xy)
    annotated = np.array(ann_xy)
    has = ~np.isnan(annotated[:, 0])
    sp = np.array(spacing)
    vs_true = localization_summary(pred, true, pixel_spacing=sp, levels=levels)
    vs_ann = localization_summary(pred[has], annotated[has], pixel_spacing=sp[has])
    floor = localization_summary(annotated[has], true[has], pixel_spacing=sp[has])
    results["heatmap_vs_true"] = vs_true.to_dict()
    results["heatmap_vs_annotation"] = vs_ann.to_dict()
    results["annotation_noise_floor"] = floor.to_dict()
    chain = np.concatenate(centre_pred)
    results["heatmap_centre_stack_vs_true"] = localization_summary(
        chain, true, pixel_spacing=sp
    ).to_dict()

    # --- slice selection.
    truth = np.concatenate([s.true_index for s in test])
    centre = np.concatenate([np.full(5, s.volume.shape[0] // 2) for s in test])
    results["select_centre_slice"] = slice_selection_accuracy(centre, truth)

    def baseline(points_of: list[np.ndarray]) -> tuple[float, float]:
        chosen = [
            select_slices(baseline_slice_scores(s.volume, p, s.spacing))[0]
            for s, p in zip(test, points_of, strict=True)
        ]
        return slice_selection_accuracy(np.concatenate(chosen), truth)

    results["select_baseline_true_xy"] = baseline([s.true_xy for s in test])
    ann_or_true = [np.where(np.isnan(s.ann_xy), s.true_xy, s.ann_xy) for s in test]
    results["select_baseline_annotation_xy"] = baseline(ann_or_true)
    results["select_baseline_auto_xy"] = baseline(centre_pred)

    def patches(s: Study, xy: np.ndarray) -> list[torch.Tensor]:
        return list(
            extract_level_patches(
                torch.from_numpy(s.volume), torch.from_numpy(xy).float(), s.spacing, patch_px=32
            )
        )

    train_patches, train_targets = [], []
    for s in train:
        for k, p in enumerate(patches(s, np.where(np.isnan(s.ann_xy), s.true_xy, s.ann_xy))):
            train_patches.append(p)
            train_targets.append(int(s.true_index[k]))
    t0 = time.perf_counter()
    selector = train_slice_selector(
        train_patches,
        torch.tensor(train_targets),
        epochs=args.selector_epochs,
        batch_size=16,
        lr=3e-3,
        width=16,
        hidden=32,
        device=args.device,
    )
    results["selector_train_s"] = time.perf_counter() - t0
    selector.eval()

    def model(points_of: list[np.ndarray]) -> tuple[float, float]:
        chosen = []
        with torch.no_grad():
            for s, xy in zip(test, points_of, strict=True):
                for p in patches(s, xy):
                    chosen.append(int(selector(p[None].to(args.device)).argmax()))
        return slice_selection_accuracy(np.array(chosen), truth)

    results["select_model_annotation_xy"] = model(ann_or_true)
    results["select_model_auto_xy"] = model(centre_pred)
    results["total_s"] = time.perf_counter() - started
    text = json.dumps(results, indent=1, default=float)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
