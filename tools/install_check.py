"""Build the wheel, install it into a clean venv at the lowest declared versions, and run it.

``make install-check`` (part of ``make test``) runs this with the project venv's Python::

    python tools/install_check.py --tests tests/test_metrics_rsna.py ...

Steps, each timed:

1. ``pip wheel --no-deps .``: the wheel, built in an isolated environment from
   ``[build-system]`` alone (after removing setuptools' scratch folder ``build/``); its
   ``lumbarssl/**/*.py`` must be exactly the source tree's, and ``py.typed`` must be in it.
2. A new venv with nothing in it but the PyTorch pair of ``requirements/torch.txt``. When the
   running venv holds exactly that pair, its files are hard-linked (copied across file
   systems) instead of unpacking about 5 GB again; otherwise pip installs the pair.
3. ``pip install WHEEL[test]`` under constraints that pin every other dependency in
   ``[project] dependencies`` and the ``test`` extra to its **lower bound** (read from
   pyproject.toml, so a bound that is raised or lowered is what gets tested), then
   ``pip check``.
4. From outside the source tree: ``lumbarssl --help``, a tiny ``lumbarssl synth`` (2 studies of
   128-px images) whose files are checked, and the given test files with that venv's pytest,
   importing the installed package, not the source.

Exit status 0 when all pass; the first failing step stops the run with its output.
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata as md
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the copy pip carries
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
TORCH_PAIR = ("torch", "torchvision")
_PIN = re.compile(r"^\s*([A-Za-z0-9_.-]+)\s*==\s*([^\s;#]+)")
_LOWER = re.compile(r"^\s*([A-Za-z0-9_.-]+)\s*(?:\[[^\]]*\])?\s*>=\s*([^\s,;]+)\s*$")


def _name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def torch_pins(path: Path) -> dict[str, str]:
    """``{name: version}`` of the ``name==version`` lines of a requirements file."""
    pins: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = _PIN.match(line)
        if match:
            pins[_name(match.group(1))] = match.group(2)
    return pins


def lower_bounds(pyproject: Path, extras: Iterable[str] = ("test",)) -> dict[str, str]:
    """``{name: lower bound}`` of the runtime dependencies and ``extras``, less the PyTorch pair.

    Every such requirement must be a plain ``name>=version``: a bound that cannot be pinned
    cannot be tested, so anything else is an error.
    """
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += project["optional-dependencies"][extra]
    bounds: dict[str, str] = {}
    for requirement in requirements:
        match = _LOWER.match(requirement)
        if match is None:
            if requirement.startswith("lumbarssl["):
                continue
            sys.exit(f"pyproject.toml: {requirement!r} is not 'name>=version'; cannot pin it")
        name = _name(match.group(1))
        if name not in TORCH_PAIR:
            bounds[name] = match.group(2)
    return bounds


def _run(cmd: Sequence[str | Path], *, cwd: Path, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-6000:] + proc.stderr[-6000:])
        sys.exit(f"install-check: failed ({proc.returncode}): {' '.join(map(str, cmd))}")
    return proc.stdout


def _step(label: str, started: float) -> float:
    now = time.monotonic()
    print(f"install-check: {label} ({now - started:.1f} s)", flush=True)
    return now


def check_wheel_contents(wheel: Path) -> None:
    """Exit unless the wheel's ``lumbarssl`` modules are the source tree's, ``py.typed`` too."""
    with zipfile.ZipFile(wheel) as zf:
        in_wheel = {n for n in zf.namelist() if n.startswith("lumbarssl/")}
    source = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "lumbarssl").rglob("*.py")
        if "__pycache__" not in p.parts
    }
    missing = sorted(source - in_wheel)
    if missing or "lumbarssl/py.typed" not in in_wheel:
        sys.exit(f"install-check: {wheel.name} lacks {missing or ['lumbarssl/py.typed']}")
    stale = sorted(n for n in in_wheel - source if n.endswith(".py"))
    if stale:
        sys.exit(f"install-check: {wheel.name} holds modules the source tree has not: {stale}")


def _closure(names: Iterable[str]) -> list[md.Distribution]:
    """The installed distributions ``names`` need (markers evaluated, extras not followed)."""
    from packaging.requirements import Requirement

    seen: dict[str, md.Distribution] = {}
    todo = list(names)
    while todo:
        name = _name(todo.pop())
        if name in seen:
            continue
        seen[name] = md.distribution(name)
        for spec in seen[name].requires or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(seen.values())


def link_torch_pair(site: Path, pins: dict[str, str]) -> bool:
    """Hard-link the running venv's PyTorch pair (and what it needs) into ``site``.

    Returns:
        ``False`` (nothing done) unless the running venv holds exactly the pinned versions.
    """
    try:
        if any(md.version(name) != pins[name] for name in TORCH_PAIR):
            return False
        dists = _closure(TORCH_PAIR)
    except (md.PackageNotFoundError, KeyError, ImportError):
        return False
    present = {_name(p.name.split("-")[0]) for p in site.glob("*.dist-info")}  # pip, setuptools
    for dist in dists:
        if _name(dist.metadata["Name"]) in present:
            continue
        base = Path(str(dist.locate_file("")))
        for rel in dist.files or []:
            if rel.parts and rel.parts[0] == "..":  # console scripts in bin/: not needed
                continue
            src, dst = base / rel, site / rel
            if not src.is_file():
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)
    return True


def check_synth(out: Path) -> None:
    """Exit unless ``out`` holds a 2-study RSNA-layout dataset."""
    with (out / "train.csv").open(newline="", encoding="utf-8") as fh:
        studies = [row["study_id"] for row in csv.DictReader(fh)]
    images = list((out / "train_images").rglob("*.dcm"))
    if len(studies) != 2 or len(images) < 2 or not (out / "synthetic_meta.json").is_file():
        sys.exit(f"install-check: synth wrote {len(studies)} studies, {len(images)} DICOM files")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the check; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable, help="Python that makes the venv")
    parser.add_argument("--tests", nargs="*", default=[], help="test files to run there")
    parser.add_argument("--keep", type=Path, help="work here and keep it (default: a temp dir)")
    args = parser.parse_args(argv)

    start = time.monotonic()
    work = args.keep or Path(tempfile.mkdtemp(prefix="lumbarssl-install-check-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    pip = ["-m", "pip", "--disable-pip-version-check", "-q"]
    try:
        t = start
        dist = work / "dist"
        # setuptools builds in build/ and keeps what it finds there: a module deleted from the
        # source would still reach the wheel.
        shutil.rmtree(ROOT / "build", ignore_errors=True)
        _run([sys.executable, *pip, "wheel", "--no-deps", "-w", dist, ROOT], cwd=work, env=env)
        (wheel,) = dist.glob("lumbarssl-*.whl")
        check_wheel_contents(wheel)
        t = _step(f"built {wheel.name}", t)

        venv = work / "venv"
        _run([args.python, "-m", "venv", venv], cwd=work, env=env)
        vpy = venv / "bin" / "python"
        site = Path(
            _run(
                [vpy, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                cwd=work,
                env=env,
            ).strip()
        )
        pins = torch_pins(ROOT / "requirements" / "torch.txt")
        if link_torch_pair(site, pins):
            how = "linked from this venv"
        else:
            _run(
                [vpy, *pip, "install", "-r", ROOT / "requirements" / "torch.txt"], cwd=work, env=env
            )
            how = "installed by pip"
        t = _step(
            f"clean venv with torch {pins['torch']} / torchvision {pins['torchvision']} ({how})", t
        )

        bounds = lower_bounds(ROOT / "pyproject.toml")
        constraints = work / "constraints.txt"
        constraints.write_text(
            "".join(f"{n}=={v}\n" for n, v in {**pins, **bounds}.items()), encoding="utf-8"
        )
        _run([vpy, *pip, "install", "-c", constraints, f"{wheel}[test]"], cwd=work, env=env)
        _run([vpy, *pip, "check"], cwd=work, env=env)
        installed = json.loads(
            _run(
                [
                    vpy,
                    "-c",
                    "import json, importlib.metadata as m, sys; print(json.dumps("
                    "{n: m.version(n) for n in sys.argv[1:]}))",
                    *bounds,
                ],
                cwd=work,
                env=env,
            )
        )
        from packaging.version import Version

        wrong = {n: v for n, v in installed.items() if Version(v) != Version(bounds[n])}
        if wrong:
            sys.exit(f"install-check: not at the lower bounds {bounds}: {wrong}")
        t = _step(
            "installed the wheel at the lower bounds: "
            + ", ".join(f"{n} {v}" for n, v in sorted(bounds.items())),
            t,
        )

        where = _run(
            [vpy, "-c", "import lumbarssl; print(lumbarssl.__file__)"], cwd=work, env=env
        ).strip()
        if not where.startswith(str(site)):
            sys.exit(f"install-check: imported lumbarssl from {where}, not from {site}")
        exe = venv / "bin" / "lumbarssl"
        if "synth" not in _run([exe, "--help"], cwd=work, env=env):
            sys.exit("install-check: `lumbarssl --help` does not list synth")
        tiny = work / "tiny.json"  # 128-px images: coarse pixels so that they span the FOV
        tiny.write_text(
            json.dumps(
                {
                    "image_size_range": [128, 128],
                    "pixel_spacing_range": [1.8, 2.6],
                    "slices_range": [9, 9],
                }
            ),
            encoding="utf-8",
        )
        out = work / "synth"
        _run([exe, "synth", out, "--studies", "2", "--config", tiny, "--quiet"], cwd=work, env=env)
        check_synth(out)
        t = _step("`lumbarssl --help` and a 2-study `lumbarssl synth` ran", t)

        if args.tests:
            tests = [str((ROOT / name).resolve()) for name in args.tests]
            print(
                _run(
                    [venv / "bin" / "pytest", "-q", "-p", "no:cacheprovider", *tests],
                    cwd=work,
                    env=env,
                )
                .strip()
                .splitlines()[-1]
            )
            t = _step(f"{len(tests)} test files passed there", t)
        _step("install-check passed, total", start)
        return 0
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
