"""Names and codes of the RSNA 2024 Lumbar Spine Degenerative Classification layout.

One place for the strings the real dataset uses, shared by the reader (:mod:`lumbarssl.data`),
the synthetic generator (:mod:`lumbarssl.synthetic`) and the competition metric
(:mod:`lumbarssl.metrics`) so they cannot drift apart. A bottom-layer module: it imports only
:mod:`lumbarssl.paper`. :mod:`lumbarssl.data.constants` re-exports every name.
"""

from __future__ import annotations

from typing import Final

from lumbarssl import paper

#: Intervertebral levels as written in ``train_label_coordinates.csv`` (paper Sec. 3.1).
LEVELS: Final[tuple[str, ...]] = ("L1/L2", "L2/L3", "L3/L4", "L4/L5", "L5/S1")
#: The same levels as they appear in ``train.csv`` column suffixes.
LEVEL_SLUGS: Final[tuple[str, ...]] = ("l1_l2", "l2_l3", "l3_l4", "l4_l5", "l5_s1")

#: Conditions as written in ``train_label_coordinates.csv``.
CONDITIONS: Final[tuple[str, ...]] = (
    "Spinal Canal Stenosis",
    "Left Neural Foraminal Narrowing",
    "Right Neural Foraminal Narrowing",
    "Left Subarticular Stenosis",
    "Right Subarticular Stenosis",
)
#: The same conditions as they appear in ``train.csv`` column prefixes.
CONDITION_SLUGS: Final[tuple[str, ...]] = (
    "spinal_canal_stenosis",
    "left_neural_foraminal_narrowing",
    "right_neural_foraminal_narrowing",
    "left_subarticular_stenosis",
    "right_subarticular_stenosis",
)
#: The condition this library grades.
SPINAL_CANAL: Final[str] = "Spinal Canal Stenosis"

#: The 26 columns of ``train.csv``: ``study_id`` then condition-major, level-minor.
TRAIN_COLUMNS: Final[tuple[str, ...]] = (
    "study_id",
    *tuple(f"{condition}_{level}" for condition in CONDITION_SLUGS for level in LEVEL_SLUGS),
)
COORDINATE_COLUMNS: Final[tuple[str, ...]] = (
    "study_id",
    "series_id",
    "instance_number",
    "condition",
    "level",
    "x",
    "y",
)
SERIES_COLUMNS: Final[tuple[str, ...]] = ("study_id", "series_id", "series_description")

#: Series descriptions found in the dataset; only the first carries the paper's input.
SAGITTAL_T2: Final[str] = "Sagittal T2/STIR"
SAGITTAL_T1: Final[str] = "Sagittal T1"
AXIAL_T2: Final[str] = "Axial T2"
SERIES_DESCRIPTIONS: Final[tuple[str, ...]] = (SAGITTAL_T2, SAGITTAL_T1, AXIAL_T2)
#: The sequence each condition is graded on: spinal canal stenosis on Sagittal T2/STIR,
#: neural foraminal narrowing on Sagittal T1, subarticular stenosis on Axial T2.
CONDITION_SEQUENCE: Final[dict[str, str]] = {
    CONDITIONS[0]: SAGITTAL_T2,
    CONDITIONS[1]: SAGITTAL_T1,
    CONDITIONS[2]: SAGITTAL_T1,
    CONDITIONS[3]: AXIAL_T2,
    CONDITIONS[4]: AXIAL_T2,
}

#: Severity strings of ``train.csv`` and their class indices (paper Sec. 3.1; the paper's
#: grades, declared in :mod:`lumbarssl.paper`).
SEVERITIES: Final[tuple[str, ...]] = paper.SEVERITIES
SEVERITY_TO_LABEL: Final[dict[str, int]] = paper.SEVERITY_TO_LABEL
#: Label of a disc that has a coordinate but no severity (kept for contrastive pretraining).
MISSING_LABEL: Final[int] = -1

#: File and folder names of the layout.
TRAIN_CSV: Final[str] = "train.csv"
COORDINATES_CSV: Final[str] = "train_label_coordinates.csv"
SERIES_CSV: Final[str] = "train_series_descriptions.csv"
IMAGES_DIR: Final[str] = "train_images"
