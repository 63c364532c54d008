"""Reading the RSNA 2024 layout, the synthetic stand-in, ROI caches and datasets."""

from lumbarssl.data.constants import LEVELS, SEVERITIES, SEVERITY_TO_LABEL

__all__ = ["LEVELS", "SEVERITIES", "SEVERITY_TO_LABEL"]
