"""Names and codes of the RSNA 2024 layout: re-exported from :mod:`lumbarssl.layout`."""

from __future__ import annotations

from lumbarssl.layout import (
    AXIAL_T2,
    CONDITION_SEQUENCE,
    CONDITION_SLUGS,
    CONDITIONS,
    COORDINATE_COLUMNS,
    COORDINATES_CSV,
    IMAGES_DIR,
    LEVEL_SLUGS,
    LEVELS,
    MISSING_LABEL,
    SAGITTAL_T1,
    SAGITTAL_T2,
    SERIES_COLUMNS,
    SERIES_CSV,
    SERIES_DESCRIPTIONS,
    SEVERITIES,
    SEVERITY_TO_LABEL,
    SPINAL_CANAL,
    TRAIN_COLUMNS,
    TRAIN_CSV,
)

__all__ = [
    "AXIAL_T2",
    "CONDITIONS",
    "CONDITION_SEQUENCE",
    "CONDITION_SLUGS",
    "COORDINATES_CSV",
    "COORDINATE_COLUMNS",
    "IMAGES_DIR",
    "LEVELS",
    "LEVEL_SLUGS",
    "MISSING_LABEL",
    "SAGITTAL_T1",
    "SAGITTAL_T2",
    "SERIES_COLUMNS",
    "SERIES_CSV",
    "SERIES_DESCRIPTIONS",
    "SEVERITIES",
    "SEVERITY_TO_LABEL",
    "SPINAL_CANAL",
    "TRAIN_COLUMNS",
    "TRAIN_CSV",
]
