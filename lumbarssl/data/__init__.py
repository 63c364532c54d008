"""Reading the RSNA 2024 layout, ROI caches and datasets.

The synthetic stand-in for the RSNA data is :mod:`lumbarssl.synthetic`
(``lumbarssl.data.synthetic`` is a deprecated alias of it).

The datasets (torch, torchvision) and the splits (scikit-learn) are imported on first use, so
``lumbarssl prepare`` and its worker processes start without loading those libraries; so is
the writer of the cache (:func:`prepare_cache`, a process pool), so a Dataset never loads it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lumbarssl.data.cache import DiscTable, IncompleteCacheError, PreparedCache, read_disc_table
from lumbarssl.data.constants import LEVELS, SEVERITIES, SEVERITY_TO_LABEL
from lumbarssl.data.dicom import (
    DicomReadError,
    DicomSeries,
    LazySeries,
    MissingDecoderError,
    SeriesGeometry,
    SeriesGeometryError,
    SliceHeader,
    open_series,
    read_header,
    read_series,
    read_series_geometry,
    read_slice,
)
from lumbarssl.data.index import DiscIndex, DiscRecord, read_index
from lumbarssl.data.prepare.config import PrepareConfig, PrepareResult, format_summary
from lumbarssl.data.prepare.study import prepare_in_memory
from lumbarssl.data.roi import (
    LOCALIZER_SIZE,
    ROI_SIZE,
    crop_centered,
    extract_roi,
    intensity_range,
    is_inside,
    localizer_channel,
    localizer_input,
    normalize_slice,
    round_coordinate,
    to_uint8,
)
from lumbarssl.data.skips import OnError, RSNADataError, Skip, SkipReason

if TYPE_CHECKING:
    from lumbarssl.data.datasets import (
        DiscDatasetConfig,
        DiscROIDataset,
        LocalizerDataset,
        Mode,
        SeriesLocalizerDataset,
    )
    from lumbarssl.data.prepare.writer import prepare_cache
    from lumbarssl.data.recipes import LocalizerRecipe, RoiRecipe
    from lumbarssl.data.splits import (
        Splits,
        disc_level_split,
        localizer_splits,
        make_splits,
        study_level_split,
        train_val_test_split,
    )

_LAZY = {
    "DiscDatasetConfig": "lumbarssl.data.datasets",
    "DiscROIDataset": "lumbarssl.data.datasets",
    "LocalizerDataset": "lumbarssl.data.datasets",
    "Mode": "lumbarssl.data.datasets",
    "prepare_cache": "lumbarssl.data.prepare.writer",
    "Splits": "lumbarssl.data.splits",
    "SeriesLocalizerDataset": "lumbarssl.data.datasets",
    "LocalizerRecipe": "lumbarssl.data.recipes",
    "RoiRecipe": "lumbarssl.data.recipes",
    "disc_level_split": "lumbarssl.data.splits",
    "localizer_splits": "lumbarssl.data.splits",
    "make_splits": "lumbarssl.data.splits",
    "study_level_split": "lumbarssl.data.splits",
    "train_val_test_split": "lumbarssl.data.splits",
}

__all__ = [
    "LEVELS",
    "LOCALIZER_SIZE",
    "ROI_SIZE",
    "SEVERITIES",
    "SEVERITY_TO_LABEL",
    "DicomReadError",
    "DicomSeries",
    "DiscDatasetConfig",
    "DiscIndex",
    "DiscROIDataset",
    "DiscRecord",
    "DiscTable",
    "IncompleteCacheError",
    "LazySeries",
    "LocalizerDataset",
    "LocalizerRecipe",
    "MissingDecoderError",
    "Mode",
    "OnError",
    "PrepareConfig",
    "PrepareResult",
    "PreparedCache",
    "RSNADataError",
    "RoiRecipe",
    "SeriesGeometry",
    "SeriesGeometryError",
    "SeriesLocalizerDataset",
    "Skip",
    "SkipReason",
    "SliceHeader",
    "Splits",
    "crop_centered",
    "disc_level_split",
    "extract_roi",
    "format_summary",
    "intensity_range",
    "is_inside",
    "localizer_channel",
    "localizer_input",
    "localizer_splits",
    "make_splits",
    "normalize_slice",
    "open_series",
    "prepare_cache",
    "prepare_in_memory",
    "read_disc_table",
    "read_header",
    "read_index",
    "read_series",
    "read_series_geometry",
    "read_slice",
    "round_coordinate",
    "study_level_split",
    "to_uint8",
    "train_val_test_split",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
