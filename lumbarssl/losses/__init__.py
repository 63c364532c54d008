"""Losses of the paper: multi-positive NT-Xent (Eq. 3-5) and weighted focal loss (Eq. 2)."""

from lumbarssl.losses.focal import WeightedFocalLoss, weighted_focal_loss
from lumbarssl.losses.ntxent import MultiPositiveNTXent, multi_positive_ntxent

__all__ = [
    "MultiPositiveNTXent",
    "WeightedFocalLoss",
    "multi_positive_ntxent",
    "weighted_focal_loss",
]
