"""Reports: Table 1 with confidence intervals and provenance, and the paper's figures."""

from lumbarssl.reporting.provenance import DataSource, Provenance
from lumbarssl.reporting.tables import (
    CALIBRATION_COLUMNS,
    COLUMNS,
    PAPER_TABLE1,
    ROW_TITLES,
    format_calibration_table,
    format_cell,
    format_table1,
    format_value,
    markdown_table,
)

__all__ = [
    "CALIBRATION_COLUMNS",
    "COLUMNS",
    "PAPER_TABLE1",
    "ROW_TITLES",
    "DataSource",
    "Provenance",
    "format_calibration_table",
    "format_cell",
    "format_table1",
    "format_value",
    "markdown_table",
]
