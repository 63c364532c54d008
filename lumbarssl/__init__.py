"""lumbarssl: disc-centric self-supervised learning for lumbar spine MRI.

Components for the pipeline of Acharya & Kansakar, "Disc-Centric Contrastive Learning for
Lumbar Spine Severity Grading": RSNA 2024 data reading (:mod:`lumbarssl.data`), a synthetic
stand-in for it (:mod:`lumbarssl.synthetic`), the paper's losses (:mod:`lumbarssl.losses`), models
(:mod:`lumbarssl.models`), safety metrics (:mod:`lumbarssl.metrics`) and a thin trainer
(:mod:`lumbarssl.training`).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
