"""Check that built HTML loads nothing from the network (the pages must work air-gapped).

Usage: ``python docs/check_offline.py docs/_build/html`` (``make docs-offline`` runs it after
``make docs``). Exits 1 and lists every problem when

* a page loads a script, stylesheet, image, frame or other resource from an ``http://``,
  ``https://`` or protocol-relative ``//host`` address (ordinary ``<a href>`` links are fine:
  following them is the reader's choice, and nothing on the page depends on them);
* a stylesheet pulls a font or image with ``url(https://...)`` or ``@import`` from the network;
* a page's local script or stylesheet is missing from the build (e.g. MathJax not copied);
* a page with equations (``class="math"``) loads no local MathJax, or no page has equations at
  all (then the check would prove nothing about MathJax).

``tests/test_docs_offline.py`` builds a small page with ``docs/conf.py`` and runs the same checks.
"""

from __future__ import annotations

import re
import sys
from html.parser import HTMLParser
from pathlib import Path

# (tag, attribute) pairs whose URL the browser fetches while rendering the page.
_LOADED = {
    ("script", "src"),
    ("link", "href"),
    ("img", "src"),
    ("iframe", "src"),
    ("source", "src"),
    ("video", "src"),
    ("audio", "src"),
    ("embed", "src"),
    ("object", "data"),
}
_NETWORK = re.compile(r"^\s*(?:[a-z][a-z0-9+.-]*:)?//", re.IGNORECASE)
_LOCAL_SCHEMES = re.compile(r"^\s*(?:data|file|blob|about|javascript|mailto):", re.IGNORECASE)
_CSS_URL = re.compile(r"""(?:url\(\s*|@import\s+)["']?([^"')\s;]+)""", re.IGNORECASE)


def is_network_url(url: str) -> bool:
    """Whether the browser would fetch ``url`` from another host (``http(s)://``, ``//host``)."""
    return bool(_NETWORK.match(url)) and not url.strip().lower().startswith("file:")


class _Resources(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.loaded: list[tuple[str, str]] = []  # (tag, url)
        self.has_math = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value is None:
                continue
            if (tag, name) in _LOADED:
                self.loaded.append((tag, value))
            if name == "class" and "math" in value.split():
                self.has_math = True


def check_html_dir(html_dir: Path, *, require_math: bool = True) -> list[str]:
    """Return one message per problem found in the built HTML under ``html_dir``.

    Args:
        html_dir: Output folder of ``sphinx -b html``.
        require_math: Report a problem when no page has an equation.

    Returns:
        Problems as ``"<file>: <what>"`` lines; empty when the build works offline.
    """
    problems: list[str] = []
    any_math = False
    pages = sorted(html_dir.rglob("*.html"))
    if not pages:
        return [f"{html_dir}: no HTML pages; build the docs first (make docs)"]
    for page in pages:
        rel = page.relative_to(html_dir)
        parser = _Resources()
        parser.feed(page.read_text(encoding="utf-8"))
        local_mathjax = False
        for tag, url in parser.loaded:
            if is_network_url(url):
                problems.append(f"{rel}: <{tag}> loads {url} from the network")
                continue
            if _LOCAL_SCHEMES.match(url) or tag not in ("script", "link"):
                continue
            target = (page.parent / url.split("#")[0].split("?")[0]).resolve()
            if tag == "script" or url.split("?")[0].endswith(".css"):
                if not target.is_file():
                    problems.append(f"{rel}: <{tag}> {url} is missing from the build")
                elif tag == "script" and "mathjax" in url.lower():
                    local_mathjax = True
        if parser.has_math:
            any_math = True
            if not local_mathjax:
                problems.append(f"{rel}: has equations but loads no local MathJax script")
    for css in sorted(html_dir.rglob("*.css")):
        text = css.read_text(encoding="utf-8", errors="replace")
        for url in _CSS_URL.findall(text):
            if is_network_url(url):
                problems.append(f"{css.relative_to(html_dir)}: loads {url} from the network")
    if require_math and not any_math:
        problems.append(f"{html_dir}: no page has an equation, so MathJax was not checked")
    return problems


def main(argv: list[str] | None = None) -> int:
    """Check the folder given on the command line; print problems; 0 if none, else 1."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python docs/check_offline.py HTML_DIR", file=sys.stderr)
        return 2
    html_dir = Path(args[0])
    problems = check_html_dir(html_dir)
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        print(
            f"{len(problems)} problem(s): the docs in {html_dir} need a network; serve every "
            "script and stylesheet from _static (see docs/conf.py)",
            file=sys.stderr,
        )
        return 1
    print(f"{html_dir}: no page loads anything from the network; equations use local MathJax")
    return 0


if __name__ == "__main__":
    sys.exit(main())
