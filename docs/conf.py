"""Sphinx configuration for lumbarssl."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import lumbarssl  # noqa: E402

project = "lumbarssl"
author = "lumbarssl contributors"
copyright = "2026, lumbarssl contributors"
release = lumbarssl.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    # MathJax 3 served from _static/mathjax instead of a CDN: the pages must typeset equations on
    # air-gapped networks. The extension sets ``mathjax_path`` and copies the files after the build.
    "sphinx-mathjax-offline",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
]

autosummary_generate = True
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_typehints = "description"
autodoc_member_order = "bysource"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# The build machines have no internet, so intersphinx reads inventories kept in the repository
# (regenerate with docs/_inventories/build_inventories.py); links still point at the real sites.
_INV = Path(__file__).resolve().parent / "_inventories"
intersphinx_mapping = {
    "python": ("https://docs.python.org/3", str(_INV / "python.inv")),
    "torch": ("https://docs.pytorch.org/docs/stable", str(_INV / "torch.inv")),
    "numpy": ("https://numpy.org/doc/stable", str(_INV / "numpy.inv")),
}
nitpicky = False

templates_path = ["_templates"]
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
html_theme = "furo"
html_title = f"lumbarssl {release}"
html_static_path: list[str] = []
