"""``prepare`` on hostile input: typed one-line errors, recorded skips, a lock, a full disk.

Each test builds the bad input by hand and checks the outcome against what the input is
(the file, the line, the value), not against the code's own output.
"""

from __future__ import annotations

import csv
import errno
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
from _fuzz_prepare import deadline
from _rsna_factory import (
    Fixture,
    Series,
    Study,
    build_dataset,
    five_levels,
    make_rsna_dir,
)
from pydicom.uid import UID

import lumbarssl.data.prepare.journal as journal_module
import lumbarssl.data.prepare.writer as writer_module
from lumbarssl._core.atomic import atomic_write
from lumbarssl.cli import main
from lumbarssl.data.cache import read_disc_table
from lumbarssl.data.dicom import PixelSizeMismatchError, open_series, read_slice
from lumbarssl.data.index import read_index
from lumbarssl.data.prepare import PrepareConfig, prepare_cache
from lumbarssl.data.prepare.lock import LOCK_FILE, output_lock
from lumbarssl.data.skips import RSNADataError
from lumbarssl.errors import DataError, DiskFullError, LockHeldError

CONFIG = PrepareConfig(roi_size=16, localizer_size=32)
COORDS = "train_label_coordinates.csv"
TRAIN = "train.csv"
SERIES = "train_series_descriptions.csv"


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _skips(out: Path) -> Counter[tuple[int, str]]:
    return Counter((int(r["study_id"]), r["reason"]) for r in _rows(out / "skipped.csv"))


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


@pytest.fixture
def two_studies(tmp_path: Path) -> Fixture:
    return make_rsna_dir(tmp_path / "rsna", n_plain=2)


def _run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


# --------------------------------------------------------------------------- CSV files


def test_a_field_over_the_csv_limit_is_a_malformed_row_naming_file_and_line(
    two_studies: Fixture, tmp_path: Path
) -> None:
    path = two_studies.root / COORDS
    lines = path.read_text().splitlines()
    lines.insert(3, "1000,10001,3,Spinal Canal Stenosis,L1/L2," + "9" * 200_000 + ",10")
    path.write_text("\n".join(lines) + "\n")
    index = read_index(two_studies.root)
    (skip,) = index.skips
    assert (skip.reason.value, skip.file, skip.line) == ("malformed_row", str(path), 4)
    assert "field larger than field limit" in skip.detail
    assert len(index.discs) == 10  # the rows after it are read
    with pytest.raises(RSNADataError, match=rf"{re.escape(str(path))}:4: malformed_row"):
        read_index(two_studies.root, on_error="raise")


def test_a_huge_header_field_stops_the_run_naming_the_file(
    two_studies: Fixture, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = two_studies.root / SERIES
    path.write_text("x" * 200_000 + "\n" + path.read_text())
    code, err = _run_cli(
        ["prepare", str(two_studies.root), str(tmp_path / "out"), "--no-progress"], capsys
    )
    assert code == 2
    assert err.count("\n") == 1
    assert f"{path}:1: unreadable header" in err


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (str(2**63 - 1), True),
        (str(2**63), False),
        (str(-(2**63)), True),
        (str(-(2**63) - 1), False),
        ("1" * 400, False),
        ("1_000", False),  # int() would accept it
        ("\u0661\u0662", False),  # Arabic-Indic digits: int() would accept them too
        ("+12", True),
        ("", False),
    ],
)
def test_ids_must_be_decimal_64_bit_integers(value: str, ok: bool, two_studies: Fixture) -> None:
    path = two_studies.root / COORDS
    line = f"{value},10001,3,Spinal Canal Stenosis,L1/L2,10,10"
    path.write_text(path.read_text() + line + "\n")
    index = read_index(two_studies.root)
    reasons = [s.reason.value for s in index.skips if s.line == 12]
    if ok:
        assert reasons == ["series_not_listed"]  # parsed; the series is another study's
    else:
        assert reasons == ["unparsable_number"]
        detail = next(s.detail for s in index.skips if s.line == 12)
        assert "study_id=" in detail
        assert "64-bit integer" in detail
        assert len(detail) < 200  # a long value is cut in the message


def test_a_study_id_at_the_int64_limit_goes_through_prepare(tmp_path: Path) -> None:
    study_id = 2**63 - 1
    series = Series(7)
    study = Study(study_id, [series], five_levels(7, 2), {"L1/L2": "Severe"})
    fixture = make_rsna_dir(tmp_path / "rsna", n_plain=0, extra=[study])
    result = prepare_cache(fixture.root, tmp_path / "out", CONFIG, progress=False)
    assert result.n_discs == 5
    table = read_disc_table(tmp_path / "out" / "index.csv")
    assert set(table.study_id.tolist()) == {study_id}


def test_nan_and_infinite_coordinates_are_unparsable(two_studies: Fixture) -> None:
    path = two_studies.root / COORDS
    text = path.read_text()
    text += "1000,10001,3,Spinal Canal Stenosis,L1/L2,nan,10\n"
    text += "1000,10001,3,Spinal Canal Stenosis,L1/L2,10,-inf\n"
    text += "1000,10001,3,Spinal Canal Stenosis,L1/L2,1e400,10\n"
    path.write_text(text)
    index = read_index(two_studies.root)
    assert [(s.line, s.reason.value) for s in index.skips] == [
        (12, "unparsable_number"),
        (13, "unparsable_number"),
        (14, "unparsable_number"),
    ]


@pytest.mark.parametrize("name", [COORDS, TRAIN, SERIES])
def test_a_repeated_column_name_is_refused_naming_file_and_column(
    name: str, two_studies: Fixture, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = two_studies.root / name
    lines = path.read_text().splitlines()
    # A second study_id column, as in the report ("17 discs (0 labeled)").
    path.write_text("\n".join([lines[0] + ",study_id"] + [f"{x},1" for x in lines[1:]]) + "\n")
    with pytest.raises(RSNADataError, match=rf"{re.escape(str(path))}:1: column 'study_id'"):
        read_index(two_studies.root)
    code, err = _run_cli(
        ["prepare", str(two_studies.root), str(tmp_path / "out"), "--no-progress"], capsys
    )
    assert code == 2
    assert "appears twice" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("encoding", "expected"),
    [
        ("utf-16", "is UTF-16 encoded"),
        ("utf-32", "is UTF-32 encoded"),
        ("latin-1", ":3: not UTF-8 text (byte 0xe9"),
    ],
)
def test_a_csv_in_another_encoding_is_refused_naming_the_file(
    encoding: str,
    expected: str,
    two_studies: Fixture,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    path = two_studies.root / SERIES
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace("Sagittal T2/STIR", "Sagittal T2/STIR é")
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))
    code, err = _run_cli(
        ["prepare", str(two_studies.root), str(tmp_path / "out"), "--no-progress"], capsys
    )
    assert code == 2
    assert err.count("\n") == 1
    assert f"{path}{expected}" in err or f"{path}: the file {expected}" in err
    assert "UTF-8" in err


# --------------------------------------------------------------------------- DICOM files


def _rewrite(path: Path, study: Study, series: Series, index: int, **changes: object) -> None:
    ds = build_dataset(study, series, index)
    for key, value in changes.items():
        setattr(ds, key, value)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


def test_a_fifo_named_like_a_slice_is_skipped_without_blocking(
    two_studies: Fixture, tmp_path: Path
) -> None:
    study = two_studies.studies[1]
    folder = two_studies.root / "train_images" / str(study.study_id) / "10011"
    (folder / "3.dcm").unlink()  # the annotated slice
    os.mkfifo(folder / "3.dcm")
    os.mkfifo(folder / "extra.dcm")  # not annotated: only left out of the order
    with deadline(30):
        result = prepare_cache(two_studies.root, tmp_path / "out", CONFIG, progress=False)
    assert _skips(tmp_path / "out") == {(study.study_id, "not_regular_file"): 5}
    detail = _rows(tmp_path / "out" / "skipped.csv")[0]["detail"]
    assert "a FIFO (named pipe), not a regular file" in detail
    assert result.n_discs == 5


def test_a_fifo_as_a_neighbouring_slice_is_replaced_by_the_centre(
    two_studies: Fixture, tmp_path: Path
) -> None:
    folder = two_studies.root / "train_images" / "1001" / "10011"
    with deadline(30):
        series = open_series(folder)
    (folder / "2.dcm").unlink()
    os.mkfifo(folder / "2.dcm")
    with deadline(30):
        fifo_series = open_series(folder, on_error="skip")
        result = prepare_cache(
            two_studies.root, tmp_path / "out", PrepareConfig(roi_size=8, slices=3), progress=False
        )
    assert len(fifo_series) == len(series) - 1
    assert result.n_discs == 10


@pytest.mark.filterwarnings("ignore:The pixel data is .* bytes long:UserWarning")  # pydicom
@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"Columns": 63}, "pixel_size_mismatch"),  # one column less than the data holds
        ({"Rows": 63}, "pixel_size_mismatch"),
        ({"Columns": 65}, "pixel_size_mismatch"),  # more than the data holds
        ({"Rows": 65535, "Columns": 65535}, "corrupt_file"),  # refused before any decoder
        ({"BitsAllocated": 8, "BitsStored": 8, "HighBit": 7}, "pixel_size_mismatch"),
    ],
)
def test_a_header_that_does_not_describe_the_pixels_is_skipped(
    change: dict[str, int], reason: str, two_studies: Fixture, tmp_path: Path
) -> None:
    study = two_studies.studies[1]
    series = study.series[0]
    path = two_studies.root / "train_images" / str(study.study_id) / "10011" / "3.dcm"
    _rewrite(path, study, series, 2, **change)
    if "Columns" in change and change["Columns"] == 63:
        # What pydicom alone does: log a warning and return the image sheared, each row
        # starting one pixel further into the data.
        stored = np.frombuffer(build_dataset(study, series, 2).PixelData, np.uint16)
        sheared = pydicom.dcmread(path).pixel_array
        assert sheared.shape == (64, 63)
        np.testing.assert_array_equal(sheared.ravel(), stored[: 64 * 63])
        with pytest.raises(PixelSizeMismatchError, match=r"holds 8192 bytes but .* = 8064"):
            read_slice(path)
    prepare_cache(two_studies.root, tmp_path / "out", CONFIG, progress=False)
    assert _skips(tmp_path / "out") == {(study.study_id, reason): 5}
    clean = two_studies.studies[0].study_id
    assert {int(r["study_id"]) for r in _rows(tmp_path / "out" / "index.csv")} == {clean}


def test_an_unknown_transfer_syntax_is_skipped(two_studies: Fixture, tmp_path: Path) -> None:
    study = two_studies.studies[1]
    path = two_studies.root / "train_images" / str(study.study_id) / "10011" / "3.dcm"
    ds = build_dataset(study, study.series[0], 2)
    ds.file_meta.TransferSyntaxUID = UID("1.2.3.4.5.6")
    pydicom.dcmwrite(path, ds, enforce_file_format=True, implicit_vr=False, little_endian=True)
    prepare_cache(two_studies.root, tmp_path / "out", CONFIG, progress=False)
    assert _skips(tmp_path / "out") == {(study.study_id, "unsupported_transfer_syntax"): 5}


def test_a_dangling_link_named_like_a_slice_is_a_missing_file(
    two_studies: Fixture, tmp_path: Path
) -> None:
    study = two_studies.studies[1]
    path = two_studies.root / "train_images" / str(study.study_id) / "10011" / "3.dcm"
    path.unlink()
    path.symlink_to(tmp_path / "nowhere.dcm")
    prepare_cache(two_studies.root, tmp_path / "out", CONFIG, progress=False)
    assert _skips(tmp_path / "out") == {(study.study_id, "missing_file"): 5}


# --------------------------------------------------------------------------- the lock


def test_a_second_run_into_the_same_directory_fails_fast_and_changes_nothing(
    two_studies: Fixture, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "left-by-the-first-run").write_text("x")
    with output_lock(out, "lumbarssl prepare"):
        before = _tree(out)
        code, err = _run_cli(["prepare", str(two_studies.root), str(out), "--no-progress"], capsys)
        assert code == 3
        assert err.count("\n") == 1
        assert f"{out}: another lumbarssl prepare (process {os.getpid()})" in err
        assert _tree(out) == before
        with pytest.raises(LockHeldError):
            prepare_cache(two_studies.root, out, CONFIG, workers=2, progress=False)
        assert _tree(out) == before
    assert not (out / LOCK_FILE).exists()
    prepare_cache(two_studies.root, out, CONFIG, progress=False)
    assert not (out / LOCK_FILE).exists()  # released and removed after a run
    assert (out / "prepare_meta.json").is_file()


def test_a_lock_file_left_by_a_killed_run_does_not_block(
    two_studies: Fixture, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_FILE).write_text("12345\n")  # its holder is gone: the kernel freed the lock
    result = prepare_cache(two_studies.root, out, CONFIG, progress=False)
    assert result.n_discs == 10


# --------------------------------------------------------------------------- a full disk


def _clean(fixture: Fixture, tmp_path: Path) -> dict[str, bytes]:
    prepare_cache(fixture.root, tmp_path / "clean", CONFIG, progress=False)
    return _tree(tmp_path / "clean")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_while_writing_a_png_is_one_line_and_resumable(
    two_studies: Fixture, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    png = out / "rois" / "1001" / "10011_3_l3_l4.png"
    png.parent.mkdir(parents=True)
    png.symlink_to("/dev/full")  # every write there fails with ENOSPC, as on a full disk
    argv = ["prepare", str(two_studies.root), str(out), "--no-progress"]
    argv += ["--roi-size", "16", "--localizer-size", "32"]
    code, err = _run_cli(argv, capsys)
    assert code == 3
    assert err.count("\n") == 1
    assert f"{png}: no space left on device; this run needs about " in err
    assert "run the same command again" in err
    assert not png.exists()  # nothing half-written: the PNG was removed
    assert not (out / "prepare_meta.json").exists()
    assert not list(out.rglob("*.tmp"))
    code, _ = _run_cli(argv, capsys)
    assert code == 0
    assert _tree(out) == _clean(two_studies, tmp_path)


def test_a_full_disk_while_appending_to_the_journal_cuts_the_record_off(
    two_studies: Fixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    real = journal_module._log_for
    calls = []

    class FillsUp:
        """A log file on which the second record's write runs out of space half-way."""

        def __init__(self, handle: object) -> None:
            self.handle = handle

        def __getattr__(self, name: str) -> object:
            return getattr(self.handle, name)

        def write(self, data: memoryview) -> int:
            calls.append(len(data))
            if len(calls) == 2:
                self.handle.write(data[: len(data) // 2])  # type: ignore[attr-defined]
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.handle.write(data)  # type: ignore[attr-defined,no-any-return]

    monkeypatch.setattr(journal_module, "_log_for", lambda out_dir: FillsUp(real(out_dir)))
    with pytest.raises(DiskFullError, match=r"\.partial/.*\.log: no space left on device"):
        prepare_cache(two_studies.root, out, CONFIG, progress=False)
    (log,) = (out / ".partial").glob("*.log")
    assert log.stat().st_size == calls[0]  # the first record whole, nothing of the second
    assert len(journal_module.finished_studies(out)) == 1
    monkeypatch.setattr(journal_module, "_log_for", real)
    result = prepare_cache(two_studies.root, out, CONFIG, progress=False)
    assert result.n_resumed == 1
    assert _tree(out) == _clean(two_studies, tmp_path)


def test_a_full_disk_while_writing_the_final_files_keeps_no_partial_file(
    two_studies: Fixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    real = atomic_write

    def full(path: Path, write: object) -> None:
        if path.name == "localizer_images.npy":

            def half(handle: object) -> None:
                handle.write(b"\x93NUMPY")  # type: ignore[attr-defined]
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            real(path, half)
        real(path, write)  # type: ignore[arg-type]

    monkeypatch.setattr(writer_module, "atomic_write", full)
    with pytest.raises(DiskFullError, match=r"localizer_images\.npy: no space left on device"):
        prepare_cache(two_studies.root, out, CONFIG, progress=False)
    assert not (out / "localizer_images.npy").exists()
    assert not (out / "prepare_meta.json").exists()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.setattr(writer_module, "atomic_write", real)
    prepare_cache(two_studies.root, out, CONFIG, progress=False)
    assert _tree(out) == _clean(two_studies, tmp_path)


# --------------------------------------------------------------------------- damaged outputs


def test_a_damaged_prepare_meta_is_refused_in_one_line(
    two_studies: Fixture, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    prepare_cache(two_studies.root, out, CONFIG, progress=False)
    (out / "prepare_meta.json").write_text("{not json")
    code, err = _run_cli(["prepare", str(two_studies.root), str(out), "--no-progress"], capsys)
    assert code == 2
    assert "damaged prepare_meta.json" in err


@pytest.mark.parametrize(
    ("column", "value", "expected"),
    [
        ("width", "0", "width must be >= 1"),
        ("height", "-3", "height must be >= 1"),
        ("n_slices", "0", "n_slices must be >= 1"),
        ("slice_index", "99", "slice_index must be in [0, n_slices)"),
        ("localizer_index", "-1", "localizer_index must be >= 0"),
        ("study_id", str(2**63), "study_id"),
        ("x", "nan", "x must be finite"),
    ],
)
def test_impossible_values_in_index_csv_name_file_line_and_column(
    column: str, value: str, expected: str, two_studies: Fixture, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    prepare_cache(two_studies.root, out, CONFIG, progress=False)
    rows = _rows(out / "index.csv")
    rows[3][column] = value
    path = tmp_path / "index.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}:5: .*{re.escape(expected)}"):
        read_disc_table(path)


def test_zero_workers_is_a_usage_error_not_a_traceback(
    two_studies: Fixture, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    argv = ["prepare", str(two_studies.root), str(tmp_path / "out"), "--workers", "0"]
    code, err = _run_cli(argv, capsys)
    assert code == 2
    assert err == "lumbarssl prepare: error: workers must be >= 1, got 0\n"
