"""The pieces of tools/install_check.py (``make install-check``) that decide what gets tested."""

from __future__ import annotations

import importlib.util
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("install_check", ROOT / "tools/install_check.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ic = _load()


def _pyproject(tmp_path: Path, deps: list[str], test: list[str]) -> Path:
    path = tmp_path / "pyproject.toml"

    def quote(items: list[str]) -> str:
        return ", ".join(f'"{item}"' for item in items)

    path.write_text(
        f"[project]\nname = 'x'\ndependencies = [{quote(deps)}]\n"
        f"[project.optional-dependencies]\ntest = [{quote(test)}]\ndev = ['x[test]']\n",
        encoding="utf-8",
    )
    return path


def test_lower_bounds_pins_everything_but_the_torch_pair(tmp_path: Path) -> None:
    path = _pyproject(
        tmp_path,
        ["torch>=2.11", "torchvision>=0.26", "numpy>=1.24", "Scikit_Learn[x]>=1.3"],
        ["pytest>=7.4"],
    )
    assert ic.lower_bounds(path) == {"numpy": "1.24", "scikit-learn": "1.3", "pytest": "7.4"}


@pytest.mark.parametrize("spec", ["numpy", "numpy<3", "numpy>=1.24,<3", "numpy~=1.24"])
def test_a_bound_that_cannot_be_pinned_stops_the_check(tmp_path: Path, spec: str) -> None:
    with pytest.raises(SystemExit, match="cannot pin"):
        ic.lower_bounds(_pyproject(tmp_path, [spec], []))


def test_the_projects_bounds_are_all_pinnable() -> None:
    bounds = ic.lower_bounds(ROOT / "pyproject.toml")
    assert {"numpy", "pydicom", "scikit-learn", "scipy", "tqdm", "pillow"} <= set(bounds)
    assert "torch" not in bounds


def test_torch_pins_reads_the_pair(tmp_path: Path) -> None:
    req = tmp_path / "torch.txt"
    req.write_text("# comment\ntorch==2.14.1\ntorchvision == 0.29.1  # pair\n", encoding="utf-8")
    assert ic.torch_pins(req) == {"torch": "2.14.1", "torchvision": "0.29.1"}


def test_a_wheel_missing_a_module_is_refused(tmp_path: Path) -> None:
    sources = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "lumbarssl").rglob("*.py"))
    good, bad = tmp_path / "good.whl", tmp_path / "bad.whl"
    for wheel, names in ((good, sources), (bad, sources[1:])):
        with zipfile.ZipFile(wheel, "w") as zf:
            for name in [*names, "lumbarssl/py.typed"]:
                zf.writestr(name, "")
    ic.check_wheel_contents(good)
    with pytest.raises(SystemExit, match=sources[0]):
        ic.check_wheel_contents(bad)


def test_a_wheel_with_a_stale_module_is_refused(tmp_path: Path) -> None:
    sources = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "lumbarssl").rglob("*.py"))
    wheel = tmp_path / "stale.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name in [*sources, "lumbarssl/py.typed", "lumbarssl/data/removed_module.py"]:
            zf.writestr(name, "")
    with pytest.raises(SystemExit, match="removed_module"):
        ic.check_wheel_contents(wheel)
