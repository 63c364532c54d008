"""``PrepareConfig(conditions="all")``: ROIs of all five conditions, axial levels from geometry."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from _synth_configs import tiny_all_conditions
from PIL import Image

from lumbarssl.data.cache import CONDITION_INDEX_COLUMNS, INDEX_COLUMNS, PreparedCache
from lumbarssl.data.datasets import DiscROIDataset, LocalizerDataset, SeriesLocalizerDataset
from lumbarssl.data.prepare import PrepareConfig, prepare_cache, prepare_in_memory
from lumbarssl.data.prepare.conditions import assign_axial_level, read_condition_index
from lumbarssl.data.splits import make_splits
from lumbarssl.layout import (
    CONDITIONS,
    COORDINATES_CSV,
    SAGITTAL_T2,
    SERIES_CSV,
    SPINAL_CANAL,
)
from lumbarssl.synthetic import generate_dataset, plot_figure1

CONFIG = tiny_all_conditions(n_studies=4, seed=8)
SMALL = PrepareConfig(roi_size=32, localizer_size=32)
ALL = PrepareConfig(roi_size=32, localizer_size=32, conditions="all")
AXIAL_IOP = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


@dataclass(frozen=True)
class _Split:
    split: str = "study"
    val_size: float = 0.25
    test_size: float = 0.25
    seed: int = 0


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth_all")
    generate_dataset(root, CONFIG, progress=False)
    return root


@pytest.fixture(scope="module")
def cache_dir(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cache_all")
    prepare_cache(data, out, ALL, progress=False)
    return out


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_default_config_is_spinal_and_keeps_its_dict() -> None:
    assert PrepareConfig().conditions == "spinal"
    assert "conditions" not in PrepareConfig().to_dict()
    assert ALL.to_dict()["conditions"] == "all"
    assert PrepareConfig.from_dict(ALL.to_dict()) == ALL
    with pytest.raises(ValueError, match="conditions must be"):
        PrepareConfig(conditions="foraminal")


def test_one_roi_per_coordinate_row_of_each_condition(data: Path, cache_dir: Path) -> None:
    rows = _csv(cache_dir / "index.csv")
    assert tuple(rows[0]) == CONDITION_INDEX_COLUMNS
    # Every coordinate row of the CSV (none is dropped in CONFIG) gives one ROI of its condition.
    expected = Counter(r["condition"] for r in _csv(data / COORDINATES_CSV))
    assert Counter(r["condition"] for r in rows) == expected
    assert set(expected) == set(CONDITIONS)
    skipped = _csv(cache_dir / "skipped.csv")
    assert [s for s in skipped if s["reason"] != "missing_coordinate"] == []
    rois = np.load(cache_dir / "rois.npy")
    paths = [r["roi_path"] for r in rows]
    assert len(set(paths)) == len(paths)  # left and right on one axial slice keep their PNGs
    for k in range(0, len(rows), 7):
        assert np.array_equal(np.asarray(Image.open(cache_dir / paths[k])), rois[k])


def test_rows_are_on_the_series_and_instance_the_csv_names(data: Path, cache_dir: Path) -> None:
    coords = {(r["study_id"], r["condition"], r["level"]): r for r in _csv(data / COORDINATES_CSV)}
    for row in _csv(cache_dir / "index.csv"):
        source = coords[row["study_id"], row["condition"], row["level"]]
        assert (row["series_id"], row["instance_number"]) == (
            source["series_id"],
            source["instance_number"],
        )
        assert float(row["x"]) == pytest.approx(float(source["x"]))


def test_spinal_rows_equal_the_spinal_only_run(data: Path, cache_dir: Path) -> None:
    spinal, _ = prepare_in_memory(data, SMALL)
    everything = PreparedCache.open(cache_dir)
    assert not spinal.table.has_conditions
    keep = np.flatnonzero(everything.table.condition_id == 0)
    assert np.array_equal(everything.rois[keep], spinal.rois)
    assert np.array_equal(everything.table.x[keep], spinal.table.x)


def test_spinal_only_index_has_no_condition_column(data: Path, tmp_path: Path) -> None:
    prepare_cache(data, tmp_path, SMALL, progress=False)
    rows = _csv(tmp_path / "index.csv")
    assert tuple(rows[0]) == INDEX_COLUMNS
    meta = json.loads((tmp_path / "prepare_meta.json").read_text())
    assert "conditions" not in meta["config"]


def test_dataset_and_splits_carry_the_condition(cache_dir: Path) -> None:
    cache = PreparedCache.open(cache_dir)
    dataset = DiscROIDataset(cache, "supervised")
    sample = dataset[len(dataset) - 1]
    row = int(sample["index"])
    assert int(sample["condition"]) == CONDITIONS.index(cache.table.condition[row])
    assert set(dataset.condition_ids.tolist()) == set(range(len(CONDITIONS)))
    splits = make_splits(cache, _Split())
    for condition in CONDITIONS:
        own = splits.for_condition(cache, condition)
        for part in (own.train, own.val, own.test):
            assert all(cache.table.condition[i] == condition for i in part)
    studies = cache.table.study_id
    assert set(studies[splits.train]).isdisjoint(studies[splits.test])


def test_localizer_datasets_use_the_spinal_rows_only(cache_dir: Path) -> None:
    cache = PreparedCache.open(cache_dir)
    spinal = set(np.flatnonzero(cache.table.condition_id == 0).tolist())
    series = SeriesLocalizerDataset(cache)
    assert {row for _, members in series.groups for row in members} == spinal
    assert set(LocalizerDataset(cache).rows.tolist()) == spinal


def test_plot_figure1_draws_the_other_sequences(data: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    config = dataclasses.replace(CONFIG, n_studies=1)
    out = plot_figure1(tmp_path / "axial.png", config=config, condition=CONDITIONS[3], dpi=40)
    assert Image.open(out).size[0] > 100
    with pytest.raises(ValueError, match='conditions="all"'):
        plot_figure1(
            tmp_path / "x.png",
            config=dataclasses.replace(config, conditions="spinal"),
            condition=CONDITIONS[1],
        )


def test_assign_axial_level_by_hand() -> None:
    refs = {"L1/L2": np.array([0.0, 0.0, 40.0]), "L2/L3": np.array([0.0, 0.0, 5.0])}
    # An axial plane at z = 2 mm: 3 mm from L2/L3, 38 mm from L1/L2.
    level, _ = assign_axial_level(refs, (-100.0, -100.0, 2.0), AXIAL_IOP)
    assert level == "L2/L3"
    # At z = 22: 17 vs 18 mm, closer than a quarter of the 35 mm between them: ambiguous.
    level, detail = assign_axial_level(refs, (-100.0, -100.0, 22.0), AXIAL_IOP)
    assert level is None
    assert "17.0 mm from L2/L3" in detail
    assert assign_axial_level({}, (0.0, 0.0, 0.0), AXIAL_IOP)[0] is None


def _copy(data: Path, tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(data, root)
    return root


def _rewrite(path: Path, change: dict[int, dict[str, str]]) -> None:
    rows = _csv(path)
    for k, values in change.items():
        rows[k].update(values)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def test_axial_rows_with_swapped_levels_are_skipped(data: Path, tmp_path: Path) -> None:
    root = _copy(data, tmp_path)
    coords = _csv(root / COORDINATES_CSV)
    study = coords[0]["study_id"]
    mine = {
        r["level"]: i
        for i, r in enumerate(coords)
        if r["study_id"] == study and r["condition"] == CONDITIONS[3]
    }
    # Swap the levels of the L1/L2 and L5/S1 left subarticular rows: both now disagree with
    # the slice they name.
    _rewrite(
        root / COORDINATES_CSV,
        {mine["L1/L2"]: {"level": "L5/S1"}, mine["L5/S1"]: {"level": "L1/L2"}},
    )
    cache, skips = prepare_in_memory(root, ALL)
    mismatches = [s for s in skips if s.reason.value == "axial_level_mismatch"]
    assert sorted(str(s.level) for s in mismatches) == ["L1/L2", "L5/S1"]
    assert all(s.study_id == int(study) for s in mismatches)
    assert "the slice plane lies" in mismatches[0].detail
    kept = Counter(cache.table.condition)
    assert kept[CONDITIONS[3]] == sum(r["condition"] == CONDITIONS[3] for r in coords) - 2


def test_foraminal_row_on_the_t2_series_is_excluded(data: Path, tmp_path: Path) -> None:
    root = _copy(data, tmp_path)
    coords = _csv(root / COORDINATES_CSV)
    series = _csv(root / SERIES_CSV)
    k = next(i for i, r in enumerate(coords) if r["condition"] == CONDITIONS[1])
    t2 = next(
        s["series_id"]
        for s in series
        if s["study_id"] == coords[k]["study_id"] and s["series_description"] == SAGITTAL_T2
    )
    _rewrite(root / COORDINATES_CSV, {k: {"series_id": t2}})
    index = read_condition_index(root)
    wrong = [s for s in index.skips if s.reason.value == "wrong_sequence"]
    assert len(wrong) == 1
    assert "not on 'Sagittal T1'" in wrong[0].detail
    # Excluded, not missing: the target has a coordinate, on the wrong series.
    assert not [s for s in index.skips if s.reason.value == "missing_coordinate"]
    kept = [d for d in index.discs if getattr(d, "condition", SPINAL_CANAL) == CONDITIONS[1]]
    assert len(kept) == sum(r["condition"] == CONDITIONS[1] for r in coords) - 1


def test_graded_target_without_coordinate_is_recorded(data: Path, tmp_path: Path) -> None:
    root = _copy(data, tmp_path)
    coords = _csv(root / COORDINATES_CSV)
    k = next(i for i, r in enumerate(coords) if r["condition"] == CONDITIONS[2])
    dropped = coords.pop(k)
    with (root / COORDINATES_CSV).open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(dropped), lineterminator="\n")
        writer.writeheader()
        writer.writerows(coords)
    index = read_condition_index(root)
    missing = [s for s in index.skips if s.reason.value == "missing_coordinate"]
    mine = [s for s in missing if CONDITIONS[2] in s.detail]
    assert len(mine) == 1
    assert (mine[0].study_id, mine[0].level) == (int(dropped["study_id"]), dropped["level"])


def test_study_without_sagittal_reference_is_ambiguous(data: Path, tmp_path: Path) -> None:
    root = _copy(data, tmp_path)
    coords = _csv(root / COORDINATES_CSV)
    study = coords[0]["study_id"]
    keep = [
        r
        for r in coords
        if r["study_id"] != study or r["condition"] in (CONDITIONS[3], CONDITIONS[4])
    ]
    with (root / COORDINATES_CSV).open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(coords[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(keep)
    _, skips = prepare_in_memory(root, ALL)
    ambiguous = [s for s in skips if s.reason.value == "ambiguous_axial_level"]
    axial_rows = sum(
        r["study_id"] == study and r["condition"] in (CONDITIONS[3], CONDITIONS[4]) for r in keep
    )
    assert len(ambiguous) == axial_rows == 10
    assert all("no sagittal coordinate" in s.detail for s in ambiguous)
    assert all(s.study_id == int(study) for s in ambiguous)
