"""Fuzz ``lumbarssl prepare``: a few hundred seeded bad CSV/DICOM inputs, run in this process.

Every run must end in a documented way (exit status 0, 2 or 3; no traceback, no
``internal_error`` skip; an error is one line), write nothing outside ``OUT``, and leave the
good studies of the same directory byte-identical to a clean run. The generator and the
checks are in ``tests/_fuzz_prepare.py``; ``benchmarks/fuzz_prepare.py`` runs thousands of
cases with a time limit each.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

import pytest
from _fuzz_prepare import build_base, deadline, generate_case, run_case

#: Cases per run of the suite (``LUMBARSSL_FUZZ_CASES`` overrides), and the seed.
CASES = int(os.environ.get("LUMBARSSL_FUZZ_CASES", "240"))
SEED = int(os.environ.get("LUMBARSSL_FUZZ_SEED", "0"))
#: A case still running after this long is a hang (a FIFO opened for reading never returns).
CASE_TIMEOUT_S = 60


def test_bad_inputs_end_in_documented_ways_and_spare_the_good_studies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = build_base(tmp_path / "base")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # nothing may land in the working directory either
    failures: list[str] = []
    codes: Counter[int | None] = Counter()
    skips: Counter[str] = Counter()
    started = time.perf_counter()
    for number in range(CASES):
        case = generate_case(base, SEED, number, workers_share=0.02)
        try:
            with deadline(CASE_TIMEOUT_S):
                outcome = run_case(base, case, tmp_path / f"case{number}")
        except TimeoutError:
            failures.append(f"case {number} {case.mutations}: hang")
            continue
        codes[outcome.code] += 1
        skips.update(outcome.skips)
        if outcome.problems:
            failures.append(f"case {number} {case.mutations}: {outcome.problems}")
    elapsed = time.perf_counter() - started
    assert list(cwd.iterdir()) == []
    summary = f"{CASES} cases in {elapsed:.1f} s, exit codes {dict(codes)}, skips {dict(skips)}"
    assert not failures, summary + "\n" + "\n".join(failures[:20])
    # The generator reaches every kind of outcome (or it tests less than it claims).
    assert codes[0], summary
    assert codes[2], summary
    for reason in ("corrupt_file", "pixel_size_mismatch", "not_regular_file", "malformed_row"):
        assert skips[reason], f"no {reason} skip: {summary}"
