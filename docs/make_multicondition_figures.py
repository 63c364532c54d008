"""Regenerate the three Figure-1-style pictures of ``conditions="all"`` (run from the repo root).

One per sequence: spinal canal stenosis on Sagittal T2, left neural foraminal narrowing on
Sagittal T1, left subarticular stenosis on Axial T2, all of the first study of the default
``conditions="all"`` dataset (seed 0) whose foraminal and subarticular rows on the left have a
Moderate and a Severe grade and all five coordinates, so each picture shows every grade.

    python docs/make_multicondition_figures.py
"""

from __future__ import annotations

from pathlib import Path

from lumbarssl.layout import CONDITIONS, SEVERITY_TO_LABEL
from lumbarssl.synthetic import SyntheticConfig, plot_figure1, sample_study_plan

STATIC = Path(__file__).resolve().parent / "_static"
#: (file name, condition) of the three pictures.
FIGURES = (
    ("synthetic_all_sagittal_t2.png", CONDITIONS[0]),
    ("synthetic_all_sagittal_t1.png", CONDITIONS[1]),
    ("synthetic_all_axial_t2.png", CONDITIONS[3]),
)


def main() -> None:
    config = SyntheticConfig(seed=0, conditions="all")
    wanted = {SEVERITY_TO_LABEL["Moderate"], SEVERITY_TO_LABEL["Severe"]}
    for index in range(1000):
        plan = sample_study_plan(config, index)
        ok = True
        for condition in (CONDITIONS[1], CONDITIONS[3]):
            rows = [c for c in plan.conditions if c.condition == condition]
            complete = all(c.coordinate and c.recorded_grade is not None for c in rows)
            ok = ok and complete and wanted <= {c.recorded_grade for c in rows}
        if ok:
            break
    for name, condition in FIGURES:
        out = STATIC / name
        plot_figure1(out, config=config, study_index=index, dpi=80, condition=condition)
        print(f"wrote {out} (study index {index}, {out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
