"""The import layers that the import-linter contracts in pyproject.toml do not cover at run time.

``lint-imports`` (``make lint``) checks the layers statically. These tests check two promises
where they matter, in a fresh interpreter: the bottom layer loads nothing above it, and a
Dataset loads no process pool or journal of ``lumbarssl prepare``.
"""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import lumbarssl
import lumbarssl._core

#: The bottom layer: these may import each other, and nothing else of lumbarssl.
BOTTOM = ("lumbarssl._core", "lumbarssl.errors", "lumbarssl.layout", "lumbarssl.paper")
ROOT = Path(lumbarssl.__file__).parent


def _bottom_modules() -> list[str]:
    core = [f"lumbarssl._core.{m.name}" for m in pkgutil.iter_modules(lumbarssl._core.__path__)]
    return sorted([*BOTTOM, *core])


def _in_bottom(module: str) -> bool:
    return any(module == b or module.startswith(b + ".") for b in BOTTOM)


def _imports(path: Path) -> set[str]:
    """Every lumbarssl module that ``path`` names in an import, wherever the import stands."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            assert node.module is not None
            if node.module == "lumbarssl":  # `from lumbarssl import x` names lumbarssl.x
                found.update(f"lumbarssl.{alias.name}" for alias in node.names)
            else:
                found.add(node.module)
    return {name for name in found if name == "lumbarssl" or name.startswith("lumbarssl.")}


def test_bottom_layer_imports_nothing_else_from_lumbarssl() -> None:
    files = [
        ROOT / "errors.py",
        ROOT / "layout.py",
        ROOT / "paper.py",
        *sorted((ROOT / "_core").glob("*.py")),
    ]
    assert len(files) > 3
    outside = {
        f"{path.relative_to(ROOT.parent)} -> {name}"
        for path in files
        for name in _imports(path)
        if not _in_bottom(name)
    }
    assert not outside
    # errors and paper are leaves: they import nothing of lumbarssl at all.
    assert not _imports(ROOT / "errors.py")
    assert not _imports(ROOT / "paper.py")
    # the RSNA layout's names take only the paper's grades.
    assert _imports(ROOT / "layout.py") == {"lumbarssl.paper"}


def _loaded_after(statement: str) -> set[str]:
    """The lumbarssl modules loaded after ``statement`` (or in its snapshot ``before``)."""
    code = textwrap.dedent(
        f"""
        import sys
        {statement}
        loaded = globals().get("before", sys.modules)  # a statement may take its own snapshot
        print("\\n".join(m for m in loaded if m.startswith("lumbarssl")))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


def test_importing_the_bottom_layer_loads_nothing_above_it() -> None:
    modules = _bottom_modules()
    loaded = _loaded_after("; ".join(f"import {m}" for m in modules))
    assert set(modules) <= loaded
    assert {m for m in loaded if m != "lumbarssl" and not _in_bottom(m)} == set()


def test_a_dataset_loads_no_writer_of_the_cache() -> None:
    # The writer is still one attribute away, under both of its public names.
    loaded = _loaded_after(
        """import lumbarssl.data, lumbarssl.data.datasets
        before = set(sys.modules)
        from lumbarssl.data.prepare.writer import prepare_cache
        assert lumbarssl.data.prepare_cache is lumbarssl.data.prepare.prepare_cache is prepare_cache
        """
    )
    assert "lumbarssl.data.datasets" in loaded
    assert "lumbarssl.data.prepare.extract" in loaded  # what Dataset.from_rsna runs
    assert "lumbarssl.data.prepare.writer" not in loaded
    assert "lumbarssl.data.prepare.journal" not in loaded
