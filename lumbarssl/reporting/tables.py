"""Table 1 of the paper as Markdown, with confidence intervals and provenance.

The paper's published numbers (Table 1, Sec. 6) are kept here so every report can print
them beside ours.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

from lumbarssl.reporting.provenance import Provenance

#: Table 1's columns, in the paper's order (Sec. 6).
COLUMNS: Final[tuple[str, ...]] = ("R(N)", "R(M)", "R(S)", "Acc", "Bal Acc", "S-N Err")
#: Columns printed as percentages (the paper prints S-N Err as a percentage).
PERCENT_COLUMNS: Final[frozenset[str]] = frozenset({"S-N Err"})

#: Display names of the three configurations compared in Table 1.
ROW_TITLES: Final[dict[str, str]] = {
    "scratch": "ResNet + Classifier (from scratch)",
    "linear_probe": "Linear Probe (Contrastive Encoder)",
    "finetune": "Fine-tuned Disc-Aware ResNet",
}

#: The paper's published Table 1 (real RSNA 2024 data, held-out discs). S-N Err as a fraction.
PAPER_TABLE1: Final[dict[str, dict[str, float]]] = {
    "scratch": {
        "R(N)": 0.812,
        "R(M)": 0.377,
        "R(S)": 0.755,
        "Acc": 0.776,
        "Bal Acc": 0.648,
        "S-N Err": 0.0532,
    },
    "linear_probe": {
        "R(N)": 0.875,
        "R(M)": 0.719,
        "R(S)": 0.564,
        "Acc": 0.848,
        "Bal Acc": 0.719,
        "S-N Err": 0.0532,
    },
    "finetune": {
        "R(N)": 0.912,
        "R(M)": 0.699,
        "R(S)": 0.734,
        "Acc": 0.887,
        "Bal Acc": 0.781,
        "S-N Err": 0.0213,
    },
}

#: A cell: a point estimate, or (point, low, high) for a confidence interval.
Cell = float | Sequence[float]


def _split_cell(cell: Cell) -> tuple[float, float | None, float | None]:
    if isinstance(cell, (int, float)):
        return float(cell), None, None
    values = [float(v) for v in cell]
    if len(values) != 3:
        raise ValueError(f"a cell must be a float or (point, low, high), got {cell!r}")
    return values[0], values[1], values[2]


def format_value(column: str, value: float) -> str:
    """Format one number as the paper does (3 decimals; percentages for ``S-N Err``).

    Args:
        column: Column name from :data:`COLUMNS`.
        value: The number; NaN prints as ``n/a``.

    Returns:
        The formatted string.
    """
    if math.isnan(value):
        return "n/a"
    if column in PERCENT_COLUMNS:
        return f"{100.0 * value:.2f}%"
    return f"{value:.3f}"


def format_cell(column: str, cell: Cell) -> str:
    """Format a point estimate with its interval, e.g. ``0.781 [0.74, 0.82]``.

    Args:
        column: Column name from :data:`COLUMNS`.
        cell: A float, or ``(point, low, high)``.

    Returns:
        The formatted string.
    """
    point, low, high = _split_cell(cell)
    text = format_value(column, point)
    if low is None or high is None:
        return text
    if column in PERCENT_COLUMNS:
        return f"{text} [{100 * low:.1f}, {100 * high:.1f}]"
    return f"{text} [{low:.2f}, {high:.2f}]"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Render a GitHub-flavoured Markdown table.

    Args:
        header: Column titles.
        rows: One sequence of cell strings per row, each as long as ``header``.

    Returns:
        The table, one line per row, ending with a newline.
    """
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"row has {len(row)} cells, header has {len(header)}: {row!r}")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def format_table1(
    rows: Mapping[str, Mapping[str, Cell]],
    provenance: Provenance,
    *,
    include_paper: bool = True,
    ceiling: Mapping[str, Cell] | None = None,
    confidence: float = 0.95,
) -> str:
    """Render Table 1 with our rows, the paper's rows and, for synthetic data, the ceiling.

    Args:
        rows: Row key (``"scratch"``, ``"linear_probe"``, ``"finetune"`` or any name) to a
            mapping from each of :data:`COLUMNS` to a point or ``(point, low, high)``.
        provenance: Data source, profile and seed, printed in the caption.
        include_paper: Add the paper's published rows (real RSNA data) below ours.
        ceiling: Metrics of the Bayes-optimal classifier on synthetic data, if known.
        confidence: Confidence level of the intervals, for the caption.

    Returns:
        Markdown: a caption line naming data, profile and seed, then the table.
    """
    header = ["Model", "Source", *COLUMNS]
    body: list[list[str]] = []
    for key, metrics in rows.items():
        missing = [c for c in COLUMNS if c not in metrics]
        if missing:
            raise ValueError(f"row {key!r} lacks columns {missing}")
        title = ROW_TITLES.get(key, key)
        body.append(
            [title, f"ours ({provenance.data_label})"]
            + [format_cell(c, metrics[c]) for c in COLUMNS]
        )
    if ceiling is not None:
        body.append(
            ["Bayes-optimal ceiling", "synthetic truth"]
            + [format_cell(c, ceiling[c]) if c in ceiling else "—" for c in COLUMNS]
        )
    if include_paper:
        for key, metrics in PAPER_TABLE1.items():
            if key in rows:
                body.append(
                    [ROW_TITLES[key], "paper (real RSNA)"]
                    + [format_value(c, metrics[c]) for c in COLUMNS]
                )
    caption = (
        f"Table 1 — {provenance.caption()}. Ours: point estimate "
        f"[{100 * confidence:.0f}% bootstrap CI] on held-out discs."
    )
    return caption + "\n\n" + markdown_table(header, body)


#: Columns of :func:`format_calibration_table`.
CALIBRATION_COLUMNS: Final[tuple[str, ...]] = (
    "Model",
    "Calibration",
    "Bal Acc raw",
    "Bal Acc calibrated",
    "Grades changed",
    "RSNA spinal raw",
    "RSNA spinal calibrated",
    "RSNA mean raw",
    "RSNA mean calibrated",
)


def format_calibration_table(reports: Mapping[str, Mapping[str, Any]]) -> str:
    """Render the calibrated-vs-raw comparison of fine-tuning reports as Markdown.

    Each row is one ``report_test.json`` of the fine-tuning stage (or of ``evaluate``): its
    balanced accuracy with interval and its RSNA spinal log loss and mean score, before
    (``table1``, ``rsna``) and after (``calibrated``) the calibration map fitted on the
    validation split, and the share of discs whose grade the map changes. A report without a
    calibration prints ``—`` in the calibrated cells.

    Args:
        reports: Row key (e.g. ``"finetune"``) to a report with ``table1``, ``rsna`` and,
            optionally, ``calibration`` and ``calibrated``.

    Returns:
        The table, ending with a newline.
    """
    body: list[list[str]] = []
    for key, report in reports.items():
        table1 = report["table1"]
        rsna = report["rsna"]
        calibrated = report.get("calibrated")
        calibration = report.get("calibration")
        row = [ROW_TITLES.get(key, key)]
        if isinstance(calibrated, Mapping) and isinstance(calibration, Mapping):
            after_table = calibrated["table1"]
            after_rsna = calibrated["rsna"]
            row += [
                str(calibration["method"]),
                format_cell("Bal Acc", table1["Bal Acc"]),
                format_cell("Bal Acc", after_table["Bal Acc"]),
                f"{100.0 * float(calibrated['argmax_change_rate']):.1f}%",
                f"{float(rsna['spinal']):.3f}",
                f"{float(after_rsna['spinal']):.3f}",
                f"{float(rsna['score']):.3f}",
                f"{float(after_rsna['score']):.3f}",
            ]
        else:
            row += [
                "none",
                format_cell("Bal Acc", table1["Bal Acc"]),
                "—",
                "—",
                f"{float(rsna['spinal']):.3f}",
                "—",
                f"{float(rsna['score']):.3f}",
                "—",
            ]
        body.append(row)
    return markdown_table(CALIBRATION_COLUMNS, body)
