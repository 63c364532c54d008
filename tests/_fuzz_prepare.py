"""A seeded generator of hostile inputs to ``lumbarssl prepare``, and the checks of one run.

Every case is an RSNA directory holding two good studies (1000 and 1001, their images shared
with every case through symbolic links) and one *victim* study (2000) whose CSV rows and DICOM
files are mutated: 1 to 3 mutations drawn from :data:`CSV_MUTATIONS` and
:data:`DICOM_MUTATIONS`. The victim's CSV rows come last in each file, so that a mutation that
swallows the rest of a file (an unclosed quote) only swallows the victim's own rows.

:func:`run_case` runs ``lumbarssl prepare`` in this process (``lumbarssl.cli.main``) and
:func:`check_case` lists what went wrong: an exit status outside {0, 2, 3}, an exception that
is not a :class:`~lumbarssl.errors.LumbarsslError` (a traceback), an ``internal_error`` skip,
an error message that is not one line, a file written outside ``OUT``, a completed output
that is inconsistent, or a good study whose outputs differ from a clean run's.

Used by ``tests/test_fuzz_prepare.py`` (a few hundred cases) and
``benchmarks/fuzz_prepare.py`` (thousands, each in a forked process with a time limit).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import random
import shutil
import signal
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import numpy as np
import pydicom
import pydicom.config
from _rsna_factory import Study, build_dataset, plain_study, quirk_study, write_rsna_dir
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.tag import Tag
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
)

from lumbarssl.cli import main
from lumbarssl.data.cache import PreparedCache
from lumbarssl.errors import LumbarsslError


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Fail instead of hanging: SIGALRM interrupts a blocking call (a FIFO's open())."""

    def expire(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError(f"still running after {seconds} s (a hang)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


GOOD = (1000, 1001)
VICTIM = 2000
VICTIM_SERIES = 20001
CSV_NAMES = ("train.csv", "train_series_descriptions.csv", "train_label_coordinates.csv")
OPTIONS = ["--roi-size", "16", "--localizer-size", "32", "--slices", "3", "--no-progress"]
EXIT_CODES = frozenset({0, 2, 3})


# --------------------------------------------------------------------------- the base


@dataclass
class Base:
    """What every case starts from.

    Attributes:
        root: Directory holding ``all/`` (the unmutated RSNA directory) and ``clean/``.
        csv_lines: Per CSV file, its header and the good studies' lines.
        victim_lines: Per CSV file, the victim's lines.
        victim: The victim study's spec.
        reference: The good studies' outputs from a clean run (see :func:`products`).
    """

    root: Path
    csv_lines: dict[str, list[str]]
    victim_lines: dict[str, list[str]]
    victim: Study
    reference: dict[tuple[int, str], bytes]


def build_base(root: Path) -> Base:
    """Write the unmutated directory once and prepare it (the reference run)."""
    good = [plain_study(GOOD[0]), quirk_study("instances_against_space", GOOD[1])]
    victim = plain_study(VICTIM)
    write_rsna_dir(root / "all", [*good, victim])
    csv_lines: dict[str, list[str]] = {}
    victim_lines: dict[str, list[str]] = {}
    for name in CSV_NAMES:
        lines = (root / "all" / name).read_text().splitlines()
        csv_lines[name] = [line for line in lines if not line.startswith(f"{VICTIM},")]
        victim_lines[name] = [line for line in lines if line.startswith(f"{VICTIM},")]
    with _quiet():
        code = main(["prepare", str(root / "all"), str(root / "clean"), *OPTIONS])
    assert code == 0, "the unmutated directory must prepare cleanly"
    reference = {key: value for key, value in products(root / "clean").items() if key[0] in GOOD}
    assert len(reference) == 10
    return Base(root, csv_lines, victim_lines, victim, reference)


def products(out: Path) -> dict[tuple[int, str], bytes]:
    """Everything a completed output holds for each disc, by (study, level), as bytes.

    The disc's ``index.csv`` row (its ``localizer_index`` replaced by the localizer input
    itself), its rows of the ``.npy`` files and its PNG.
    """
    cache = PreparedCache.open(out)
    rows = list(csv.DictReader(io.StringIO((out / "index.csv").read_text())))
    found: dict[tuple[int, str], bytes] = {}
    for i, row in enumerate(rows):
        localizer = cache.localizer_images[int(row.pop("localizer_index"))]
        parts = [
            json.dumps(row, sort_keys=True).encode(),
            cache.rois[i].tobytes(),
            cache.multislice[i].tobytes(),
            cache.multislice_mask[i].tobytes(),
            np.ascontiguousarray(localizer).tobytes(),
            (out / row["roi_path"]).read_bytes(),
        ]
        found[int(row["study_id"]), row["level"]] = b"\0".join(parts)
    return found


# --------------------------------------------------------------------------- a case


@dataclass
class Case:
    """One generated case before it is written.

    Attributes:
        number: Its number; with the seed it determines the case.
        csv_text: Per CSV file, its text.
        csv_bytes: Per CSV file, bytes to write instead of the UTF-8 text.
        dicom: Per victim file name, its bytes, or a special entry: ``"fifo"``, ``"dir"``,
            ``"missing"``, ``"link:TARGET"``.
        mutations: What was done, for the report.
        on_error: ``"skip"`` or ``"raise"``.
        workers: Worker processes of the run.
    """

    number: int
    csv_text: dict[str, str]
    csv_bytes: dict[str, bytes] = field(default_factory=dict)
    dicom: dict[str, bytes | str] = field(default_factory=dict)
    mutations: list[str] = field(default_factory=list)
    on_error: str = "skip"
    workers: int = 1


@contextlib.contextmanager
def _lenient_pydicom() -> Iterator[None]:
    """Let pydicom write invalid values (that is the point) without warning."""
    settings = pydicom.config.settings
    saved = settings.writing_validation_mode
    settings.writing_validation_mode = pydicom.config.IGNORE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        settings.writing_validation_mode = saved


def _encode(ds: Dataset, syntax: UID | None = None) -> bytes:
    """The file of ``ds``: its data set always explicit VR little endian, its file meta
    claiming ``syntax`` (a lie when it is another syntax)."""
    meta = ds.file_meta
    head = DicomBytesIO()
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    with _lenient_pydicom():
        if syntax is not None:
            meta.TransferSyntaxUID = syntax
        if "FileMetaInformationGroupLength" in meta:
            del meta.FileMetaInformationGroupLength  # computed again
        write_file_meta_info(head, meta, enforce_standard=False)
        ds.file_meta = FileMetaDataset()
        write_dataset(body, ds)
    ds.file_meta = meta
    return b"\0" * 128 + b"DICM" + head.getvalue() + body.getvalue()


def _victim_dataset(base: Base, index: int) -> Dataset:
    ds = build_dataset(base.victim, base.victim.series[0], index)
    ds["PixelData"].VR = "OW"  # pydicom needs BitsAllocated to choose, which may be deleted
    return ds


def _set_raw(ds: Dataset, keyword: str, value: object) -> None:
    """Store ``value`` in the element as written bytes: pydicom refuses some of them."""
    tag = tag_for_keyword(keyword)
    assert tag is not None
    vr = dictionary_VR(tag)
    if vr == "US":
        assert isinstance(value, int)
        raw = value.to_bytes(2, "little")
    else:
        items = value if isinstance(value, list) else [value]
        raw = "\\".join(str(item) for item in items).encode()
        raw += b" " * (len(raw) % 2)
    ds[tag] = RawDataElement(Tag(tag), vr, len(raw), raw, 0, False, True)


def _victim_file(rng: random.Random) -> tuple[int, str]:
    """A victim slice, the annotated one (index 2, ``3.dcm``) half of the time."""
    index = 2 if rng.random() < 0.5 else rng.randrange(5)
    return index, f"{index + 1}.dcm"


# CSV mutations: each edits the victim's lines (or a whole file) and says what it did.

_GARBAGE_NUMBERS = (
    "abc", "", " ", "1e", "0x10", "1.5", "--1", "1,2", "١٢", "1_000", "+", "NaN", "None",
    "9" * 25, str(2**63), str(-(2**63) - 1), str(2**64), "-0", "00002000", "1e308", "\x00",
)  # fmt: skip
_NONFINITE = ("nan", "NaN", "inf", "-inf", "Infinity", "1e400", "-1e999", "nan(0x1)")
_INSERTS = (",", '"', "\n", "\r", "\x00", "\\", "é", "\u2028", " ", ",,", '""', "\ufeff", "\t")


def _victim_line(case: Case, rng: random.Random, name: str | None = None) -> tuple[str, int]:
    name = name or rng.choice(CSV_NAMES)
    lines = case.csv_text[name].split("\n")
    candidates = [i for i, line in enumerate(lines) if line.startswith(f"{VICTIM},")]
    return name, rng.choice(candidates) if candidates else len(lines) - 1


def _edit_line(case: Case, name: str, index: int, edit: Callable[[str], str]) -> None:
    lines = case.csv_text[name].split("\n")
    lines[index] = edit(lines[index])
    case.csv_text[name] = "\n".join(lines)


def _edit_field(case: Case, rng: random.Random, name: str, column: int, value: str) -> None:
    _, index = _victim_line(case, rng, name)

    def edit(line: str) -> str:
        fields = line.split(",")
        if column < len(fields):
            fields[column] = value
        return ",".join(fields)

    _edit_line(case, name, index, edit)


def csv_truncate_row(case: Case, rng: random.Random) -> str:
    name, index = _victim_line(case, rng)
    cut = rng.randrange(len(case.csv_text[name].split("\n")[index]) + 1)
    _edit_line(case, name, index, lambda line: line[:cut])
    return f"{name}: victim line cut at {cut}"


def csv_bad_number(case: Case, rng: random.Random) -> str:
    name, column = rng.choice(
        [("train_label_coordinates.csv", c) for c in (0, 1, 2, 5, 6)]
        + [("train_series_descriptions.csv", c) for c in (0, 1)]
        + [("train.csv", 0)]
    )
    value = rng.choice(_GARBAGE_NUMBERS)
    _edit_field(case, rng, name, column, value)
    return f"{name}: column {column} = {value[:30]!r}"


def csv_nonfinite(case: Case, rng: random.Random) -> str:
    value = rng.choice(_NONFINITE)
    _edit_field(case, rng, "train_label_coordinates.csv", rng.choice((5, 6)), value)
    return f"coordinate = {value!r}"


def csv_huge_field(case: Case, rng: random.Random) -> str:
    name, index = _victim_line(case, rng)
    size = rng.choice((131_072, 131_073, 150_000, 400_000))
    filler = rng.choice(("9", "x", "1.5"))
    value = (filler * size)[:size]

    def edit(line: str) -> str:
        fields = line.split(",")
        fields[rng.randrange(len(fields))] = value
        return ",".join(fields)

    _edit_line(case, name, index, edit)
    return f"{name}: a field of {size} characters"


def csv_duplicate_header(case: Case, rng: random.Random) -> str:
    name = rng.choice(CSV_NAMES)
    lines = case.csv_text[name].split("\n")
    header = lines[0].split(",")
    column = rng.choice(header)
    lines = [f"{lines[0]},{column}"] + [f"{line},7" if line else line for line in lines[1:]]
    case.csv_text[name] = "\n".join(lines)
    return f"{name}: column {column!r} twice"


def csv_encoding(case: Case, rng: random.Random) -> str:
    name, index = _victim_line(case, rng)
    _edit_line(case, name, index, lambda line: line + "é")
    encoding = rng.choice(("utf-16", "utf-16-le", "utf-32", "latin-1", "cp1252", "utf-8-sig"))
    case.csv_bytes[name] = case.csv_text[name].encode(encoding)
    return f"{name}: encoded {encoding}"


def csv_missing_column(case: Case, rng: random.Random) -> str:
    name = rng.choice(CSV_NAMES)
    lines = case.csv_text[name].split("\n")
    header = lines[0].split(",")
    drop = rng.randrange(min(len(header), 7))
    kept = []
    for line in lines:
        fields = line.split(",")
        kept.append(",".join(f for j, f in enumerate(fields) if j != drop) if line else line)
    case.csv_text[name] = "\n".join(kept)
    return f"{name}: column {header[drop]!r} removed"


def csv_id_range(case: Case, rng: random.Random) -> str:
    value = rng.choice((str(2**63), str(-(2**63) - 1), str(2**63 - 1), "1" + "0" * 30, str(2**64)))
    column = rng.choice((0, 1, 2))
    _edit_field(case, rng, "train_label_coordinates.csv", column, value)
    return f"coordinate column {column} = {value}"


def csv_negative_instance(case: Case, rng: random.Random) -> str:
    value = rng.choice(("-3", "0", "-1", str(-(2**63))))
    _edit_field(case, rng, "train_label_coordinates.csv", 2, value)
    return f"instance_number = {value}"


def csv_random_chars(case: Case, rng: random.Random) -> str:
    name, index = _victim_line(case, rng)
    inserted = "".join(rng.choice(_INSERTS) for _ in range(rng.randint(1, 3)))

    def edit(line: str) -> str:
        at = rng.randrange(len(line) + 1)
        return line[:at] + inserted + line[at:]

    _edit_line(case, name, index, edit)
    return f"{name}: inserted {inserted!r}"


def csv_unknown_values(case: Case, rng: random.Random) -> str:
    name, column, value = rng.choice(
        [
            ("train_label_coordinates.csv", 3, "Spinal Canal"),
            ("train_label_coordinates.csv", 4, "L6/S1"),
            ("train_label_coordinates.csv", 4, ""),
            ("train.csv", 1, "Very Severe"),
            ("train_series_descriptions.csv", 2, "Sagittal T1"),
            ("train_series_descriptions.csv", 2, "Coronal"),
        ]
    )
    _edit_field(case, rng, name, column, value)
    return f"{name}: column {column} = {value!r}"


def csv_crlf(case: Case, rng: random.Random) -> str:
    name = rng.choice(CSV_NAMES)
    case.csv_text[name] = case.csv_text[name].replace("\n", "\r\n")
    return f"{name}: CRLF line endings"


def csv_empty(case: Case, rng: random.Random) -> str:
    name = rng.choice(CSV_NAMES)
    case.csv_text[name] = rng.choice(("", "\n", "\ufeff", "study_id\n"))
    return f"{name}: emptied"


def csv_steal_id(case: Case, rng: random.Random) -> str:
    good = rng.choice(GOOD)
    line = rng.choice(
        (
            f"{good},{good * 10 + 1},3,Spinal Canal Stenosis,L1/L2,1.0,1.0",
            f"{good},{VICTIM_SERIES},3,Spinal Canal Stenosis,L2/L3,30.0,20.0",
            f"{good},{good * 10 + 1},99,Spinal Canal Stenosis,L4/L5,30.0,20.0",
        )
    )
    name = "train_label_coordinates.csv"
    case.csv_text[name] = case.csv_text[name].rstrip("\n") + "\n" + line + "\n"
    return f"a victim row claiming study {good}"


CSV_MUTATIONS: tuple[Callable[[Case, random.Random], str], ...] = (
    csv_truncate_row,
    csv_bad_number,
    csv_nonfinite,
    csv_huge_field,
    csv_duplicate_header,
    csv_encoding,
    csv_missing_column,
    csv_id_range,
    csv_negative_instance,
    csv_random_chars,
    csv_unknown_values,
    csv_crlf,
    csv_empty,
    csv_steal_id,
)


# DICOM mutations: each replaces one or more victim files.


def _current_bytes(case: Case, base: Base, name: str) -> bytes:
    data = case.dicom.get(name)
    if isinstance(data, bytes):
        return data
    return (
        base.root / "all" / "train_images" / str(VICTIM) / str(VICTIM_SERIES) / name
    ).read_bytes()


def dcm_truncate(case: Case, base: Base, rng: random.Random) -> str:
    _, name = _victim_file(rng)
    data = _current_bytes(case, base, name)
    cut = rng.randrange(max(len(data), 1))
    case.dicom[name] = data[:cut]
    return f"{name}: cut at {cut} of {len(data)} bytes"


def dcm_zero(case: Case, base: Base, rng: random.Random) -> str:
    _, name = _victim_file(rng)
    case.dicom[name] = b""
    return f"{name}: empty"


def dcm_random(case: Case, base: Base, rng: random.Random) -> str:
    _, name = _victim_file(rng)
    body = rng.randbytes(rng.randrange(20_000))
    if rng.random() < 0.5:
        body = b"\0" * 128 + b"DICM" + body
    case.dicom[name] = body
    return f"{name}: {len(body)} random bytes"


def dcm_flip(case: Case, base: Base, rng: random.Random) -> str:
    _, name = _victim_file(rng)
    data = bytearray(_current_bytes(case, base, name))
    end = len(data) if rng.random() < 0.3 else min(len(data), 800)
    flips = rng.randint(1, 8) if end else 0
    for _ in range(flips):
        data[rng.randrange(end)] = rng.randrange(256)
    case.dicom[name] = bytes(data)
    return f"{name}: {flips} bytes changed in the first {end}"


def _structured(case: Case, base: Base, rng: random.Random, what: str) -> str:
    index, name = _victim_file(rng)
    ds = _victim_dataset(base, index)
    syntax: UID | None = None
    with _lenient_pydicom():
        if what == "rows_columns":
            key = rng.choice(("Rows", "Columns"))
            value = rng.choice((0, 1, 63, 65, 65535, rng.randrange(1, 200)))
            setattr(ds, key, value)
            detail = f"{key} = {value}"
        elif what == "huge":
            ds.Rows = ds.Columns = 65535
            detail = "Rows = Columns = 65535"
        elif what == "missing_tag":
            keyword = rng.choice(
                (
                    "Rows", "Columns", "PixelData", "InstanceNumber", "ImagePositionPatient",
                    "ImageOrientationPatient", "PixelSpacing", "BitsAllocated",
                    "SamplesPerPixel", "PhotometricInterpretation", "PixelRepresentation",
                    "BitsStored",
                )
            )  # fmt: skip
            delattr(ds, keyword)
            detail = f"no {keyword}"
        elif what == "syntax":
            syntax = rng.choice(
                (
                    ExplicitVRBigEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit, RLELossless,
                    JPEG2000Lossless, DeflatedExplicitVRLittleEndian, UID("1.2.3.4.5"),
                    UID("garbage"), UID(""),
                )
            )  # fmt: skip
            detail = f"TransferSyntaxUID {str(syntax)!r} over explicit little endian data"
        elif what == "values":
            choices: tuple[tuple[str, object], ...] = (
                ("SamplesPerPixel", 3), ("NumberOfFrames", 2), ("NumberOfFrames", "abc"),
                ("BitsAllocated", 8), ("BitsAllocated", 32), ("BitsAllocated", 1),
                ("BitsAllocated", 12), ("BitsStored", 40), ("HighBit", 99),
                ("RescaleSlope", "0"), ("RescaleSlope", "1e38"), ("RescaleSlope", "nan"),
                ("RescaleIntercept", "-inf"), ("PhotometricInterpretation", "RGB"),
                ("PhotometricInterpretation", "MONOCHROME1"), ("PixelRepresentation", 1),
                ("PixelSpacing", ["nan", "nan"]), ("PixelSpacing", ["0", "0"]),
                ("PixelSpacing", ["-1", "1"]), ("ImagePositionPatient", ["inf", "0", "0"]),
                ("ImagePositionPatient", ["10", "-80", "60"]), ("InstanceNumber", "-5"),
                ("InstanceNumber", str(2**40)), ("InstanceNumber", "1"),
                ("InstanceNumber", "2.5"), ("ImageOrientationPatient", ["0"] * 6),
            )  # fmt: skip
            keyword, setting = rng.choice(choices)
            _set_raw(ds, keyword, setting)
            detail = f"{keyword} = {setting!r}"
        else:  # pixel_length
            delta = rng.choice((-2, -1, 1, 2, 128, -128))
            pixels = bytes(ds.PixelData)
            ds.PixelData = pixels[:delta] if delta < 0 else pixels + b"\0" * delta
            detail = f"PixelData {delta:+d} bytes"
    case.dicom[name] = _encode(ds, syntax)
    return f"{name}: {detail}"


def dcm_rows_columns(case: Case, base: Base, rng: random.Random) -> str:
    return _structured(case, base, rng, "rows_columns")


def dcm_huge(case: Case, base: Base, rng: random.Random) -> str:
    return _structured(case, base, rng, "huge")


def dcm_missing_tag(case: Case, base: Base, rng: random.Random) -> str:
    return _structured(case, base, rng, "missing_tag")


def dcm_syntax(case: Case, base: Base, rng: random.Random) -> str:
    return _structured(case, base, rng, "syntax")


def dcm_values(case: Case, base: Base, rng: random.Random) -> str:
    return _structured(case, base, rng, "values")


def dcm_pixel_length(case: Case, base: Base, rng: random.Random) -> str:
    return _structured(case, base, rng, "pixel_length")


def dcm_special(case: Case, base: Base, rng: random.Random) -> str:
    _, name = _victim_file(rng)
    kind = rng.choice(
        ("fifo", "fifo", "dir", "missing", "link:/dev/zero", "link:/dev/null", "link:nowhere")
    )
    case.dicom[name] = kind
    return f"{name}: {kind}"


def dcm_extra_files(case: Case, base: Base, rng: random.Random) -> str:
    name = rng.choice(("junk.dcm", ".hidden.dcm", "notes.txt", "0003.dcm"))
    case.dicom[name] = rng.choice((b"", rng.randbytes(300), _current_bytes(case, base, "3.dcm")))
    return f"extra file {name}"


DICOM_MUTATIONS: tuple[Callable[[Case, Base, random.Random], str], ...] = (
    dcm_truncate,
    dcm_zero,
    dcm_random,
    dcm_flip,
    dcm_rows_columns,
    dcm_huge,
    dcm_missing_tag,
    dcm_syntax,
    dcm_values,
    dcm_pixel_length,
    dcm_special,
    dcm_extra_files,
)


def generate_case(base: Base, seed: int, number: int, *, workers_share: float = 0.0) -> Case:
    """The case ``number`` of the run seeded ``seed``: the same inputs on every call."""
    rng = random.Random(seed * 1_000_003 + number)
    text = {
        name: "\n".join(base.csv_lines[name] + base.victim_lines[name]) + "\n" for name in CSV_NAMES
    }
    case = Case(number, text)
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3))):
        if rng.random() < 0.45:
            case.mutations.append(rng.choice(CSV_MUTATIONS)(case, rng))
        else:
            case.mutations.append(rng.choice(DICOM_MUTATIONS)(case, base, rng))
    case.on_error = "raise" if rng.random() < 0.15 else "skip"
    case.workers = 2 if rng.random() < workers_share else 1
    return case


def write_case(base: Base, case: Case, root: Path) -> Path:
    """Write the case's RSNA directory under ``root/data``; return it."""
    data = root / "data"
    images = data / "train_images"
    images.mkdir(parents=True)
    for name in CSV_NAMES:
        target = data / name
        if name in case.csv_bytes:
            target.write_bytes(case.csv_bytes[name])
        else:
            target.write_text(case.csv_text[name], encoding="utf-8", newline="")
    for study in GOOD:
        (images / str(study)).symlink_to(base.root / "all" / "train_images" / str(study))
    series = images / str(VICTIM) / str(VICTIM_SERIES)
    shutil.copytree(base.root / "all" / "train_images" / str(VICTIM) / str(VICTIM_SERIES), series)
    for name, content in case.dicom.items():
        path = series / name
        path.unlink(missing_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif content == "fifo":
            os.mkfifo(path)
        elif content == "dir":
            path.mkdir()
        elif content.startswith("link:"):
            path.symlink_to(content.removeprefix("link:"))
    return data


# --------------------------------------------------------------------------- running one


@dataclass
class Outcome:
    """What one run did.

    Attributes:
        code: Exit status, or ``None`` if an exception escaped ``main``.
        stderr: What it wrote to stderr.
        error: The traceback of an escaped exception.
        skips: Rows of ``skipped.csv`` per reason (completed runs).
        problems: What :func:`check_case` found wrong; empty for a good outcome.
    """

    code: int | None
    stderr: str
    error: str = ""
    skips: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for entry in dirnames + filenames:
            path = Path(dirpath) / entry
            st = path.lstat()
            found[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return found


def run_case(base: Base, case: Case, root: Path) -> Outcome:
    """Write ``case`` under ``root``, run ``lumbarssl prepare`` on it, check the outcome."""
    data = write_case(base, case, root)
    out = root / "out"
    argv = ["prepare", str(data), str(out), *OPTIONS, "--on-error", case.on_error]
    argv += ["--workers", str(case.workers)]
    before = _snapshot(root)
    stderr = io.StringIO()
    outcome = Outcome(code=None, stderr="")
    with _quiet(), contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            outcome.code = main(argv)
        except SystemExit as exc:  # argparse
            outcome.code = exc.code if isinstance(exc.code, int) else 2
        except LumbarsslError as exc:  # pragma: no cover - main() catches these
            outcome.error = f"LumbarsslError escaped main(): {exc!r}"
        except Exception:
            outcome.error = traceback.format_exc()
    outcome.stderr = stderr.getvalue()
    outcome.problems = check_case(base, root, out, outcome, before)
    return outcome


def check_case(
    base: Base, root: Path, out: Path, outcome: Outcome, before: dict[str, tuple[int, int]]
) -> list[str]:
    """What is wrong with ``outcome``; empty when it is one of the documented outcomes."""
    problems = []
    if outcome.error:
        problems.append("traceback: " + outcome.error.strip().splitlines()[-1])
    elif outcome.code not in EXIT_CODES:
        problems.append(f"exit status {outcome.code}")
    if "Traceback" in outcome.stderr:
        problems.append("traceback on stderr")
    after = _snapshot(root)
    outside = {
        path
        for path in after.keys() | before.keys()
        if path != "out" and not path.startswith("out/") and after.get(path) != before.get(path)
    }
    if outside:
        problems.append(f"written outside OUT: {sorted(outside)[:3]}")
    if outcome.code in (2, 3):
        lines = [line for line in outcome.stderr.splitlines() if "error:" in line]
        if len(lines) != 1 or not lines[0].startswith("lumbarssl prepare: error: "):
            problems.append(f"error message not one line: {outcome.stderr[-300:]!r}")
        if (out / "prepare_meta.json").exists():
            problems.append("failed run left a prepare_meta.json")
    if outcome.code == 0:
        problems.extend(_check_output(base, out, outcome))
    return problems


def _check_output(base: Base, out: Path, outcome: Outcome) -> list[str]:
    problems = []
    try:
        found = products(out)
        skipped = list(csv.DictReader(io.StringIO((out / "skipped.csv").read_text())))
    except Exception as exc:
        return [f"completed output unreadable: {type(exc).__name__}: {exc}"]
    for row in skipped:
        outcome.skips[row["reason"]] = outcome.skips.get(row["reason"], 0) + 1
    if outcome.skips.get("internal_error"):
        problems.append("internal_error skip (an unexpected exception in a study)")
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".")]
    if leftovers:
        problems.append(f"left in OUT: {leftovers}")
    for key, expected in base.reference.items():
        if found.get(key) != expected:
            problems.append(f"good disc {key} differs from the clean run")
            break
    victim_rows = [key for key in found if key[0] not in GOOD]
    if any(key[0] != VICTIM for key in victim_rows):
        problems.append(f"rows of unknown studies: {victim_rows}")
    return problems
