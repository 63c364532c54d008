"""lumbarssl: disc-centric self-supervised learning for lumbar spine MRI.

Components for the pipeline of Acharya & Kansakar, "Disc-Centric Contrastive Learning for
Lumbar Spine Severity Grading": RSNA 2024 data reading and a synthetic stand-in
(:mod:`lumbarssl.data`), the paper's losses (:mod:`lumbarssl.losses`), models
(:mod:`lumbarssl.models`), safety metrics (:mod:`lumbarssl.metrics`) and a thin trainer
(:mod:`lumbarssl.training`).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
