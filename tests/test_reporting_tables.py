from __future__ import annotations

import json
import math

import pytest

from lumbarssl.reporting import (
    COLUMNS,
    PAPER_TABLE1,
    Provenance,
    format_cell,
    format_table1,
    markdown_table,
)


def _row(value: float) -> dict[str, tuple[float, float, float]]:
    return dict.fromkeys(COLUMNS, (value, value - 0.05, value + 0.05))


def test_caption_names_data_profile_and_seed() -> None:
    prov = Provenance(data_source="synthetic", profile="quick", seed=7)
    text = format_table1({"finetune": _row(0.5)}, prov)
    first_line = text.splitlines()[0]
    assert "synthetic" in first_line
    assert "quick" in first_line
    assert "seed: 7" in first_line


def test_paper_rows_printed_only_for_rows_we_report() -> None:
    prov = Provenance(data_source="real", profile="paper", seed=0)
    text = format_table1({"finetune": _row(0.5)}, prov)
    assert "0.781" in text  # the paper's fine-tuned balanced accuracy
    assert "2.13%" in text  # the paper's S-N error
    assert "0.648" not in text  # the scratch row was not reported by us


def test_percent_and_interval_formatting_by_hand() -> None:
    assert format_cell("S-N Err", (0.0213, 0.0, 0.05)) == "2.13% [0.0, 5.0]"
    assert format_cell("Bal Acc", (0.7811, 0.7402, 0.8249)) == "0.781 [0.74, 0.82]"
    assert format_cell("Acc", 0.5) == "0.500"
    assert format_cell("R(S)", math.nan) == "n/a"


def test_table_has_one_line_per_row_plus_header() -> None:
    prov = Provenance(data_source="synthetic", profile="smoke", seed=0)
    rows = {"scratch": _row(0.4), "linear_probe": _row(0.5), "finetune": _row(0.6)}
    ceiling = {"Bal Acc": 0.87, "S-N Err": 0.0}
    text = format_table1(rows, prov, ceiling=ceiling)
    table_lines = [line for line in text.splitlines() if line.startswith("|")]
    # header + separator + 3 ours + ceiling + 3 paper rows
    assert len(table_lines) == 2 + 3 + 1 + 3
    assert all(line.count("|") == len(COLUMNS) + 3 for line in table_lines)


def test_missing_column_is_named() -> None:
    prov = Provenance(data_source="synthetic", profile="smoke", seed=0)
    bad = {c: 0.5 for c in COLUMNS if c != "R(M)"}
    with pytest.raises(ValueError, match=r"lacks columns \['R\(M\)'\]"):
        format_table1({"scratch": bad}, prov)


def test_markdown_rejects_ragged_rows() -> None:
    with pytest.raises(ValueError, match="row has 1 cells, header has 2"):
        markdown_table(["a", "b"], [["x"]])


def test_provenance_round_trips_and_rejects_unknown_source() -> None:
    prov = Provenance(data_source="synthetic", profile="quick", seed=3, device="cuda")
    assert Provenance.from_dict(json.loads(json.dumps(prov.to_dict()))) == prov
    with pytest.raises(ValueError, match="'imagenet'"):
        Provenance(data_source="imagenet", profile="x", seed=0)  # type: ignore[arg-type]


def test_paper_table_rows_are_internally_consistent() -> None:
    # Balanced accuracy is the mean of the three recalls in the published table (to rounding).
    for metrics in PAPER_TABLE1.values():
        mean_recall = (metrics["R(N)"] + metrics["R(M)"] + metrics["R(S)"]) / 3
        assert mean_recall == pytest.approx(metrics["Bal Acc"], abs=2e-3)
