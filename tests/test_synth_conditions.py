"""The four conditions beside the spinal canal in the synthetic generator (conditions="all")."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import itertools
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest

from lumbarssl.layout import (
    AXIAL_T2,
    CONDITION_SLUGS,
    CONDITIONS,
    COORDINATES_CSV,
    IMAGES_DIR,
    LEVEL_SLUGS,
    LEVELS,
    SAGITTAL_T1,
    SERIES_CSV,
    SEVERITIES,
    SPINAL_CANAL,
    TRAIN_CSV,
)
from lumbarssl.synthetic import SyntheticConfig, SyntheticSummary, generate_dataset
from lumbarssl.synthetic.conditions import (
    FORAMINAL,
    SUBARTICULAR,
    ForamenGeometry,
    RecessGeometry,
    condition_ceilings,
    condition_label_config,
    paint_foramina,
    paint_recesses,
    sample_condition_labels,
    true_posterior_score,
)
from lumbarssl.synthetic.generate import CONDITION_TRUTH_CSV, META_JSON
from lumbarssl.synthetic.plan import sample_study_plan

# RSNA 2024 train.csv, counts summed over the five levels (docs/synthetic.rst gives the source):
# Normal/Mild, Moderate, Severe.
RSNA_COUNTS = {
    CONDITIONS[0]: (8664, 736, 470),
    CONDITIONS[1]: (7672, 1794, 399),
    CONDITIONS[2]: (7685, 1770, 380),
    CONDITIONS[3]: (6864, 1835, 913),
    CONDITIONS[4]: (6869, 1825, 927),
}

# Digests of datasets written by main before conditions existed (commit 9c857c9), for both
# generator versions: with conditions="spinal" (the default) nothing may change.
_BASELINE = {
    "1.0": "7d79a9d1ad7e179969a8e7f7f728ee1e54babf024916ea445e7362b5805fc701",
    "2.0": "79f949adc582867f93e2a40f371673fbbfe3ff9902eba39de9f24dda19cb2659",
}

TINY_ALL = SyntheticConfig(
    n_studies=3,
    seed=4,
    image_size_range=(96, 128),
    pixel_spacing_range=(1.6, 2.7),
    field_of_view_range=(200.0, 260.0),
    slices_range=(5, 8),
    p_missing_labels=0.3,
    p_partial_coordinates=0.3,
    conditions="all",
)


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            if path.name == META_JSON:
                meta = json.loads(data)
                meta.pop("lumbarssl_version")
                data = json.dumps(meta, sort_keys=True).encode()
            h.update(str(path.relative_to(root)).encode())
            h.update(hashlib.sha256(data).digest())
    return h.hexdigest()


@pytest.mark.parametrize("version", ["1.0", "2.0"])
def test_spinal_outputs_are_byte_identical_to_before(tmp_path: Path, version: str) -> None:
    config = SyntheticConfig(
        n_studies=3,
        seed=5,
        image_size_range=(64, 80),
        pixel_spacing_range=(2.5, 4.0),
        field_of_view_range=(200.0, 260.0),
        slices_range=(5, 7),
        p_sagittal_t1=0.6,
        p_axial_t2=0.6,
        p_missing_labels=0.5,
        p_partial_coordinates=0.5,
        generator_version=version,
    )
    generate_dataset(tmp_path, config, progress=False)
    assert _digest(tmp_path) == _BASELINE[version]


def test_conditions_value_is_checked() -> None:
    with pytest.raises(ValueError, match="conditions must be one of"):
        SyntheticConfig(conditions="foraminal")
    with pytest.raises(ValueError, match="foraminal_prevalence"):
        SyntheticConfig(foraminal_prevalence=(0.1, 0.2))  # type: ignore[arg-type]


def test_label_model_frequencies_are_near_rsna() -> None:
    # The closed-form class priors of each condition's label model against RSNA's counts.
    ceilings = condition_ceilings(SyntheticConfig())
    for condition, counts in RSNA_COUNTS.items():
        rsna = np.asarray(counts) / sum(counts)
        priors = np.asarray(ceilings[condition].class_priors)
        assert np.abs(priors - rsna).max() < 0.012, (condition, priors, rsna)


def test_sampled_labels_follow_the_closed_form_priors() -> None:
    # 4000 studies drawn through the generator's sampler vs the ceiling's integral.
    config = SyntheticConfig()
    ceilings = condition_ceilings(config)
    counts: dict[str, Counter[int]] = {c: Counter() for c in (*FORAMINAL, *SUBARTICULAR)}
    rng = np.random.default_rng(0)
    for _ in range(4000):
        for condition, (_, recorded, *_rest) in sample_condition_labels(config, rng).items():
            counts[condition].update(int(g) for g in recorded)
    for condition, counter in counts.items():
        freq = np.asarray([counter[k] for k in range(3)]) / 20_000
        assert np.abs(freq - np.asarray(ceilings[condition].class_priors)).max() < 0.012


def test_true_posterior_beats_the_prior() -> None:
    # The posterior given r must score better than the best constant (the class priors).
    config = SyntheticConfig()
    score = true_posterior_score(config, n_studies=4000)
    ceilings = condition_ceilings(config)
    # Weighted log loss of predicting priors, per group, from the closed-form priors.
    weights = np.asarray([1.0, 2.0, 4.0])
    for group, condition in (("spinal", CONDITIONS[0]), ("foraminal", CONDITIONS[1])):
        pi = np.asarray(ceilings[condition].class_priors)
        prior_loss = float((pi * weights * -np.log(pi)).sum() / (pi * weights).sum())
        assert 0.0 < score[group] < prior_loss
    assert score["score"] == pytest.approx(
        np.mean([score[k] for k in ("spinal", "foraminal", "subarticular", "any_severe_spinal")])
    )


def test_condition_label_config_keeps_the_shared_reader() -> None:
    config = SyntheticConfig()
    foraminal = condition_label_config(config, CONDITIONS[1])
    assert foraminal.stenosis_prevalence == config.foraminal_prevalence
    assert foraminal.reader_noise_sd == config.reader_noise_sd
    assert condition_label_config(config, SPINAL_CANAL) is config
    with pytest.raises(ValueError, match="unknown condition"):
        condition_label_config(config, "Cord Compression")


def _fat_area(r: float) -> float:
    spacing = 0.25
    s, t = np.meshgrid(np.arange(-10, 10, spacing), np.arange(-10, 10, spacing), indexing="ij")
    image = np.zeros(s.shape, dtype=np.float32)
    g = ForamenGeometry(s=0.0, t=0.0, half_s=6.0, half_t=4.0, root_s=-3.0, lateral=10.0)
    paint_foramina(image, s.astype(np.float32), t.astype(np.float32), [(g, r, 1.0)], spacing)
    return float((image > 0.6).sum() * spacing**2)


def test_foramen_fat_shrinks_with_narrowing() -> None:
    areas = [_fat_area(r) for r in (0.0, 0.3, 0.6, 0.9)]
    assert all(a > b for a, b in itertools.pairwise(areas))
    # When r = 0 the whole ellipse (pi * 6 * 4 = 75.4 mm^2) but the root (pi * 2.5 * 2 = 15.7
    # mm^2) is fat: 59.7 mm^2, less part of the anti-aliased one-pixel rims.
    assert 52.0 < areas[0] < 60.0


def test_recess_narrowing_is_on_its_own_side() -> None:
    spacing = 0.25
    s, t = np.meshgrid(np.arange(-2, 16, spacing), np.arange(-12, 12, spacing), indexing="ij")
    g = RecessGeometry(canal_s=7.0, canal_half_s=6.0, canal_half_t=9.0, recess_s=5.0, recess_t=6.3)

    def csf(side: float, r: float) -> tuple[float, float]:
        image = np.ones(s.shape, dtype=np.float32)
        paint_recesses(
            image, s.astype(np.float32), t.astype(np.float32), g, [(side, r, 1.0)], spacing
        )
        bright = image > 0.5
        return float(bright[t > 0].sum()), float(bright[t < 0].sum())

    left_mild, right_mild = csf(1.0, 0.2)
    left_severe, right_severe = csf(1.0, 0.9)
    assert left_severe < left_mild  # the left (t > 0) recess closes with r
    assert right_severe == right_mild  # the right one does not move


@pytest.fixture(scope="module")
def all_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SyntheticSummary]:
    out = tmp_path_factory.mktemp("synth_all")
    return out, generate_dataset(out, TINY_ALL, progress=False)


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_every_study_has_three_series(all_dataset: tuple[Path, SyntheticSummary]) -> None:
    root, summary = all_dataset
    per_study = Counter(r["study_id"] for r in _csv(root / SERIES_CSV))
    assert set(per_study.values()) == {3}
    assert summary.series_counts == {
        "Axial T2": 3,
        "Sagittal T1": 3,
        "Sagittal T2/STIR": 3,
    }


def test_train_cells_and_coordinates_match_the_plan(
    all_dataset: tuple[Path, SyntheticSummary],
) -> None:
    root, _ = all_dataset
    train = _csv(root / TRAIN_CSV)
    coords = _csv(root / COORDINATES_CSV)
    for index, row in enumerate(train):
        plan = sample_study_plan(TINY_ALL, index)
        assert row["study_id"] == str(plan.study_id)
        for c in plan.conditions:
            slug = CONDITION_SLUGS[CONDITIONS.index(c.condition)]
            column = f"{slug}_{LEVEL_SLUGS[LEVELS.index(c.level)]}"
            expected = "" if c.recorded_grade is None else SEVERITIES[c.recorded_grade]
            assert row[column] == expected
        mine = {
            (r["condition"], r["level"]): r
            for r in coords
            if r["study_id"] == row["study_id"] and r["condition"] != SPINAL_CANAL
        }
        assert len(mine) == sum(c.coordinate is not None for c in plan.conditions)
        for c in plan.conditions:
            if c.coordinate is None:
                continue
            r = mine[c.condition, c.level]
            assert int(r["series_id"]) == c.series_id
            assert int(r["instance_number"]) == c.instance_number
            series = plan.series_of(SAGITTAL_T1 if c.condition in FORAMINAL else AXIAL_T2)
            assert series is not None
            assert series.series_id == c.series_id


def _header(root: Path, study: str, series: str, instance: str) -> pydicom.Dataset:
    path = root / IMAGES_DIR / study / series / f"{instance}.dcm"
    return pydicom.dcmread(path, stop_before_pixels=True)


def test_geometry_puts_each_target_on_its_side_and_level(
    all_dataset: tuple[Path, SyntheticSummary],
) -> None:
    # Checked from the DICOM headers alone: patient +x is the patient's left (LPS).
    root, _ = all_dataset
    coords = _csv(root / COORDINATES_CSV)
    for study in {r["study_id"] for r in coords}:
        rows = [r for r in coords if r["study_id"] == study]
        spinal = [r for r in rows if r["condition"] == SPINAL_CANAL]
        if not spinal:
            continue
        mid_x = np.mean(
            [
                float(
                    _header(root, study, r["series_id"], r["instance_number"]).ImagePositionPatient[
                        0
                    ]
                )
                for r in spinal
            ]
        )
        level_z = {}
        for r in spinal:
            ds = _header(root, study, r["series_id"], r["instance_number"])
            # Sagittal rows run along -z: the coordinate's height is IPP_z - y * row spacing.
            level_z[r["level"]] = float(ds.ImagePositionPatient[2]) - float(r["y"]) * float(
                ds.PixelSpacing[0]
            )
        for r in rows:
            ds = _header(root, study, r["series_id"], r["instance_number"])
            if r["condition"] in FORAMINAL:
                x = float(ds.ImagePositionPatient[0])
                assert (x > mid_x) == r["condition"].startswith("Left"), r
            elif r["condition"] in SUBARTICULAR and level_z:
                z = float(ds.ImagePositionPatient[2])
                nearest = min(level_z, key=lambda lv: abs(level_z[lv] - z))
                if r["level"] in level_z:
                    assert nearest == r["level"], r
                # Columns run to the patient's left: Left recesses lie right of the centre.
                assert (float(r["x"]) > 0.5 * int(ds.Columns)) == r["condition"].startswith("Left")


def test_meta_and_truth_of_the_conditions(all_dataset: tuple[Path, SyntheticSummary]) -> None:
    root, summary = all_dataset
    meta = json.loads((root / META_JSON).read_text())
    assert meta["rendered_conditions"] == list(CONDITIONS)
    block = meta["conditions"]
    assert set(block["ceilings"]) == set(CONDITIONS)
    assert 0.0 < block["true_posterior_rsna_score"]["score"] < 1.0
    assert meta["parameters"]["conditions"] == "all"
    truth = _csv(root / CONDITION_TRUTH_CSV)
    assert len(truth) == 3 * 20
    counts = block["label_counts"]
    for condition in CONDITIONS[1:]:
        assert sum(counts[condition].values()) == 3 * len(LEVELS)
    assert summary.true_posterior["score"] == block["true_posterior_rsna_score"]["score"]


def test_foramen_is_brighter_when_open(all_dataset: tuple[Path, SyntheticSummary]) -> None:
    # On the annotated T1 slice, the fat in the foramen's front-back band falls with r.
    root, _ = all_dataset
    truth = _csv(root / CONDITION_TRUTH_CSV)
    values, rs = [], []
    for row in truth:
        if row["condition"] not in FORAMINAL:
            continue
        path = (
            root / IMAGES_DIR / row["study_id"] / row["series_id"] / f"{row['true_instance']}.dcm"
        )
        ds = pydicom.dcmread(path)
        image = ds.pixel_array.astype(np.float64)
        x, y = round(float(row["true_x"])), round(float(row["true_y"]))
        band = image[y - 1 : y + 2, max(x - 3, 0) : x + 4]
        values.append(band.mean() / np.percentile(image, 99))
        rs.append(float(row["r"]))
    assert len(values) == 30
    assert np.corrcoef(rs, values)[0, 1] < -0.3


def test_output_does_not_depend_on_workers(
    all_dataset: tuple[Path, SyntheticSummary], tmp_path: Path
) -> None:
    root, _ = all_dataset
    generate_dataset(tmp_path, TINY_ALL, workers=2, progress=False)
    assert _digest(tmp_path) == _digest(root)


def test_spinal_plans_do_not_change_with_the_fields_of_other_conditions() -> None:
    base = SyntheticConfig(n_studies=1, seed=2)
    other = dataclasses.replace(base, foraminal_prevalence=(0.5,) * 5)
    a, b = sample_study_plan(base, 0), sample_study_plan(other, 0)
    assert (a.uid, a.series, a.discs, a.midline) == (b.uid, b.series, b.discs, b.midline)
    assert a.conditions == b.conditions == ()
