"""A synthetic sagittal-T2 lumbar spine MRI generator that writes the RSNA 2024 layout.

The generator stands in for the RSNA 2024 Lumbar Spine Degenerative Classification data (paper
Sec. 3.1): real DICOM files and the three CSVs, with spinal canal stenosis drawn from a latent
narrowing ``r`` of the CSF column and graded by a noisy simulated reader, so the best balanced
accuracy any model can reach (the Bayes ceiling) is known. See :doc:`/synthetic`.

Example:
    >>> from lumbarssl.synthetic import SyntheticConfig, generate_dataset
    >>> config = SyntheticConfig(n_studies=4, seed=0)
    >>> summary = generate_dataset("data/synth", config)  # doctest: +SKIP
    >>> print(summary.describe())  # doctest: +SKIP
"""

from lumbarssl.synthetic.ceiling import BayesCeiling, bayes_ceiling
from lumbarssl.synthetic.config import GENERATOR_VERSION, GENERATOR_VERSIONS, SyntheticConfig
from lumbarssl.synthetic.figure import plot_figure1
from lumbarssl.synthetic.generate import (
    META_JSON,
    TRUTH_COLUMNS,
    TRUTH_COLUMNS_V1,
    TRUTH_CSV,
    SyntheticSummary,
    generate_dataset,
)
from lumbarssl.synthetic.plan import (
    DiscPlan,
    Midline,
    SeriesPlan,
    StudyPlan,
    sample_study_plan,
)

__all__ = [
    "GENERATOR_VERSION",
    "GENERATOR_VERSIONS",
    "META_JSON",
    "TRUTH_COLUMNS",
    "TRUTH_COLUMNS_V1",
    "TRUTH_CSV",
    "BayesCeiling",
    "DiscPlan",
    "Midline",
    "SeriesPlan",
    "StudyPlan",
    "SyntheticConfig",
    "SyntheticSummary",
    "bayes_ceiling",
    "generate_dataset",
    "plot_figure1",
    "sample_study_plan",
]
