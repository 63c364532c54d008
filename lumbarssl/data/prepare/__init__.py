"""``lumbarssl prepare``: an RSNA directory → the ROI cache that training reads.

For every usable disc of :func:`~lumbarssl.data.index.read_index` the annotated slice is
decoded once, the paper's ROI is cut (:func:`~lumbarssl.data.roi.extract_roi`, Sec. 3.1, 4.1)
and saved as a PNG and as a row of ``rois.npy``; optionally ROIs at the same ``(x, y)`` on the
neighbouring slices (``rois_multislice.npy``), and the 2.5D localizer input of each annotated
slice (:func:`~lumbarssl.data.roi.localizer_input`, Sec. 4.5). Training then never decodes
DICOM. The output layout is described in :mod:`lumbarssl.data.cache`.

Work is grouped by study (one task per study, ``workers`` processes). Inside a study, the
headers of each needed series are read once to order it (only the few elements needed, see
:func:`~lumbarssl.data.dicom.open_series`), and the needed slices (annotated ones, their
neighbours, the localizer's ±1) are decoded one at a time, each once, and cut into every ROI
and localizer channel asked of it. A worker sends back only a row count: each finished study
is appended, as one record, to its process's log in ``OUT_DIR/.partial/`` (one write per study,
no file created per study), which the parent reads once to assemble the final files. Those
are each replaced atomically, and ``prepare_meta.json`` is written last. An
interrupted run therefore leaves no ``prepare_meta.json``; a record cut short by the
interruption is ignored, and running the same command again only processes the studies
without a complete record.

Normalisation: every slice is min-max normalised on its own to [0, 1] and stored as uint8,
for ROIs and localizer channels alike.

The package splits this by job: the settings and result types
(:mod:`lumbarssl.data.prepare.config`), the slice extraction
(:mod:`lumbarssl.data.prepare.extract`, all a Dataset needs), the binary journal of finished
studies (:mod:`lumbarssl.data.prepare.journal`) and the process pool that writes the cache
(:mod:`lumbarssl.data.prepare.writer`). The
writer is imported on first use of :func:`prepare_cache`, so importing this package (or a
Dataset) loads no process pool.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lumbarssl.data.prepare.config import (
    CACHE_FORMAT_VERSION,
    PrepareConfig,
    PrepareResult,
    format_summary,
)
from lumbarssl.data.prepare.study import prepare_in_memory

if TYPE_CHECKING:
    from lumbarssl.data.prepare.writer import prepare_cache

__all__ = [
    "CACHE_FORMAT_VERSION",
    "PrepareConfig",
    "PrepareResult",
    "format_summary",
    "prepare_cache",
    "prepare_in_memory",
]


def __getattr__(name: str) -> Any:
    if name == "prepare_cache":
        value = importlib.import_module("lumbarssl.data.prepare.writer").prepare_cache
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
