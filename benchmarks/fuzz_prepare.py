"""Fuzz ``lumbarssl prepare`` with thousands of seeded bad CSV/DICOM inputs; print the counts.

The cases and the checks are those of ``tests/test_fuzz_prepare.py`` (``tests/_fuzz_prepare.py``:
two good studies and one mutated victim study per case). Each case runs in a forked child
process with a time limit, so that a hang is counted (and the child killed) instead of
stopping the run. Printed: cases, clean runs (exit 0, with and without skips), clean errors
(exit 2/3, one line), tracebacks (an exception that is not a ``LumbarsslError``, or an
``internal_error`` skip), hangs, wrong outputs (a good study's outputs differ from a clean run,
a file written outside ``OUT``, an error message that is not one line, an inconsistent
output), the exit statuses and the skip reasons::

    python benchmarks/fuzz_prepare.py [--cases 2000] [--seed 1] [--timeout 60]
    python benchmarks/fuzz_prepare.py --case 123 --seed 1   # one case, verbose, in-process

A non-zero exit status means at least one traceback, hang or wrong output.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import cast

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _fuzz_prepare import Base, build_base, generate_case, run_case


def _run_forked(
    base: Base, seed: int, number: int, root: Path, timeout: float, share: float
) -> dict[str, object]:
    """Run one case in a forked child; its outcome as a dict (``hang`` if it timed out)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read)
        code = 0
        try:
            case = generate_case(base, seed, number, workers_share=share)
            outcome = run_case(base, case, root)
            result = {
                "code": outcome.code,
                "problems": outcome.problems,
                "skips": outcome.skips,
                "mutations": case.mutations,
                "error": outcome.error[-2000:],
            }
        except BaseException as exc:  # the harness itself failed
            result = {"code": None, "problems": [f"harness: {exc!r}"], "skips": {}, "mutations": []}
            code = 1
        with os.fdopen(write, "w") as handle:
            json.dump(result, handle)
        os._exit(code)
    os.close(write)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    hung = False
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            hung = True
            break
        ready, _, _ = select.select([read], [], [], left)
        if ready:
            chunk = os.read(read, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    os.close(read)
    if hung:
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    if hung:
        case = generate_case(base, seed, number, workers_share=share)
        return {"code": None, "problems": ["hang"], "skips": {}, "mutations": case.mutations}
    reported: dict[str, object] = json.loads(
        b"".join(chunks)
        or b'{"code": null, "problems": ["child died"], "skips": {}, "mutations": []}'
    )
    return reported


def _kind(result: dict[str, object]) -> str:
    problems = [str(p) for p in result["problems"]]  # type: ignore[attr-defined]
    if any(p == "hang" for p in problems):
        return "hangs"
    if any(p.startswith(("traceback", "internal_error")) for p in problems):
        return "tracebacks"
    if problems:
        return "wrong outputs"
    if result["code"] == 0:
        return "clean runs with skips" if result["skips"] else "clean runs, nothing skipped"
    return "clean errors"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per case")
    parser.add_argument(
        "--workers-share", type=float, default=0.05, help="share of cases run with --workers 2"
    )
    parser.add_argument("--case", type=int, help="run only this case, in this process")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lumbarssl-fuzz-"))
    try:
        base = build_base(work / "base")
        if args.case is not None:
            case = generate_case(base, args.seed, args.case, workers_share=args.workers_share)
            outcome = run_case(base, case, work / "case")
            run = f"on_error={case.on_error} workers={case.workers}"
            print(f"case {args.case}: {case.mutations} {run}")
            print(f"exit {outcome.code}; skips {outcome.skips}; problems {outcome.problems}")
            print(outcome.stderr, outcome.error, sep="\n")
            return 1 if outcome.problems else 0
        kinds: Counter[str] = Counter()
        codes: Counter[str] = Counter()
        skips: Counter[str] = Counter()
        failures: list[str] = []
        started = time.perf_counter()
        for number in range(args.cases):
            root = work / f"case{number}"
            result = _run_forked(base, args.seed, number, root, args.timeout, args.workers_share)
            shutil.rmtree(root, ignore_errors=True)
            kind = _kind(result)
            kinds[kind] += 1
            codes[str(result["code"])] += 1
            skips.update(cast(dict[str, int], result["skips"]))
            if kind in ("hangs", "tracebacks", "wrong outputs"):
                failures.append(f"case {number} {result['mutations']}: {result['problems']}")
        elapsed = time.perf_counter() - started
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"lumbarssl prepare fuzz: seed {args.seed}, {args.cases} cases in {elapsed:.0f} s "
        f"({elapsed / max(args.cases, 1) * 1000:.0f} ms a case), time limit {args.timeout:g} s"
    )
    order = ("clean runs, nothing skipped", "clean runs with skips", "clean errors",
             "tracebacks", "hangs", "wrong outputs")  # fmt: skip
    for kind in order:
        print(f"  {kind:<28} {kinds[kind]:>6}")
    print("  exit statuses:", ", ".join(f"{k}: {v}" for k, v in sorted(codes.items())))
    print("  skips by reason:", ", ".join(f"{k}: {v}" for k, v in sorted(skips.items())))
    for failure in failures[:20]:
        print("  FAIL", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
