"""``prepare`` on data from the synthetic generator: the two halves of the data layer agree."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from lumbarssl.data import PreparedCache, prepare_cache, read_series
from lumbarssl.data.constants import COORDINATES_CSV, IMAGES_DIR, LEVEL_SLUGS, LEVELS, TRAIN_CSV
from lumbarssl.data.prepare import PrepareConfig
from lumbarssl.data.roi import extract_roi
from lumbarssl.synthetic import SyntheticConfig, generate_dataset

# Small images that still fit the phantom's minimum field of view (see SyntheticConfig).
SMALL = SyntheticConfig(
    n_studies=8,
    seed=3,
    image_size_range=(64, 96),
    pixel_spacing_range=(2.2, 4.0),
    field_of_view_range=(200.0, 260.0),
    slices_range=(9, 11),
    p_partial_coordinates=0.3,
)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("synthetic")
    data, out = root / "data", root / "cache"
    generate_dataset(data, SMALL, progress=False)
    prepare_cache(data, out, PrepareConfig(roi_size=32, localizer_size=64), progress=False)
    return data, out


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_every_coordinate_row_is_prepared_or_skipped_with_a_reason(
    prepared: tuple[Path, Path],
) -> None:
    data, out = prepared
    coordinates = {(r["study_id"], r["level"]) for r in _rows(data / COORDINATES_CSV)}
    indexed = {(r["study_id"], r["level"]) for r in _rows(out / "index.csv")}
    skipped = _rows(out / "skipped.csv")
    assert indexed <= coordinates
    # The generator writes only valid files, so every coordinate row must be usable.
    assert indexed == coordinates
    # Graded levels without a coordinate (partial studies) are recorded, not lost.
    assert {r["reason"] for r in skipped} <= {"missing_coordinate"}


def test_labels_match_train_csv(prepared: tuple[Path, Path]) -> None:
    data, out = prepared
    grades = {
        (row["study_id"], level): row[f"spinal_canal_stenosis_{slug}"]
        for row in _rows(data / TRAIN_CSV)
        for level, slug in zip(LEVELS, LEVEL_SLUGS, strict=True)
    }
    for row in _rows(out / "index.csv"):
        assert row["severity"] == grades[(row["study_id"], row["level"])]


def test_cached_rois_equal_a_direct_extraction(prepared: tuple[Path, Path]) -> None:
    data, out = prepared
    cache = PreparedCache.open(out)
    table = cache.table
    for i in range(0, len(table), 7):
        series = read_series(
            data / IMAGES_DIR / str(int(table.study_id[i])) / str(int(table.series_id[i]))
        )
        image = series.slice_for(int(table.instance_number[i]))
        expected = extract_roi(image, float(table.x[i]), float(table.y[i]), 32)
        np.testing.assert_array_equal(cache.rois[i], expected)


def test_roi_centre_lies_on_the_bright_csf_canal(prepared: tuple[Path, Path]) -> None:
    # The synthetic coordinates sit in the CSF behind each disc (bright on T2); the crop
    # convention puts that pixel at (H // 2, W // 2). Normal discs have an open canal there.
    cache = PreparedCache.open(out := prepared[1])
    normal = np.flatnonzero(cache.table.label == 0)
    assert len(normal) > 10, out
    centre = cache.rois[normal, 16, 16].astype(float)
    median = np.median(cache.rois[normal].reshape(len(normal), -1), axis=1)
    assert np.mean(centre > median) > 0.9
