"""Mean ± sd over seeds of the reproduction's comparative claims (``make reproduce-seeds``).

Reads the ``report.json`` of several runs of ``examples/reproduce_paper.py`` (one per seed, same
profile) and prints, for each claim, its value per seed and the mean ± sample sd:

* each Table 1 row's balanced accuracy (disc-level split, and study-level split where run);
* pretraining helps: fine-tuned minus from-scratch balanced accuracy (disc-level split);
* automatic minus annotated grading of the fine-tuned row (study-level split, held-out studies);
* slice selection (CNN+GRU and CSF baseline, exact) and both localizers' RMSE against the truth.

Example::

    python examples/aggregate_seeds.py runs/seed0 runs/seed1 runs/seed2 --out runs/seeds
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

CLAIMS: dict[str, Callable[[dict[str, Any]], float]] = {
    "Bal Acc scratch (disc split)": lambda r: r["table1"]["scratch"]["Bal Acc"][0],
    "Bal Acc linear probe (disc split)": lambda r: r["table1"]["linear_probe"]["Bal Acc"][0],
    "Bal Acc fine-tuned (disc split)": lambda r: r["table1"]["finetune"]["Bal Acc"][0],
    "Bal Acc fine-tuned (study split)": lambda r: r["table1_study_split"]["finetune"]["Bal Acc"][0],
    "pretraining helps: fine-tuned - scratch (disc split)": lambda r: (
        r["table1"]["finetune"]["Bal Acc"][0] - r["table1"]["scratch"]["Bal Acc"][0]
    ),
    "fine-tuned: disc split - study split": lambda r: (
        r["table1"]["finetune"]["Bal Acc"][0] - r["table1_study_split"]["finetune"]["Bal Acc"][0]
    ),
    "Bal Acc annotated (chain studies)": lambda r: r["automatic_chain"]["annotated"]["Bal Acc"][0],
    "Bal Acc automatic (chain studies)": lambda r: r["automatic_chain"]["automatic"]["Bal Acc"][0],
    "automatic - annotated": lambda r: r["automatic_chain"]["difference_bal_acc"][0],
    "slice selector exact": lambda r: r["slice_selection"]["model"]["exact"],
    "CSF baseline exact": lambda r: r["slice_selection"]["csf_baseline"]["exact"],
    "heatmap RMSE vs truth (px)": lambda r: r["localizers"]["heatmap"]["vs_truth"]["rmse_px"],
    "regression RMSE vs truth (px)": lambda r: r["localizers"]["regression (paper)"]["vs_truth"][
        "rmse_px"
    ],
}


def main(argv: list[str] | None = None) -> int:
    """Aggregate the runs and write ``seeds.md`` / ``seeds.json`` under ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="output directories, one per seed")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    reports = [json.loads((run / "report.json").read_text()) for run in args.runs]
    seeds = [r["provenance"]["seed"] for r in reports]
    profiles = {r["provenance"]["profile"] for r in reports}
    rows: dict[str, dict[str, Any]] = {}
    for name, get in CLAIMS.items():
        try:
            values = [float(get(r)) for r in reports]
        except (KeyError, TypeError):
            continue  # a claim the runs do not carry (e.g. no truth on real data)
        sd = statistics.stdev(values) if len(values) > 1 else float("nan")
        rows[name] = {"values": values, "mean": statistics.fmean(values), "sd": sd}
    lines = [
        f"# Comparative claims over seeds {seeds} (profile {', '.join(sorted(profiles))})",
        "",
        "| claim | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± sd |",
        "|---|" + "---|" * (len(seeds) + 1),
    ]
    for name, row in rows.items():
        cells = " | ".join(f"{v:.3f}" for v in row["values"])
        lines.append(f"| {name} | {cells} | {row['mean']:.3f} ± {row['sd']:.3f} |")
    text = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "seeds.md").write_text(text)
    (args.out / "seeds.json").write_text(json.dumps({"seeds": seeds, "claims": rows}, indent=2))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
