"""A small generated dataset: layout, CSVs, DICOM tags, geometry, determinism, CLI."""

from __future__ import annotations

import csv
import dataclasses
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

from lumbarssl.cli import main
from lumbarssl.data.constants import (
    AXIAL_T2,
    COORDINATE_COLUMNS,
    COORDINATES_CSV,
    IMAGES_DIR,
    LEVEL_SLUGS,
    LEVELS,
    SAGITTAL_T1,
    SAGITTAL_T2,
    SERIES_COLUMNS,
    SERIES_CSV,
    SERIES_DESCRIPTIONS,
    SEVERITIES,
    SPINAL_CANAL,
    TRAIN_COLUMNS,
    TRAIN_CSV,
)
from lumbarssl.synthetic import (
    GENERATOR_VERSION,
    META_JSON,
    TRUTH_COLUMNS,
    TRUTH_CSV,
    SyntheticConfig,
    SyntheticSummary,
    bayes_ceiling,
    generate_dataset,
    sample_study_plan,
)
from lumbarssl.synthetic.labels import grade_from_r
from lumbarssl.synthetic.render import sagittal_phantom

# Small and fast, with every quirk switched on often enough to appear in 8 studies.
SMALL = SyntheticConfig(
    n_studies=8,
    seed=11,
    image_size_range=(64, 96),
    pixel_spacing_range=(2.2, 4.0),
    field_of_view_range=(200.0, 260.0),
    slices_range=(5, 8),
    p_reversed_instances=0.5,
    p_rescale=0.5,
    p_sagittal_t1=0.5,
    p_axial_t2=0.5,
    p_missing_labels=0.5,
    p_partial_coordinates=0.5,
)
SAGITTAL_IOP = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]
AXIAL_IOP = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SyntheticSummary]:
    out = tmp_path_factory.mktemp("synth") / "data"
    return out, generate_dataset(out, SMALL, workers=1, progress=False)


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        assert reader.fieldnames is not None
        return list(reader.fieldnames), rows


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _dicoms(root: Path) -> dict[tuple[str, str], list[pydicom.Dataset]]:
    series: dict[tuple[str, str], list[pydicom.Dataset]] = defaultdict(list)
    for path in sorted((root / IMAGES_DIR).glob("*/*/*.dcm")):
        series[(path.parent.parent.name, path.parent.name)].append(pydicom.dcmread(path))
    return series


def test_layout_and_headers(dataset: tuple[Path, SyntheticSummary]) -> None:
    root, _ = dataset
    assert sorted(p.name for p in root.iterdir()) == sorted(
        [TRAIN_CSV, COORDINATES_CSV, SERIES_CSV, TRUTH_CSV, META_JSON, IMAGES_DIR]
    )
    for name, columns in [
        (TRAIN_CSV, TRAIN_COLUMNS),
        (COORDINATES_CSV, COORDINATE_COLUMNS),
        (SERIES_CSV, SERIES_COLUMNS),
        (TRUTH_CSV, TRUTH_COLUMNS),
    ]:
        header = (root / name).read_text(encoding="utf-8").splitlines()[0]
        assert header == ",".join(columns)
    assert TRAIN_COLUMNS[1:6] == tuple(f"spinal_canal_stenosis_{s}" for s in LEVEL_SLUGS)


def test_train_csv_values(dataset: tuple[Path, SyntheticSummary]) -> None:
    root, summary = dataset
    _, rows = _read_csv(root / TRAIN_CSV)
    assert len(rows) == SMALL.n_studies
    assert len({r["study_id"] for r in rows}) == SMALL.n_studies
    empty = 0
    for row in rows:
        sid = row["study_id"]
        assert sid.isdigit()
        assert 7 <= len(sid) <= 10
        for column in TRAIN_COLUMNS[1:]:
            value = row[column]
            if column.startswith("spinal_canal"):
                assert value in (*SEVERITIES, "")
                empty += value == ""
            else:
                assert value == "Normal/Mild"
    assert empty == summary.label_counts["missing"] > 0


def test_series_csv_matches_the_image_folders(dataset: tuple[Path, SyntheticSummary]) -> None:
    root, summary = dataset
    _, rows = _read_csv(root / SERIES_CSV)
    listed = {(r["study_id"], r["series_id"]) for r in rows}
    on_disk = {(p.parent.name, p.name) for p in (root / IMAGES_DIR).glob("*/*")}
    assert listed == on_disk
    assert {r["series_description"] for r in rows} == set(SERIES_DESCRIPTIONS)
    per_study: dict[str, list[str]] = defaultdict(list)
    for r in rows:
        per_study[r["study_id"]].append(r["series_description"])
    assert all(d.count(SAGITTAL_T2) == 1 for d in per_study.values())
    assert summary.n_series == len(rows)
    assert sum(1 for _ in (root / IMAGES_DIR).rglob("*.dcm")) == summary.n_images


def test_coordinates_point_at_the_mid_sagittal_t2_instance(
    dataset: tuple[Path, SyntheticSummary],
) -> None:
    root, _ = dataset
    _, series_rows = _read_csv(root / SERIES_CSV)
    description = {r["series_id"]: r["series_description"] for r in series_rows}
    _, rows = _read_csv(root / COORDINATES_CSV)
    _, truth_rows = _read_csv(root / TRUTH_CSV)
    truth = {(t["study_id"], t["level"]): t for t in truth_rows}
    assert {r["condition"] for r in rows} == {SPINAL_CANAL}
    levels_per_study: dict[str, list[str]] = defaultdict(list)
    for r in rows:
        levels_per_study[r["study_id"]].append(r["level"])
        assert description[r["series_id"]] == SAGITTAL_T2
        folder = root / IMAGES_DIR / r["study_id"] / r["series_id"]
        ds = pydicom.dcmread(folder / f"{r['instance_number']}.dcm")
        x, y = float(r["x"]), float(r["y"])
        assert 0.0 <= x < ds.Columns
        assert 0.0 <= y < ds.Rows
        # The annotated instance is the true one: the slice nearest to the level's canal
        # midline, whose position along the slice normal the truth CSV records.
        normal = np.cross(SAGITTAL_IOP[:3], SAGITTAL_IOP[3:])
        along = sorted(
            float(np.dot(pydicom.dcmread(p).ImagePositionPatient, normal))
            for p in folder.glob("*.dcm")
        )
        t = truth[(r["study_id"], r["level"])]
        assert r["instance_number"] == t["true_instance"]
        rank = along.index(float(np.dot(ds.ImagePositionPatient, normal)))
        assert rank == round(float(t["midline_index"]))
    for levels in levels_per_study.values():
        assert levels == [lv for lv in LEVELS if lv in levels]  # no duplicates, in level order
    assert any(len(v) < len(LEVELS) for v in levels_per_study.values())
    assert len(levels_per_study) == SMALL.n_studies


def test_coordinates_lie_in_the_canal_at_their_level(
    dataset: tuple[Path, SyntheticSummary],
) -> None:
    root, _ = dataset
    _, train = _read_csv(root / TRAIN_CSV)
    _, rows = _read_csv(root / COORDINATES_CSV)
    index_of = {r["study_id"]: i for i, r in enumerate(train)}
    for r in rows:
        plan = sample_study_plan(SMALL, index_of[r["study_id"]])
        phantom = sagittal_phantom(plan, SMALL, plan.sagittal_t2, np.random.default_rng(0))
        col, row = round(float(r["x"])), round(float(r["y"]))
        assert phantom.canal_mask()[row, col], r
        # ... at its own disc: the spine coordinate of that pixel is within the disc's height.
        disc = next(d for d in plan.anatomy.discs if d.name == r["level"])
        s = float(phantom.frame[0][row, col])
        assert abs(s - disc.center) <= 0.5 * disc.height + plan.spacing, (r, s, disc)


def test_truth_csv_is_r_and_its_grade(dataset: tuple[Path, SyntheticSummary]) -> None:
    root, _ = dataset
    _, rows = _read_csv(root / TRUTH_CSV)
    assert len(rows) == len(LEVELS) * SMALL.n_studies
    for r in rows:
        value = float(r["r"])
        assert 0.0 <= value <= 1.0
        assert r["grade"] == SEVERITIES[int(grade_from_r(value, SMALL.grade_thresholds))]


def test_meta_records_parameters_and_ceiling(dataset: tuple[Path, SyntheticSummary]) -> None:
    root, summary = dataset
    meta = json.loads((root / META_JSON).read_text(encoding="utf-8"))
    assert meta["generator_version"] == GENERATOR_VERSION
    assert meta["seed"] == SMALL.seed
    assert SyntheticConfig.from_dict(meta["parameters"]) == SMALL
    ceiling = bayes_ceiling(SMALL)
    assert meta["ceiling"]["balanced_accuracy"] == pytest.approx(ceiling.balanced_accuracy)
    assert meta["ceiling"]["severe_to_normal_rate"] == pytest.approx(ceiling.severe_to_normal_rate)
    assert meta["spinal_canal_label_counts"] == summary.label_counts
    assert summary.ceiling == ceiling


def test_every_file_is_a_valid_mr_image(dataset: tuple[Path, SyntheticSummary]) -> None:
    root, _ = dataset
    series = _dicoms(root)
    _, series_rows = _read_csv(root / SERIES_CSV)
    description = {r["series_id"]: r["series_description"] for r in series_rows}
    sop_uids: set[str] = set()
    series_uids: set[str] = set()
    study_uids: dict[str, str] = {}
    for (study_id, series_id), datasets in series.items():
        uids = {ds.SeriesInstanceUID for ds in datasets}
        assert len(uids) == 1
        assert not uids & series_uids
        series_uids |= uids
        for ds in datasets:
            assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
            assert ds.SOPClassUID == MRImageStorage == ds.file_meta.MediaStorageSOPClassUID
            assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
            assert ds.SOPInstanceUID not in sop_uids
            sop_uids.add(ds.SOPInstanceUID)
            assert study_uids.setdefault(study_id, ds.StudyInstanceUID) == ds.StudyInstanceUID
            assert ds.Modality == "MR"
            assert ds.PatientID == study_id
            assert ds.PhotometricInterpretation == "MONOCHROME2"
            assert (ds.BitsAllocated, ds.BitsStored, ds.PixelRepresentation) == (16, 16, 0)
            assert ds.pixel_array.shape == (ds.Rows, ds.Columns)
            assert ds.pixel_array.dtype == np.uint16
            assert ds.SeriesDescription == description[series_id]
            assert float(ds.SliceThickness) <= float(ds.SpacingBetweenSlices) + 1e-6
            lo, hi = SMALL.pixel_spacing_range
            assert all(lo <= float(v) <= hi for v in ds.PixelSpacing)
            iop = [float(v) for v in ds.ImageOrientationPatient]
            assert iop == (AXIAL_IOP if ds.SeriesDescription == AXIAL_T2 else SAGITTAL_IOP)


def test_positions_agree_with_the_slice_spacing_and_order(
    dataset: tuple[Path, SyntheticSummary],
) -> None:
    root, _ = dataset
    reversed_series = forward_series = 0
    for datasets in _dicoms(root).values():
        iop = np.array([float(v) for v in datasets[0].ImageOrientationPatient])
        normal = np.cross(iop[:3], iop[3:])
        by_instance = sorted(datasets, key=lambda ds: int(ds.InstanceNumber))
        assert [int(ds.InstanceNumber) for ds in by_instance] == list(range(1, len(datasets) + 1))
        along = np.array(
            [np.dot([float(v) for v in ds.ImagePositionPatient], normal) for ds in by_instance]
        )
        steps = np.diff(along)
        spacing = float(datasets[0].SpacingBetweenSlices)
        np.testing.assert_allclose(np.abs(steps), spacing, atol=1e-3)
        assert np.all(steps > 0) or np.all(steps < 0)
        reversed_series += bool(np.all(steps < 0))
        forward_series += bool(np.all(steps > 0))
        # The in-plane position is shared by all slices; SliceLocation is the normal coordinate.
        in_plane = {
            tuple(np.round(np.asarray(ds.ImagePositionPatient, float) - a * normal, 4))
            for ds, a in zip(by_instance, along, strict=True)
        }
        assert len(in_plane) == 1
        np.testing.assert_allclose(
            [float(ds.SliceLocation) for ds in by_instance], along, atol=1e-3
        )
    assert reversed_series > 0
    assert forward_series > 0


def test_some_series_are_rescaled(dataset: tuple[Path, SyntheticSummary]) -> None:
    root, _ = dataset
    slopes = {
        (float(getattr(d[0], "RescaleSlope", 1.0)), float(getattr(d[0], "RescaleIntercept", 0.0)))
        for d in _dicoms(root).values()
    }
    assert (1.0, 0.0) in slopes
    assert len(slopes) > 1


def test_t2_csf_is_bright_at_healthy_coordinates(dataset: tuple[Path, SyntheticSummary]) -> None:
    """On T2 the CSF column is the brightest tissue: at a healthy disc's coordinate the rescaled
    pixel values are in the top quarter of the slice."""
    root, _ = dataset
    _, _train = _read_csv(root / TRAIN_CSV)
    _, truth = _read_csv(root / TRUTH_CSV)
    r_of = {(t["study_id"], t["level"]): float(t["r"]) for t in truth}
    _, rows = _read_csv(root / COORDINATES_CSV)
    checked = 0
    for r in rows:
        if r_of[(r["study_id"], r["level"])] > 0.2:
            continue
        ds = pydicom.dcmread(
            root / IMAGES_DIR / r["study_id"] / r["series_id"] / f"{r['instance_number']}.dcm"
        )
        image = ds.pixel_array * float(getattr(ds, "RescaleSlope", 1.0)) + float(
            getattr(ds, "RescaleIntercept", 0.0)
        )
        value = image[round(float(r["y"])), round(float(r["x"]))]
        assert value > np.percentile(image, 75), r
        checked += 1
    assert checked >= 10


def test_same_seed_gives_identical_files_whatever_the_workers(
    dataset: tuple[Path, SyntheticSummary], tmp_path: Path
) -> None:
    root, _ = dataset
    again = generate_dataset(tmp_path / "again", SMALL, workers=1, progress=False)
    parallel = generate_dataset(tmp_path / "parallel", SMALL, workers=2, progress=False)
    reference = _tree(root)
    assert _tree(tmp_path / "again") == reference
    assert _tree(tmp_path / "parallel") == reference
    assert dataclasses.replace(again, out_dir=parallel.out_dir) == parallel


def test_another_seed_gives_other_data(tmp_path: Path) -> None:
    a = SyntheticConfig(**{**SMALL.to_dict(), "n_studies": 2, "seed": 1})
    b = SyntheticConfig(**{**SMALL.to_dict(), "n_studies": 2, "seed": 2})
    generate_dataset(tmp_path / "a", a, progress=False)
    generate_dataset(tmp_path / "b", b, progress=False)
    ids_a = _read_csv(tmp_path / "a" / TRAIN_CSV)[1]
    ids_b = _read_csv(tmp_path / "b" / TRAIN_CSV)[1]
    assert {r["study_id"] for r in ids_a}.isdisjoint({r["study_id"] for r in ids_b})


def test_existing_dataset_is_not_overwritten_silently(tmp_path: Path) -> None:
    config = SyntheticConfig(**{**SMALL.to_dict(), "n_studies": 1})
    generate_dataset(tmp_path, config, progress=False)
    with pytest.raises(FileExistsError, match="already holds a dataset"):
        generate_dataset(tmp_path, config, progress=False)
    (tmp_path / "notes.txt").write_text("mine")
    generate_dataset(tmp_path, config, progress=False, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="workers must be >= 1, got 0"):
        generate_dataset(tmp_path / "new", config, workers=0)


def test_cli_writes_the_dataset_and_prints_the_ceiling(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_path = tmp_path / "small.json"
    config_path.write_text(SMALL.to_json())
    out = tmp_path / "cli"
    assert (
        main(
            [
                "synth",
                str(out),
                "--studies",
                "2",
                "--seed",
                "4",
                "--config",
                str(config_path),
                "--quiet",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    expected = bayes_ceiling(SMALL).balanced_accuracy
    assert f"balanced accuracy {expected:.3f}" in printed
    assert "seed 4" in printed
    assert "2 studies" in printed
    meta = json.loads((out / META_JSON).read_text())
    assert meta["parameters"]["n_studies"] == 2
    assert meta["seed"] == 4
    assert main(["synth", str(out), "--studies", "2", "--quiet"]) == 2
    assert "already holds a dataset" in capsys.readouterr().err


def test_t1_series_has_t1_contrast(dataset: tuple[Path, SyntheticSummary]) -> None:
    """Fat is brighter than CSF on T1 and darker on T2: compare at the healthy canal points."""
    root, _ = dataset
    _, series_rows = _read_csv(root / SERIES_CSV)
    kinds = {(r["study_id"], r["series_description"]): r["series_id"] for r in series_rows}
    _, rows = _read_csv(root / COORDINATES_CSV)
    _, truth_rows = _read_csv(root / TRUTH_CSV)
    midline = {(t["study_id"], t["level"]): float(t["midline_index"]) for t in truth_rows}
    compared = 0
    for r in rows:
        t1 = kinds.get((r["study_id"], SAGITTAL_T1))
        if t1 is None:
            continue
        t1_mid = sorted((root / IMAGES_DIR / r["study_id"] / t1).glob("*.dcm"))
        t1_images = [pydicom.dcmread(p) for p in t1_mid]
        normal = np.cross(SAGITTAL_IOP[:3], SAGITTAL_IOP[3:])
        t1_images.sort(key=lambda d: float(np.dot(d.ImagePositionPatient, normal)))
        # The T1 slab has the T2 one's geometry: take the slice nearest to the level's midline.
        mid = t1_images[round(midline[(r["study_id"], r["level"])])]
        slope = float(getattr(mid, "RescaleSlope", 1.0))
        image = mid.pixel_array * slope + float(getattr(mid, "RescaleIntercept", 0.0))
        value = image[round(float(r["y"])), round(float(r["x"]))]
        assert value < np.percentile(image, 75)  # CSF is dark on T1
        compared += 1
    assert compared > 0
