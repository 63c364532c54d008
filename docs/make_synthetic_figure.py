"""Regenerate docs/_static/synthetic_figure1.png (run from the repository root).

Draws the first study of the default synthetic dataset (seed 0) that has a Moderate and a Severe
disc and all five labels and coordinates, so the figure shows every grade.

    python docs/make_synthetic_figure.py
"""

from __future__ import annotations

from pathlib import Path

from lumbarssl.layout import SEVERITY_TO_LABEL
from lumbarssl.synthetic import SyntheticConfig, plot_figure1, sample_study_plan

OUT = Path(__file__).resolve().parent / "_static" / "synthetic_figure1.png"


def main() -> None:
    config = SyntheticConfig(seed=0)
    wanted = {SEVERITY_TO_LABEL["Moderate"], SEVERITY_TO_LABEL["Severe"]}
    for index in range(1000):
        plan = sample_study_plan(config, index)
        complete = all(d.coordinate and d.recorded_grade is not None for d in plan.discs)
        if complete and wanted <= {d.recorded_grade for d in plan.discs}:
            break
    plot_figure1(OUT, config=config, study_index=index, dpi=80)
    print(f"wrote {OUT} (study index {index}, {OUT.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
