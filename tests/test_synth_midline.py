"""Generator 2.0: the drifting, curved mid-sagittal plane, its truth CSV, and version 1.0 kept."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from lumbarssl.layout import COORDINATES_CSV
from lumbarssl.synthetic import (
    META_JSON,
    TRUTH_COLUMNS,
    TRUTH_COLUMNS_V1,
    TRUTH_CSV,
    SyntheticConfig,
    bayes_ceiling,
    generate_dataset,
    sample_study_plan,
)
from lumbarssl.synthetic.plan import PIXEL_STREAM, study_rng
from lumbarssl.synthetic.render import sagittal_phantom

# A tiny dataset with every series kind. The hashes below were computed from this config with
# the code on main before generator 2.0 existed (commit 29d8350): version 1.0 must still write
# the same bytes.
V1_SMALL = SyntheticConfig(
    generator_version="1.0",
    n_studies=3,
    seed=7,
    image_size_range=(130, 140),
    pixel_spacing_range=(1.1, 1.6),
    field_of_view_range=(200.0, 220.0),
    slices_range=(9, 11),
    p_sagittal_t1=1.0,
    p_axial_t2=1.0,
)
V1_FILES_SHA256 = "2d15a99d04f011707655efd900bc2913d8bbe7e3ce8e33f75f68c9986289a22f"
# Digest of the meta file without "parameters", "lumbarssl_version" and "generator" (the
# generator's module path moved from lumbarssl.data.synthetic to lumbarssl.synthetic).
V1_META_SHA256 = "3e78e71cf20f387c86b45a41cf18177dec6602c88acc264b5d92b7585c1e308f"
V1_N_FILES = 97


def _file_hashes(root: Path) -> tuple[int, str]:
    hashes = {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != META_JSON
    }
    return len(hashes), hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()


def test_version_1_writes_the_same_bytes_as_before(tmp_path: Path) -> None:
    generate_dataset(tmp_path, V1_SMALL, progress=False)
    assert _file_hashes(tmp_path) == (V1_N_FILES, V1_FILES_SHA256)
    meta = json.loads((tmp_path / META_JSON).read_text())
    old = {
        k: v for k, v in meta.items() if k not in ("parameters", "lumbarssl_version", "generator")
    }
    digest = hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()
    assert digest == V1_META_SHA256
    assert meta["generator_version"] == "1.0"
    assert meta["generator"] == "lumbarssl.synthetic"
    # Only the new fields were added to the recorded parameters.
    assert SyntheticConfig.from_dict(meta["parameters"]) == V1_SMALL


def test_version_2_is_the_default_and_deterministic(tmp_path: Path) -> None:
    config = dataclasses.replace(V1_SMALL, generator_version="2.0", n_studies=2)
    assert SyntheticConfig().generator_version == "2.0"
    generate_dataset(tmp_path / "a", config, progress=False)
    generate_dataset(tmp_path / "b", config, progress=False, workers=2)
    assert _file_hashes(tmp_path / "a") == _file_hashes(tmp_path / "b")
    assert _file_hashes(tmp_path / "a")[1] != V1_FILES_SHA256


def test_labels_and_ceiling_do_not_depend_on_the_version() -> None:
    v2 = SyntheticConfig(seed=5)
    v1 = dataclasses.replace(v2, generator_version="1.0")
    assert bayes_ceiling(v1) == bayes_ceiling(v2)
    for i in range(20):
        a, b = sample_study_plan(v1, i), sample_study_plan(v2, i)
        assert [(d.r, d.true_grade, d.recorded_grade, d.coordinate) for d in a.discs] == [
            (d.r, d.true_grade, d.recorded_grade, d.coordinate) for d in b.discs
        ]


def test_midline_drifts_off_the_centre_slice_and_differs_between_levels() -> None:
    config = SyntheticConfig(seed=1)
    off_centre = per_level_differs = levels = 0
    for i in range(300):
        plan = sample_study_plan(config, i)
        t2 = plan.sagittal_t2
        centre = t2.instance_number(t2.n_slices // 2)
        instances = {d.instance_number for d in plan.discs}
        per_level_differs += len(instances) > 1
        for d in plan.discs:
            levels += 1
            off_centre += d.instance_number != centre
            # The midline stays at least one slice inside the slab; the instance is its nearest.
            assert 1.0 - 1e-9 <= d.midline_index <= t2.n_slices - 2 + 1e-9
            nearest = round(d.midline_index)
            assert d.instance_number == t2.instance_number(nearest)
    # Drift of up to 2.5 slices: most levels are off the centre slice, and the tilt and the
    # lateral curvature put the levels of many studies on different instances.
    assert off_centre / levels > 0.6
    assert per_level_differs / 300 > 0.3
    v1 = dataclasses.replace(config, generator_version="1.0")
    for i in range(50):
        plan = sample_study_plan(v1, i)
        assert {d.instance_number for d in plan.discs} == {plan.annotated_instance}


def test_reader_offset_is_about_one_mm_per_axis() -> None:
    config = SyntheticConfig(seed=2, p_partial_coordinates=0.0)
    deltas = []
    for i in range(400):
        plan = sample_study_plan(config, i)
        for d in plan.discs:
            assert d.coordinate is not None
            deltas.append(np.subtract(d.coordinate, d.true_coordinate) * plan.spacing)
    offsets = np.asarray(deltas)
    # N(0, 1 mm) along and across the spine, clipped to stay in the canal: each image axis
    # mixes the two, so its sd is just under 1 mm and the mean is 0.
    assert np.all(np.abs(offsets.mean(axis=0)) < 0.1)
    assert np.all((offsets.std(axis=0) > 0.75) & (offsets.std(axis=0) < 1.05))


def test_truth_csv_records_instance_centre_and_midline(tmp_path: Path) -> None:
    config = dataclasses.replace(V1_SMALL, generator_version="2.0", n_studies=3)
    generate_dataset(tmp_path, config, progress=False)
    with open(tmp_path / TRUTH_CSV, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        truth = list(reader)
        assert tuple(reader.fieldnames or ()) == TRUTH_COLUMNS
    with open(tmp_path / COORDINATES_CSV, newline="", encoding="utf-8") as f:
        coordinates = {(r["study_id"], r["level"]): r for r in csv.DictReader(f)}
    assert len(truth) == 15
    for i in range(3):
        plan = sample_study_plan(config, i)
        for d in plan.discs:
            row = next(
                t for t in truth if t["study_id"] == str(plan.study_id) and t["level"] == d.level
            )
            assert int(row["true_instance"]) == d.instance_number
            assert float(row["true_x"]) == pytest.approx(d.true_coordinate[0], abs=1e-6)
            assert float(row["true_y"]) == pytest.approx(d.true_coordinate[1], abs=1e-6)
            annotation = coordinates.get((str(plan.study_id), d.level))
            if annotation is not None:
                assert annotation["instance_number"] == row["true_instance"]
    v1_dir = tmp_path / "v1"
    generate_dataset(v1_dir, V1_SMALL, progress=False)
    with open(v1_dir / TRUTH_CSV, newline="", encoding="utf-8") as f:
        assert tuple(next(csv.reader(f))) == TRUTH_COLUMNS_V1


def test_canal_is_brightest_on_the_slice_through_its_midline() -> None:
    """The noise-free phantom: the CSF at each level fades with distance from its midline."""
    config = SyntheticConfig(seed=4, image_size_range=(128, 160), pixel_spacing_range=(1.3, 2.0))
    checked = 0
    for i in range(4):
        plan = sample_study_plan(config, i)
        t2 = plan.sagittal_t2
        phantom = sagittal_phantom(plan, config, t2, study_rng(config, i, PIXEL_STREAM))
        s_map = phantom.frame[0].astype(np.float64)
        slices = [
            phantom.slice_map(plan.lateral_offset(j, t2, s_map).astype(np.float32))
            for j in range(t2.n_slices)
        ]
        for d in plan.discs:
            x, y = (round(v) for v in d.true_coordinate)
            # The CSF column within 12 mm of the disc, 1 mm either side of the canal centre.
            h, w = round(12.0 / plan.spacing), max(1, round(1.0 / plan.spacing))
            values = [
                float(np.quantile(image[y - h : y + h + 1, x - w : x + w + 1], 0.75))
                for image in slices
            ]
            nearest = round(d.midline_index)
            if abs(d.midline_index - nearest) < 0.45:  # skip near-ties
                assert int(np.argmax(values)) == nearest
                checked += 1
    assert checked >= 10


def test_slice_map_matches_slice_for_a_constant_offset() -> None:
    config = SyntheticConfig(seed=4, image_size_range=(96, 96), pixel_spacing_range=(2.2, 2.5))
    plan = sample_study_plan(config, 0)
    phantom = sagittal_phantom(plan, config, plan.sagittal_t2, np.random.default_rng(0))
    for z in (0.0, 1.3, -4.0, 9.5, 30.0):
        constant = np.full((96, 96), z, dtype=np.float32)
        np.testing.assert_allclose(phantom.slice_map(constant), phantom.slice(z), atol=1e-5)


def test_new_fields_are_validated() -> None:
    with pytest.raises(ValueError, match="generator_version"):
        SyntheticConfig(generator_version="3.0")
    with pytest.raises(ValueError, match="p_lateral_curvature"):
        SyntheticConfig(p_lateral_curvature=1.5)
