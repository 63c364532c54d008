"""Deprecated alias of :mod:`lumbarssl.synthetic`, kept for one release.

The synthetic generator moved to its own top-level package. Importing this module, or any of
its submodules (``lumbarssl.data.synthetic.config`` ...), warns with a
:class:`DeprecationWarning` and gives the very module objects of :mod:`lumbarssl.synthetic`,
so classes compare equal and ``isinstance`` checks hold across both names.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType
from typing import Any

_OLD = __name__
_NEW = "lumbarssl.synthetic"

warnings.warn(
    f"{_OLD} is deprecated and will be removed in the next release; import {_NEW} instead",
    DeprecationWarning,
    stacklevel=2,
)

#: An empty search path makes this module a package: submodules come from the finder below.
__path__: list[str] = []


class _AliasLoader(importlib.abc.Loader):
    """Hands out the already imported module of the new name."""

    def __init__(self, target: str) -> None:
        self._target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(self._target)

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the module was executed under its new name."""


class _AliasFinder(importlib.abc.MetaPathFinder):
    """Maps ``lumbarssl.data.synthetic.X`` to ``lumbarssl.synthetic.X``."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith(_OLD + "."):
            return None
        new = _NEW + fullname[len(_OLD) :]
        if importlib.util.find_spec(new) is None:
            return None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(new))


if not any(type(finder).__qualname__ == "_AliasFinder" for finder in sys.meta_path):
    sys.meta_path.insert(0, _AliasFinder())


def __getattr__(name: str) -> Any:
    module = importlib.import_module(_NEW)
    try:
        return getattr(module, name)
    except AttributeError:
        pass
    try:
        return importlib.import_module(f"{_NEW}.{name}")
    except ModuleNotFoundError:
        raise AttributeError(f"module {_OLD!r} has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted(set(dir(importlib.import_module(_NEW))) | set(globals()))
