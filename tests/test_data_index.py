from __future__ import annotations

import re
from pathlib import Path

import pytest
from _rsna_factory import (
    GRADES,
    Coordinate,
    Series,
    Study,
    make_rsna_dir,
    plain_study,
    quirk_study,
    write_rsna_dir,
)

from lumbarssl.data.index import read_index
from lumbarssl.data.skips import RSNADataError, SkipReason

COORDS = "train_label_coordinates.csv"
TRAIN = "train.csv"
SERIES = "train_series_descriptions.csv"
# The paper's grades (Sec. 3.1), written out rather than taken from the code under test.
PAPER_LABELS = {"Normal/Mild": 0, "Moderate": 1, "Severe": 2, "": -1}


def _csv_only(root: Path, studies: list[Study]) -> Path:
    """Write only the CSV files (the index never opens images)."""
    for study in studies:
        for series in study.series:
            series.n_slices = 0
    return write_rsna_dir(root, studies)


def _append(path: Path, line: str) -> int:
    """Append one line; return its 1-based line number."""
    text = path.read_text()
    path.write_text(text + line + "\n")
    return len(text.splitlines()) + 1


@pytest.fixture
def plain_dir(tmp_path: Path) -> Path:
    return _csv_only(tmp_path / "rsna", [plain_study(7), plain_study(8)])


def test_one_record_per_disc_with_the_papers_labels(plain_dir: Path) -> None:
    index = read_index(plain_dir)
    assert index.skips == ()
    assert len(index.discs) == 10
    for disc in index.discs:
        assert disc.series_id == disc.study_id * 10 + 1
        assert disc.severity == GRADES[disc.level]
        assert disc.label == PAPER_LABELS[GRADES[disc.level]]
        assert disc.is_labeled
    levels = [d.level for d in index.discs[:5]]
    assert levels == ["L1/L2", "L2/L3", "L3/L4", "L4/L5", "L5/S1"]
    assert [d.level_id for d in index.discs[:5]] == [0, 1, 2, 3, 4]


def test_coordinates_are_parsed_exactly(plain_dir: Path) -> None:
    first = read_index(plain_dir).discs[0]
    assert (first.instance_number, first.x, first.y) == (3, 30.25, 8.5)


def test_rows_of_other_conditions_are_ignored(plain_dir: Path) -> None:
    _append(plain_dir / COORDS, "7,71,3,Left Neural Foraminal Narrowing,L1/L2,1.0,2.0")
    index = read_index(plain_dir)
    assert len(index.discs) == 10
    assert index.skips == ()


def test_empty_severity_is_an_unlabeled_disc(tmp_path: Path) -> None:
    root = _csv_only(tmp_path, [quirk_study("empty_severity", 3)])
    index = read_index(root)
    disc = next(d for d in index.discs if d.level == "L2/L3")
    assert (disc.severity, disc.label, disc.is_labeled) == ("", -1, False)
    assert index.skips == ()


def test_study_absent_from_train_csv_is_unlabeled(tmp_path: Path) -> None:
    study = plain_study(4)
    study.in_train_csv = False
    index = read_index(_csv_only(tmp_path, [study]))
    assert len(index.discs) == 5
    assert {d.label for d in index.discs} == {-1}


@pytest.mark.parametrize("on_error", ["skip", "raise"])
def test_spinal_canal_rows_on_a_t1_series_are_recorded_not_raised(
    tmp_path: Path, on_error: str
) -> None:
    study = quirk_study("t1_labels", 5)
    index = read_index(_csv_only(tmp_path, [study]), on_error=on_error)  # type: ignore[arg-type]
    t1_series = study.series[0].series_id
    assert [d.level for d in index.discs] == ["L3/L4", "L4/L5", "L5/S1"]
    assert [s.reason for s in index.skips] == [SkipReason.NOT_SAGITTAL_T2] * 2
    assert {s.series_id for s in index.skips} == {t1_series}
    assert [s.line for s in index.skips] == [2, 3]
    assert "Sagittal T1" in index.skips[0].detail


def test_two_t2_series_use_the_series_named_by_each_row(tmp_path: Path) -> None:
    study = quirk_study("two_t2_series", 6)
    second = study.series[1].series_id
    # A second coordinate for L1/L2 on the other T2 series: the first row in file order wins.
    study.coordinates.append(Coordinate(study.series[0].series_id, 2, "L1/L2", 10.0, 10.0))
    index = read_index(_csv_only(tmp_path, [study]))
    assert len(index.discs) == 5
    assert {d.series_id for d in index.discs} == {second}
    assert [s.reason for s in index.skips] == [SkipReason.DUPLICATE_DISC]
    assert index.skips[0].line == 7


def test_graded_disc_without_coordinate_is_recorded(tmp_path: Path) -> None:
    study = plain_study(9)
    del study.coordinates[4]
    index = read_index(_csv_only(tmp_path, [study]))
    assert len(index.discs) == 4
    (skip,) = index.skips
    assert (skip.reason, skip.level, skip.line) == (SkipReason.MISSING_COORDINATE, "L5/S1", 2)
    assert skip.file.endswith(TRAIN)


# (file, bad line, reason code, text the message must contain)
BAD_LINES = [
    (COORDS, "7,71,3,Spinal Canal Stenosis,L1/L2,abc,2.0", "unparsable_number", "x='abc'"),
    (COORDS, "7,71,3,Spinal Canal Stenosis,L1/L2,nan,2.0", "unparsable_number", "x='nan'"),
    (COORDS, "7,71,x3,Spinal Canal Stenosis,L1/L2,1,2", "unparsable_number", "instance_number"),
    (COORDS, "7,71,3,Spinal Canal Stenosis,L6/L7,1.0,2.0", "unknown_level", "'L6/L7'"),
    (COORDS, "7,71,3,Spinal Stenosis,L1/L2,1.0,2.0", "unknown_condition", "'Spinal Stenosis'"),
    (COORDS, "7,71,3,Spinal Canal Stenosis,L1/L2,1.0,2.0", "duplicate_row", "already given"),
    (COORDS, "7,71,3,Spinal Canal Stenosis,L1/L2,1.0", "malformed_row", "number of fields"),
    (COORDS, "7,79,3,Spinal Canal Stenosis,L1/L2,1.0,2.0", "series_not_listed", "series 79"),
    (TRAIN, "11,Mild,,,,," + ",".join(["Normal/Mild"] * 20), "unknown_severity", "'Mild'"),
    (TRAIN, "7," + ",".join(["Normal/Mild"] * 25), "duplicate_row", "study 7"),
    (TRAIN, "seven," + ",".join(["Normal/Mild"] * 25), "unparsable_number", "'seven'"),
    (SERIES, "7,72,Sagittal T2", "unknown_series_description", "'Sagittal T2'"),
    (SERIES, "7,71,Sagittal T2/STIR", "duplicate_row", "series 71"),
]


@pytest.mark.parametrize(("file", "line_text", "reason", "fragment"), BAD_LINES)
def test_bad_line_raises_naming_file_and_line(
    plain_dir: Path, file: str, line_text: str, reason: str, fragment: str
) -> None:
    line = _append(plain_dir / file, line_text)
    pattern = rf"{re.escape(str(plain_dir / file))}:{line}: {reason}: .*{re.escape(fragment)}"
    with pytest.raises(RSNADataError, match=pattern) as info:
        read_index(plain_dir, on_error="raise")
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(("file", "line_text", "reason", "fragment"), BAD_LINES)
def test_bad_line_is_recorded_in_skip_mode(
    plain_dir: Path, file: str, line_text: str, reason: str, fragment: str
) -> None:
    line = _append(plain_dir / file, line_text)
    index = read_index(plain_dir, on_error="skip")
    assert [(s.file, s.line, s.reason.value) for s in index.skips] == [
        (str(plain_dir / file), line, reason)
    ]
    assert fragment in index.skips[0].detail
    # The ten good discs are still there (an unknown severity only drops a grade).
    assert len(index.discs) == 10


def test_unknown_severity_keeps_the_disc_unlabeled(tmp_path: Path) -> None:
    study = plain_study(3)
    study.grades["L3/L4"] = "severe"
    index = read_index(_csv_only(tmp_path, [study]))
    disc = next(d for d in index.discs if d.level == "L3/L4")
    assert disc.label == -1
    assert [(s.reason, s.level, s.line) for s in index.skips] == [
        (SkipReason.UNKNOWN_SEVERITY, "L3/L4", 2)
    ]


@pytest.mark.parametrize(
    ("file", "column"),
    [(COORDS, "x"), (COORDS, "instance_number"), (TRAIN, "spinal_canal_stenosis_l4_l5"),
     (SERIES, "series_description")],
)  # fmt: skip
@pytest.mark.parametrize("on_error", ["skip", "raise"])
def test_missing_column_always_raises_naming_file_and_column(
    plain_dir: Path, file: str, column: str, on_error: str
) -> None:
    path = plain_dir / file
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    keep = [i for i, name in enumerate(header) if name != column]
    path.write_text("\n".join(",".join(line.split(",")[i] for i in keep) for line in lines))
    with pytest.raises(
        RSNADataError, match=rf"{re.escape(str(path))}:1: missing column '{column}'"
    ):
        read_index(plain_dir, on_error=on_error)  # type: ignore[arg-type]


def test_missing_csv_file_names_it(plain_dir: Path) -> None:
    (plain_dir / SERIES).unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(SERIES)):
        read_index(plain_dir)


def test_invalid_on_error_is_rejected(plain_dir: Path) -> None:
    with pytest.raises(ValueError, match="on_error must be 'skip' or 'raise', got 'ignore'"):
        read_index(plain_dir, on_error="ignore")  # type: ignore[arg-type]


def test_blank_lines_and_bom_are_tolerated(plain_dir: Path) -> None:
    path = plain_dir / COORDS
    path.write_text("\ufeff" + path.read_text() + "\n\n")
    assert len(read_index(plain_dir, on_error="raise").discs) == 10


def test_rsna_data_error_survives_pickling(plain_dir: Path) -> None:
    import pickle

    _append(plain_dir / COORDS, "7,71,3,Spinal Canal Stenosis,L6/L7,1.0,2.0")
    with pytest.raises(RSNADataError) as info:
        read_index(plain_dir, on_error="raise")
    copy = pickle.loads(pickle.dumps(info.value))
    assert str(copy) == str(info.value)
    assert copy.skip == info.value.skip


def test_fixture_factory_writes_every_quirk(tmp_path: Path) -> None:
    fixture = make_rsna_dir(tmp_path, n_plain=1, quirks=["t1_labels", "empty_severity"])
    assert set(fixture.quirk_of) == {"t1_labels", "empty_severity"}
    assert len(read_index(fixture.root).discs) == 5 + 3 + 5


def test_series_options_of_the_factory_are_kept(tmp_path: Path) -> None:
    study = Study(1, [Series(11, n_slices=0)], [Coordinate(11, 0, "L1/L2", 1.0, 2.0)], {})
    index = read_index(write_rsna_dir(tmp_path, [study]))
    assert [(d.instance_number, d.label) for d in index.discs] == [(1, -1)]
