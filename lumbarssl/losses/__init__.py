"""Losses: multi-positive NT-Xent (Eq. 3-5), weighted focal loss (Eq. 2), ordinal losses."""

from lumbarssl.losses.focal import WeightedFocalLoss, weighted_focal_loss
from lumbarssl.losses.ntxent import MultiPositiveNTXent, multi_positive_ntxent
from lumbarssl.losses.ordinal import (
    ORDINAL_KINDS,
    OrdinalKind,
    OrdinalLoss,
    ordinal_log_probabilities,
    ordinal_loss,
    ordinal_probabilities,
)

__all__ = [
    "ORDINAL_KINDS",
    "MultiPositiveNTXent",
    "OrdinalKind",
    "OrdinalLoss",
    "WeightedFocalLoss",
    "multi_positive_ntxent",
    "ordinal_log_probabilities",
    "ordinal_loss",
    "ordinal_probabilities",
    "weighted_focal_loss",
]
