"""The docs load nothing from the network: equations are typeset by a MathJax served from _static.

Two parts: the checker (docs/check_offline.py, also run by ``make docs-offline`` on the full
build) against hand-written pages whose verdict is known, and a small Sphinx build that uses the
real ``docs/conf.py`` (``sphinx -c docs``) and must pass that checker, with MathJax's files in it.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _load_checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_offline", DOCS / "check_offline.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


checker = _load_checker()


def _site(tmp_path: Path, body: str, *, css: str = "", files: tuple[str, ...] = ()) -> Path:
    html = tmp_path / "html"
    (html / "_static").mkdir(parents=True)
    for name in files:
        (html / "_static" / name).parent.mkdir(parents=True, exist_ok=True)
        (html / "_static" / name).write_text("// local\n", encoding="utf-8")
    (html / "_static" / "style.css").write_text(css, encoding="utf-8")
    (html / "index.html").write_text(f"<html><head>{body}</head><body></body></html>", "utf-8")
    return html


MATH = '<span class="math notranslate nohighlight">\\(\\tau > 0\\)</span>'
LOCAL_MJ = '<script defer src="_static/mathjax/tex-chtml.js"></script>'


def test_local_mathjax_page_passes(tmp_path: Path) -> None:
    html = _site(tmp_path, LOCAL_MJ + MATH, files=("mathjax/tex-chtml.js",))
    assert checker.check_html_dir(html) == []


@pytest.mark.parametrize(
    "tag",
    [
        '<script src="https://cdn.example.org/mathjax/tex-chtml.js"></script>',
        '<script src="http://cdn.example.org/x.js"></script>',
        '<script src="//cdn.example.org/x.js"></script>',
        '<link rel="stylesheet" href="https://fonts.example.org/css?family=Roboto">',
        '<link rel="preload" href="HTTPS://fonts.example.org/a.woff2">',
        '<img src="https://img.example.org/logo.png">',
    ],
)
def test_network_resource_is_reported(tmp_path: Path, tag: str) -> None:
    html = _site(tmp_path, LOCAL_MJ + MATH + tag, files=("mathjax/tex-chtml.js",))
    problems = checker.check_html_dir(html)
    assert len(problems) == 1
    assert "from the network" in problems[0]
    assert "index.html" in problems[0]


def test_plain_links_and_data_urls_are_not_loads(tmp_path: Path) -> None:
    body = (
        LOCAL_MJ
        + MATH
        + '<a href="https://docs.python.org/3/">Python</a>'
        + '<img src="data:image/png;base64,iVBORw0KGgo=">'
        + '<link rel="next" href="other.html">'
    )
    html = _site(tmp_path, body, files=("mathjax/tex-chtml.js",))
    assert checker.check_html_dir(html) == []


def test_network_url_inside_css_is_reported(tmp_path: Path) -> None:
    css = "@font-face { src: url('https://fonts.example.org/a.woff2'); }\n"
    html = _site(tmp_path, LOCAL_MJ + MATH, css=css, files=("mathjax/tex-chtml.js",))
    assert checker.check_html_dir(html) == [
        "_static/style.css: loads https://fonts.example.org/a.woff2 from the network"
    ]


def test_missing_local_mathjax_file_is_reported(tmp_path: Path) -> None:
    html = _site(tmp_path, LOCAL_MJ + MATH)  # the script tag is there, the file is not
    problems = checker.check_html_dir(html)
    assert any("missing from the build" in p for p in problems)
    assert any("loads no local MathJax" in p for p in problems)


def test_equations_without_mathjax_and_pages_without_equations(tmp_path: Path) -> None:
    no_script = _site(tmp_path / "a", MATH)
    assert checker.check_html_dir(no_script) == [
        "index.html: has equations but loads no local MathJax script"
    ]
    no_math = _site(tmp_path / "b", LOCAL_MJ, files=("mathjax/tex-chtml.js",))
    assert len(checker.check_html_dir(no_math)) == 1
    assert checker.check_html_dir(no_math, require_math=False) == []


def test_docs_conf_builds_pages_that_work_offline(tmp_path: Path) -> None:
    """Sphinx with the project's conf.py: equations use the MathJax copied into _static."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "index.rst").write_text(
        "Offline maths\n=============\n\n"
        "Inline :math:`\\tau > 0` and a display equation:\n\n"
        ".. math::\n\n   \\ell = -\\alpha_y (1 - p_y)^\\gamma \\log p_y\n",
        encoding="utf-8",
    )
    out = tmp_path / "html"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "-q",
            "-b",
            "html",
            "-c",
            str(DOCS),
            str(src),
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert checker.check_html_dir(out) == []
    page = (out / "index.html").read_text(encoding="utf-8")
    assert 'src="_static/mathjax/tex-chtml.js"' in page
    # MathJax itself and the web fonts its CommonHTML output loads, all inside the build.
    mathjax = out / "_static" / "mathjax"
    assert (mathjax / "tex-chtml.js").stat().st_size > 100_000
    assert list((mathjax / "output" / "chtml" / "fonts" / "woff-v2").glob("*.woff"))
