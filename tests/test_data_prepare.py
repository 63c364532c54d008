from __future__ import annotations

import csv
import json
import re
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from _rsna_factory import (
    BACKGROUND,
    BACKGROUND_STEP,
    MARKER,
    QUIRKS,
    Coordinate,
    Fixture,
    Series,
    Study,
    expected_slice,
    half_up,
    make_rsna_dir,
    plain_study,
)
from PIL import Image
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import JPEGLSLossless

import lumbarssl.data.dicom as dicom_module
import lumbarssl.data.prepare.study as study_module
import lumbarssl.data.prepare.writer as writer_module
from lumbarssl.cli import main
from lumbarssl.data import _tagscan as tagscan
from lumbarssl.data._tagscan import TagScan
from lumbarssl.data.cache import IncompleteCacheError, PreparedCache
from lumbarssl.data.dicom import LazySeries
from lumbarssl.data.prepare import PrepareConfig, prepare_cache, prepare_in_memory
from lumbarssl.data.prepare.extract import extract_series
from lumbarssl.data.skips import RSNADataError

ROI = 16
LOCALIZER = 32
CONFIG = PrepareConfig(roi_size=ROI, slices=3, localizer_size=LOCALIZER)
OUTPUT_FILES = (
    "index.csv",
    "skipped.csv",
    "rois.npy",
    "rois_multislice.npy",
    "rois_multislice_mask.npy",
    "localizer_images.npy",
    "prepare_meta.json",
)


@pytest.fixture(scope="module")
def fixture(tmp_path_factory: pytest.TempPathFactory) -> Fixture:
    return make_rsna_dir(tmp_path_factory.mktemp("rsna"), n_plain=2, quirks=QUIRKS)


@pytest.fixture(scope="module")
def prepared(fixture: Fixture, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "out"
    prepare_cache(fixture.root, out, CONFIG, workers=1, progress=False)
    return out


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _reference_crop(image: np.ndarray, x: float, y: float) -> np.ndarray:
    """Min-max, zero padding, centre pixel (half_up(y), half_up(x)) at (ROI // 2, ROI // 2)."""
    norm = (image - image.min()) / (image.max() - image.min())
    padded = np.pad(norm, 2 * ROI)
    top, left = half_up(y) - ROI // 2 + 2 * ROI, half_up(x) - ROI // 2 + 2 * ROI
    crop: np.ndarray = padded[top : top + ROI, left : left + ROI]
    scaled: np.ndarray = np.rint(crop * 255)
    return scaled.astype(np.uint8)


def _where(fixture: Fixture, row: dict[str, str]) -> tuple[Study, int]:
    """Study and spatial index of a row's annotated slice, from the fixture's spec."""
    study = fixture.study(int(row["study_id"]))
    series = study.series_by_id(int(row["series_id"]))
    index = next(
        k for k in range(series.n_slices) if series.instance(k) == int(row["instance_number"])
    )
    return study, index


def _files(out: Path) -> Iterator[tuple[str, bytes]]:
    for name in OUTPUT_FILES:
        yield name, (out / name).read_bytes()
    for png in sorted((out / "rois").rglob("*.png")):
        yield str(png.relative_to(out)), png.read_bytes()


def test_skipped_rows_and_reasons_per_quirk(fixture: Fixture, prepared: Path) -> None:
    skipped = _csv(prepared / "skipped.csv")
    got = Counter((int(r["study_id"]), r["reason"]) for r in skipped)
    q = fixture.quirk_of
    assert got == {
        (q["t1_labels"].study_id, "not_sagittal_t2"): 2,
        (q["truncated"].study_id, "corrupt_file"): 5,
        (q["html"].study_id, "corrupt_file"): 5,
        (q["missing_instance"].study_id, "missing_file"): 1,
    }
    missing = next(r for r in skipped if r["reason"] == "missing_file")
    assert (missing["instance_number"], missing["level"]) == ("99", "L2/L3")
    assert missing["file"].endswith("99.dcm")
    html = next(r for r in skipped if int(r["study_id"]) == q["html"].study_id)
    assert "not a DICOM file" in html["detail"]
    t1 = next(r for r in skipped if r["reason"] == "not_sagittal_t2")
    assert t1["file"].endswith("train_label_coordinates.csv")
    assert t1["line"] != ""


def test_every_usable_disc_is_indexed_once(fixture: Fixture, prepared: Path) -> None:
    rows = _csv(prepared / "index.csv")
    n_coordinates = sum(len(s.coordinates) for s in fixture.studies)
    assert len(rows) == n_coordinates - len(_csv(prepared / "skipped.csv"))
    keys = [(r["study_id"], r["level"]) for r in rows]
    assert len(set(keys)) == len(keys)
    assert np.load(prepared / "rois.npy").shape == (len(rows), ROI, ROI)


def test_every_roi_matches_the_reference_crop_of_its_slice(
    fixture: Fixture, prepared: Path
) -> None:
    rows = _csv(prepared / "index.csv")
    rois = np.load(prepared / "rois.npy")
    for row, roi in zip(rows, rois, strict=True):
        study, k = _where(fixture, row)
        series = study.series_by_id(int(row["series_id"]))
        image = expected_slice(study, series, k)
        x, y = float(row["x"]), float(row["y"])
        np.testing.assert_array_equal(roi, _reference_crop(image, x, y), err_msg=str(row))
        assert roi[ROI // 2, ROI // 2] == 255  # the marker
        assert (int(row["height"]), int(row["width"])) == image.shape
        assert int(row["slice_index"]) == k
        assert int(row["n_slices"]) == series.n_slices
        assert (float(row["row_spacing_mm"]), float(row["col_spacing_mm"])) == (0.5, 0.625)


def test_png_is_the_same_roi_as_the_npy_row(prepared: Path) -> None:
    rows = _csv(prepared / "index.csv")
    rois = np.load(prepared / "rois.npy", mmap_mode="r")
    for row, roi in zip(rows, rois, strict=True):
        with Image.open(prepared / row["roi_path"]) as image:
            assert image.mode == "L"
            np.testing.assert_array_equal(np.asarray(image), roi)


def test_png_compression_is_lossless_at_any_level(
    fixture: Fixture, prepared: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    settings = ["--roi-size", str(ROI), "--slices", "3", "--localizer-size", str(LOCALIZER)]
    args = ["prepare", str(fixture.root), str(out), *settings, "--png-compression", "9"]
    assert main([*args, "--no-progress"]) == 0
    stored = sorted((prepared / "rois").rglob("*.png"))
    compressed = sorted((out / "rois").rglob("*.png"))
    assert [p.relative_to(prepared) for p in stored] == [p.relative_to(out) for p in compressed]
    for a, b in zip(stored, compressed, strict=True):
        with Image.open(a) as image_a, Image.open(b) as image_b:
            np.testing.assert_array_equal(np.asarray(image_a), np.asarray(image_b))
    assert sum(p.stat().st_size for p in compressed) < sum(p.stat().st_size for p in stored)


def test_labels_and_the_unlabeled_disc(fixture: Fixture, prepared: Path) -> None:
    rows = _csv(prepared / "index.csv")
    study = fixture.quirk_of["empty_severity"].study_id
    unlabeled = [r for r in rows if r["label"] == "-1"]
    assert [(int(r["study_id"]), r["level"], r["severity"]) for r in unlabeled] == [
        (study, "L2/L3", "")
    ]
    paper = {"Normal/Mild": "0", "Moderate": "1", "Severe": "2"}
    assert all(paper[r["severity"]] == r["label"] for r in rows if r["severity"])


def test_two_t2_series_take_the_roi_from_the_annotated_one(
    fixture: Fixture, prepared: Path
) -> None:
    study = fixture.quirk_of["two_t2_series"]
    rows = [r for r in _csv(prepared / "index.csv") if int(r["study_id"]) == study.study_id]
    assert {int(r["series_id"]) for r in rows} == {study.series[1].series_id}
    assert len(rows) == 5


def test_near_border_coordinate_is_padded(fixture: Fixture, prepared: Path) -> None:
    study = fixture.quirk_of["near_border"].study_id
    rows = _csv(prepared / "index.csv")
    i = next(i for i, r in enumerate(rows) if int(r["study_id"]) == study and r["level"] == "L1/L2")
    roi = np.load(prepared / "rois.npy")[i]
    # Centre (5, 5) at (8, 8): rows and columns 0-2 of the ROI lie outside the image.
    assert (roi[:3] == 0).all()
    assert (roi[:, :3] == 0).all()
    assert (roi[3:, 3:] > 0).all()  # background everywhere inside
    assert roi[8, 8] == 255


def test_multislice_rois_are_spatial_neighbours_with_edges_repeated(
    fixture: Fixture, prepared: Path
) -> None:
    rows = _csv(prepared / "index.csv")
    stacks = np.load(prepared / "rois_multislice.npy")
    masks = np.load(prepared / "rois_multislice_mask.npy")
    assert stacks.shape == (len(rows), 3, ROI, ROI)
    assert masks.dtype == np.bool_
    rois = np.load(prepared / "rois.npy")
    for row, stack, mask, roi in zip(rows, stacks, masks, rois, strict=True):
        study, k = _where(fixture, row)
        series = study.series_by_id(int(row["series_id"]))
        np.testing.assert_array_equal(stack[1], roi)
        for j, offset in enumerate((-1, 0, 1)):
            neighbour = min(max(k + offset, 0), series.n_slices - 1)
            assert mask[j] == (neighbour == k + offset)
            image = expected_slice(study, series, neighbour)
            want = _reference_crop(image, float(row["x"]), float(row["y"]))
            np.testing.assert_array_equal(stack[j], want)


def test_localizer_inputs_are_the_annotated_slice_and_its_spatial_neighbours(
    fixture: Fixture, prepared: Path
) -> None:
    rows = _csv(prepared / "index.csv")
    images = np.load(prepared / "localizer_images.npy")
    assert images.dtype == np.uint8
    distinct = {(r["series_id"], r["instance_number"]) for r in rows}
    assert images.shape == (len(distinct), 3, LOCALIZER, LOCALIZER)
    by_slice: dict[tuple[str, str], int] = {}
    for row in rows:
        key = (row["series_id"], row["instance_number"])
        assert by_slice.setdefault(key, int(row["localizer_index"])) == int(row["localizer_index"])
        study, k = _where(fixture, row)
        series = study.series_by_id(int(row["series_id"]))
        stack = images[int(row["localizer_index"])]
        for channel, offset in zip(stack, (-1, 0, 1), strict=True):
            neighbour = min(max(k + offset, 0), series.n_slices - 1)
            # Background of slice j after min-max: (BACKGROUND + STEP j) / MARKER.
            level = round((BACKGROUND + BACKGROUND_STEP * neighbour) / MARKER * 255)
            assert int(np.median(channel)) == level, (row, offset)


def test_instances_against_space_use_spatial_neighbours(fixture: Fixture, prepared: Path) -> None:
    study = fixture.quirk_of["instances_against_space"]
    rows = [r for r in _csv(prepared / "index.csv") if int(r["study_id"]) == study.study_id]
    # Annotated spatial slice 1 is instance 6 of 7 numbered against space.
    assert {(r["instance_number"], r["slice_index"]) for r in rows} == {("6", "1")}


def test_meta_is_written_last_and_describes_the_run(fixture: Fixture, prepared: Path) -> None:
    meta = json.loads((prepared / "prepare_meta.json").read_text())
    assert meta["config"]["roi_size"] == ROI
    assert meta["n_discs"] == len(_csv(prepared / "index.csv"))
    assert meta["skip_counts"] == {"not_sagittal_t2": 2, "missing_file": 1, "corrupt_file": 10}
    assert not (prepared / ".partial").exists()
    assert not list(prepared.glob("*.tmp*"))


def test_cli_prints_a_summary_with_counts_per_reason(
    fixture: Fixture, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["prepare", str(fixture.root), str(tmp_path / "out"), "--roi-size", "8",
                 "--no-progress"])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert re.search(r"skipped 13 rows", out)
    assert re.search(r"corrupt_file\s+10", out)
    assert re.search(r"not_sagittal_t2\s+2", out)
    assert re.search(r"missing_file\s+1", out)
    assert np.load(tmp_path / "out" / "rois.npy").shape[1:] == (8, 8)
    assert not (tmp_path / "out" / "rois_multislice.npy").exists()


def test_cli_rejects_even_slices(
    fixture: Fixture, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A value the config rejects is a usage error, as for every command: exit status 2.
    with pytest.raises(SystemExit) as info:
        main(["prepare", str(fixture.root), str(tmp_path), "--slices", "2"])
    assert info.value.code == 2
    assert "slices must be an odd number >= 1, got 2" in capsys.readouterr().err


def test_workers_2_write_the_same_files_as_workers_1(
    fixture: Fixture, prepared: Path, tmp_path: Path
) -> None:
    prepare_cache(fixture.root, tmp_path / "out", CONFIG, workers=2, progress=False)
    assert dict(_files(tmp_path / "out")) == dict(_files(prepared))


def test_interrupted_run_resumes_to_the_same_result(
    fixture: Fixture, prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    real = writer_module._run_study
    calls: list[int] = []

    def interrupted(task: writer_module._StudyTask) -> int:
        if len(calls) == 3:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C in the fourth study
        calls.append(task.study_id)
        return real(task)

    monkeypatch.setattr(writer_module, "_run_study", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_cache(fixture.root, out, CONFIG, progress=False)
    assert not (out / "prepare_meta.json").exists()
    assert not (out / "index.csv").exists()
    with pytest.raises(IncompleteCacheError, match="not a completed prepare output"):
        PreparedCache.open(out)

    resumed: list[int] = []

    def counting(task: writer_module._StudyTask) -> int:
        resumed.append(task.study_id)
        return real(task)

    monkeypatch.setattr(writer_module, "_run_study", counting)
    result = prepare_cache(fixture.root, out, CONFIG, progress=False)
    assert result.n_resumed == 3
    assert not set(resumed) & set(calls)
    assert len(resumed) == result.n_studies - 3
    assert dict(_files(out)) == dict(_files(prepared))


def test_a_study_cut_short_in_the_log_is_done_again(
    fixture: Fixture, prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    real = writer_module._run_study
    calls: list[int] = []

    def interrupted(task: writer_module._StudyTask) -> int:
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(task.study_id)
        return real(task)

    monkeypatch.setattr(writer_module, "_run_study", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_cache(fixture.root, out, CONFIG, progress=False)
    (log,) = (out / ".partial").glob("*.log")  # finished studies, appended one by one
    log.write_bytes(log.read_bytes()[:-7])  # as if killed while appending the third
    monkeypatch.setattr(writer_module, "_run_study", real)
    result = prepare_cache(fixture.root, out, CONFIG, progress=False)
    assert result.n_resumed == 2
    assert dict(_files(out)) == dict(_files(prepared))
    assert not (out / ".partial").exists()


def test_roi_stats_are_exact_over_all_roi_pixels(fixture: Fixture, prepared: Path) -> None:
    stats = json.loads((prepared / "prepare_meta.json").read_text())["roi_stats"]
    pixels = np.load(prepared / "rois.npy").astype(np.float64) / 255.0
    assert stats["mean"] == pytest.approx(pixels.mean(), rel=1e-12)
    assert stats["std"] == pytest.approx(pixels.std(), rel=1e-12)
    # Summed study by study here, over the whole array in memory: the same numbers.
    cache, _ = prepare_in_memory(fixture.root, CONFIG)
    assert cache.roi_stats() == (stats["mean"], stats["std"])


def test_interruption_while_writing_the_final_files_leaves_no_meta(
    fixture: Fixture, prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    real = writer_module._write_csv

    def fail_on_skipped(path: Path, *args: object) -> None:
        if path.name == "skipped.csv":
            raise OSError("disk full")
        real(path, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(writer_module, "_write_csv", fail_on_skipped)
    with pytest.raises(OSError, match="disk full"):
        prepare_cache(fixture.root, out, CONFIG, progress=False)
    assert (out / "rois.npy").exists()  # some final files may already be there ...
    assert not (out / "prepare_meta.json").exists()  # ... but the run is not complete
    monkeypatch.setattr(writer_module, "_write_csv", real)
    result = prepare_cache(fixture.root, out, CONFIG, progress=False)
    assert result.n_resumed == result.n_studies
    assert dict(_files(out)) == dict(_files(prepared))


def test_rerun_of_a_complete_output_is_a_no_op_and_other_settings_are_refused(
    fixture: Fixture, prepared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = dict(_files(prepared))

    def fail(task: writer_module._StudyTask) -> int:
        raise AssertionError("no study should be processed again")

    monkeypatch.setattr(writer_module, "_run_study", fail)
    result = prepare_cache(fixture.root, prepared, CONFIG, progress=False)
    assert result.n_discs == len(_csv(prepared / "index.csv"))
    assert dict(_files(prepared)) == before
    with pytest.raises(ValueError, match="already holds a completed prepare"):
        prepare_cache(fixture.root, prepared, PrepareConfig(roi_size=12), progress=False)


def test_partial_results_of_other_settings_are_discarded(
    fixture: Fixture, prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    real = writer_module._run_study
    calls: list[int] = []

    def stop_after_two(task: writer_module._StudyTask) -> int:
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(task.study_id)
        return real(task)

    monkeypatch.setattr(writer_module, "_run_study", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        prepare_cache(fixture.root, out, PrepareConfig(roi_size=8), progress=False)
    monkeypatch.setattr(writer_module, "_run_study", real)
    result = prepare_cache(fixture.root, out, CONFIG, progress=False)
    assert result.n_resumed == 0
    assert dict(_files(out)) == dict(_files(prepared))


def test_raise_mode_stops_at_the_first_bad_file(fixture: Fixture, tmp_path: Path) -> None:
    truncated = fixture.quirk_of["truncated"]
    with pytest.raises(RSNADataError, match=rf"{truncated.study_id}/.*3\.dcm: corrupt_file"):
        prepare_cache(
            fixture.root,
            tmp_path / "out",
            PrepareConfig(roi_size=ROI, on_error="raise"),
            progress=False,
        )
    assert not (tmp_path / "out" / "prepare_meta.json").exists()


def test_one_failing_study_does_not_abort_the_run(
    fixture: Fixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = fixture.studies[0].study_id
    real = extract_series

    def flaky(series_dir: Path, *args: object) -> None:
        if series_dir.parent.name == str(bad):
            raise RuntimeError("boom")
        real(series_dir, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(study_module, "extract_series", flaky)
    result = prepare_cache(fixture.root, tmp_path / "out", CONFIG, progress=False)
    assert result.skip_counts["internal_error"] == 5
    skipped = _csv(tmp_path / "out" / "skipped.csv")
    errors = [r for r in skipped if r["reason"] == "internal_error"]
    assert {int(r["study_id"]) for r in errors} == {bad}
    assert "RuntimeError" in errors[0]["detail"]
    assert "boom" in errors[0]["detail"]


def test_each_header_is_read_once_and_each_slice_decoded_at_most_once(
    fixture: Fixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_scan, real_read, real_decode = tagscan.scan_tags, pydicom.dcmread, LazySeries.decode
    scanned: list[Path] = []
    parsed: list[Path] = []
    decoded: list[Path] = []

    def counting_scan(path: Path, *args: Any) -> TagScan | None:
        scanned.append(path)
        return real_scan(path, *args)

    def counting_read(path: Path, *args: Any, **kwargs: Any) -> pydicom.Dataset:
        parsed.append(Path(path))
        return real_read(path, *args, **kwargs)

    def counting_decode(self: LazySeries, index: int) -> np.ndarray:
        decoded.append(self.geometry.slices[index].path)
        return real_decode(self, index)

    monkeypatch.setattr(dicom_module, "scan_tags", counting_scan)  # where dicom.py calls it
    monkeypatch.setattr(pydicom, "dcmread", counting_read)
    monkeypatch.setattr(LazySeries, "decode", counting_decode)
    prepare_cache(fixture.root, tmp_path / "out", CONFIG, progress=False)
    # Every file of a series with a disc is looked at once ...
    series_dirs = {p.parent for p in decoded}
    assert {p for d in series_dirs for p in d.glob("*.dcm")} <= set(scanned)
    assert max(Counter(scanned).values()) == 1
    # ... and pydicom parses a file only where that direct read cannot do: a file that is
    # not DICOM, or one whose pixels fail to decode (pydicom's error is the one reported).
    assert max(Counter(parsed).values(), default=0) <= 1
    for path in parsed:
        assert path.read_bytes()[128:132] != b"DICM" or path in decoded, path
    # Only annotated slices and their neighbours are decoded, each once.
    assert decoded
    assert max(Counter(decoded).values()) == 1
    total = sum(s.n_slices for study in fixture.studies for s in study.series)
    assert len(decoded) < total


def test_in_memory_extraction_equals_the_cache(prepared: Path, fixture: Fixture) -> None:
    cache, skips = prepare_in_memory(fixture.root, CONFIG)
    opened = PreparedCache.open(prepared)
    np.testing.assert_array_equal(cache.rois, opened.rois)
    np.testing.assert_array_equal(cache.multislice, opened.multislice)
    np.testing.assert_array_equal(cache.localizer_images, opened.localizer_images)
    np.testing.assert_array_equal(cache.table.localizer_index, opened.table.localizer_index)
    np.testing.assert_array_equal(cache.table.label, opened.table.label)
    assert len(skips) == len(_csv(prepared / "skipped.csv"))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"roi_size": 0}, "roi_size must be >= 1, got 0"),
     ({"slices": 4}, "slices must be an odd number >= 1, got 4"),
     ({"pad_value": -0.1}, r"pad_value must be in \[0, 1\], got -0.1"),
     ({"on_error": "ignore"}, "on_error must be 'skip' or 'raise', got 'ignore'"),
     ({"png_compress_level": 10}, r"png_compress_level must be in \[0, 9\], got 10")],
)  # fmt: skip
def test_config_validation_names_the_bad_value(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PrepareConfig(**kwargs)  # type: ignore[arg-type]


def test_config_round_trips_through_json() -> None:
    config = PrepareConfig(roi_size=64, slices=5, pad_value=0.5, on_error="raise")
    assert PrepareConfig.from_json(config.to_json()) == config
    assert PrepareConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match=r"unknown PrepareConfig key 'roi'"):
        PrepareConfig.from_dict({"roi": 3})


def test_workers_must_be_positive(fixture: Fixture, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="workers must be >= 1, got 0"):
        prepare_cache(fixture.root, tmp_path, CONFIG, workers=0)


def test_remaining_file_level_reasons(tmp_path: Path) -> None:
    outside = plain_study(1)
    outside.coordinates[0] = Coordinate(11, 2, "L1/L2", 64.5, 10.0)  # rounds to column 65 of 64
    jpeg_ls = plain_study(2, Series(21, transfer_syntax=JPEGLSLossless))
    repeated = plain_study(3)
    absent = plain_study(4)
    fixture = make_rsna_dir(
        tmp_path / "rsna", n_plain=0, extra=[outside, jpeg_ls, repeated, absent]
    )
    series_dir = fixture.root / "train_images" / "3" / "31"
    shutil.copy(series_dir / "1.dcm", series_dir / "copy.dcm")
    shutil.rmtree(fixture.root / "train_images" / "4" / "41")
    result = prepare_cache(
        fixture.root, tmp_path / "out", PrepareConfig(roi_size=8), progress=False
    )
    got = Counter((int(r["study_id"]), r["reason"]) for r in _csv(tmp_path / "out" / "skipped.csv"))
    decoder = (
        "corrupt_file"
        if get_decoder(JPEGLSLossless).is_available
        else ("unsupported_transfer_syntax")
    )
    assert got == {(1, "outside_image"): 1, (2, decoder): 5, (3, "bad_geometry"): 5,
                   (4, "missing_file"): 5}  # fmt: skip
    assert result.n_discs == 4


def test_a_run_where_every_disc_is_skipped_writes_empty_arrays(tmp_path: Path) -> None:
    fixture = make_rsna_dir(tmp_path / "rsna", n_plain=0, quirks=["html"])
    result = prepare_cache(fixture.root, tmp_path / "out", CONFIG, progress=False)
    assert result.n_discs == 0
    cache = PreparedCache.open(tmp_path / "out")
    assert cache.rois.shape == (0, ROI, ROI)
    assert cache.multislice.shape == (0, 3, ROI, ROI)
    assert cache.localizer_images.shape == (0, 3, LOCALIZER, LOCALIZER)


def test_a_damaged_index_csv_names_file_and_line(prepared: Path, tmp_path: Path) -> None:
    from lumbarssl.data.cache import read_disc_table

    lines = (prepared / "index.csv").read_text().splitlines()
    lines[2] = lines[2].replace(",64,64,", ",sixty-four,64,", 1)
    path = tmp_path / "index.csv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}:3: "):
        read_disc_table(path)
    path.write_text("study_id,x\n1,2\n")
    with pytest.raises(ValueError, match=r"index.csv:1: missing column\(s\) series_id"):
        read_disc_table(path)
