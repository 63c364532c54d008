"""The task is learnable and not trivial: a hand-made feature beats chance, not the ceiling."""

from __future__ import annotations

import csv
import itertools
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
from numpy.typing import NDArray

from lumbarssl.data.constants import (
    COORDINATES_CSV,
    IMAGES_DIR,
    LEVEL_SLUGS,
    LEVELS,
    SEVERITY_TO_LABEL,
    TRAIN_CSV,
)
from lumbarssl.synthetic import TRUTH_CSV, SyntheticConfig, bayes_ceiling, generate_dataset

# Small images, three slices, more stenosis than RSNA so that 60 studies hold ~50 discs of each
# abnormal grade. The ceiling is computed for this very config.
CONFIG = SyntheticConfig(
    n_studies=60,
    seed=5,
    image_size_range=(112, 128),
    pixel_spacing_range=(1.6, 2.4),
    field_of_view_range=(200.0, 260.0),
    slices_range=(3, 3),
    p_sagittal_t1=0.0,
    p_axial_t2=0.0,
    p_missing_labels=0.0,
    p_partial_coordinates=0.0,
    stenosis_prevalence=(0.35, 0.35, 0.35, 0.35, 0.35),
)
# Half-width of the search window across the canal, and the CSF threshold as a fraction of the
# study's CSF intensity.
HALF_WINDOW_MM = 10.0
CSF_FRACTION = 0.75


def _balanced_accuracy(truth: NDArray[np.int64], pred: NDArray[np.int64]) -> float:
    return float(np.mean([np.mean(pred[truth == k] == k) for k in range(3)]))


def _bright(image: NDArray[np.float64], x: float, y: float, half: int, threshold: float) -> int:
    row, col = round(y), round(x)
    return int(np.sum(image[row, max(col - half, 0) : col + half + 1] > threshold))


def test_csf_width_at_the_coordinate_beats_chance_but_not_the_ceiling(tmp_path: Path) -> None:
    generate_dataset(tmp_path, CONFIG, progress=False)
    with open(tmp_path / TRAIN_CSV, newline="") as f:
        train = {r["study_id"]: r for r in csv.DictReader(f)}
    with open(tmp_path / TRUTH_CSV, newline="") as f:
        r_true = {(r["study_id"], r["level"]): float(r["r"]) for r in csv.DictReader(f)}
    per_study: dict[str, list[dict[str, str]]] = defaultdict(list)
    with open(tmp_path / COORDINATES_CSV, newline="") as f:
        for r in csv.DictReader(f):
            per_study[r["study_id"]].append(r)

    labels, estimates, latent = [], [], []
    for study_id, rows in per_study.items():
        first = rows[0]
        ds = pydicom.dcmread(
            tmp_path
            / IMAGES_DIR
            / study_id
            / first["series_id"]
            / f"{first['instance_number']}.dcm"
        )
        image = ds.pixel_array * float(getattr(ds, "RescaleSlope", 1.0)) + float(
            getattr(ds, "RescaleIntercept", 0.0)
        )
        half = round(HALF_WINDOW_MM / float(ds.PixelSpacing[0]))
        points = [(float(r["x"]), float(r["y"])) for r in rows]
        # Reference: the canal behind the vertebral bodies, halfway between consecutive discs.
        bodies = [((a[0] + b[0]) / 2, (a[1] + b[1]) / 2) for a, b in itertools.pairwise(points)]
        csf = float(
            np.median(
                [image[round(y), round(x) - half : round(x) + half + 1].max() for x, y in bodies]
            )
        )
        threshold = CSF_FRACTION * csf
        reference = float(np.median([_bright(image, x, y, half, threshold) for x, y in bodies]))
        slug = dict(zip(LEVELS, LEVEL_SLUGS, strict=True))
        for r, (x, y) in zip(rows, points, strict=True):
            estimates.append(1.0 - _bright(image, x, y, half, threshold) / max(reference, 1.0))
            labels.append(
                SEVERITY_TO_LABEL[train[study_id][f"spinal_canal_stenosis_{slug[r['level']]}"]]
            )
            latent.append(r_true[(study_id, r["level"])])

    truth = np.array(labels)
    assert np.bincount(truth, minlength=3).min() >= 30
    ceiling = bayes_ceiling(CONFIG)
    feature = _balanced_accuracy(truth, ceiling.predict(np.array(estimates)))
    oracle = _balanced_accuracy(truth, ceiling.predict(np.array(latent)))
    assert feature > 0.5, feature  # chance is 1/3
    assert feature < ceiling.balanced_accuracy, (feature, ceiling.balanced_accuracy)
    assert feature < oracle, (feature, oracle)
