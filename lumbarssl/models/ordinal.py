r"""An ordinal grading head: CORN or cumulative-link logits from a disc embedding.

The head is the ordinal counterpart of the classifier's linear layer (paper Sec. 3.6; ordinal
modelling is the paper's future work). It returns :math:`K - 1` logits, ``logits[:, k]`` about
the event :math:`y > k`; :func:`lumbarssl.losses.ordinal_loss` trains them and
:func:`lumbarssl.losses.ordinal_probabilities` turns them into class probabilities.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lumbarssl.models.registry import ARCHITECTURE_KEY, register_model

__all__ = ["OrdinalHead"]

_KINDS = ("corn", "cumulative")
# softplus(_UNIT_GAP) = 1: the cumulative thresholds start one logit apart (our choice).
_UNIT_GAP = math.log(math.e - 1.0)


@register_model("ordinal_head")
class OrdinalHead(nn.Module):
    r"""Map embeddings to ordinal logits for ``num_classes`` ordered grades.

    * ``kind="corn"``: one linear layer with :math:`K - 1` outputs, the conditional logits of
      CORN (Shi et al., 2021), unconstrained.
    * ``kind="cumulative"``: a bias-free linear score :math:`\eta(x)` shared by all thresholds
      and ordered thresholds :math:`\theta_0 \le \theta_1 \le \dots`, parameterised as
      :math:`\theta_k = \theta_0 + \sum_{j \le k} \operatorname{softplus}(\delta_j)`; the
      output :math:`\ell_k = \eta(x) - \theta_k` is non-increasing in :math:`k`, as the
      logistic cumulative link needs.

    Args:
        in_dim: Embedding size ``D``.
        num_classes: Number of ordered grades ``K >= 2`` (3 for the RSNA grades).
        kind: ``"corn"`` or ``"cumulative"``.

    Raises:
        ValueError: If ``in_dim < 1``, ``num_classes < 2`` or ``kind`` is unknown.

    Shape:
        - input: ``(B, D)``
        - output: ``(B, K - 1)``

    Example:
        >>> head = OrdinalHead(512, kind="cumulative")
        >>> head(torch.randn(4, 512)).shape
        torch.Size([4, 2])
    """

    def __init__(
        self,
        in_dim: int = 512,
        num_classes: int = 3,
        kind: Literal["corn", "cumulative"] = "corn",
    ) -> None:
        super().__init__()
        if in_dim < 1:
            raise ValueError(f"in_dim must be >= 1, got {in_dim}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 ordered grades, got {num_classes}")
        if kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
        self.in_dim = in_dim
        self.num_classes = num_classes
        self.kind = kind
        if kind == "corn":
            self.linear = nn.Linear(in_dim, num_classes - 1)
        else:
            self.linear = nn.Linear(in_dim, 1, bias=False)
            self.first_threshold = nn.Parameter(torch.zeros(1))
            self.threshold_gaps = nn.Parameter(torch.full((num_classes - 2,), _UNIT_GAP))

    def thresholds(self) -> Tensor:
        """The ordered thresholds of the cumulative link, shape ``(K - 1,)``.

        Raises:
            ValueError: For ``kind="corn"``, which has none.
        """
        if self.kind != "cumulative":
            raise ValueError("thresholds exist only for kind='cumulative'")
        gaps = torch.cumsum(F.softplus(self.threshold_gaps), dim=0)
        return torch.cat([self.first_threshold, self.first_threshold + gaps])

    def forward(self, x: Tensor) -> Tensor:
        """Ordinal logits of a batch of embeddings.

        Args:
            x: Embeddings of shape ``(B, in_dim)``.

        Returns:
            Logits of shape ``(B, num_classes - 1)``.
        """
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"expected x of shape (B, {self.in_dim}), got {tuple(x.shape)}")
        out: Tensor = self.linear(x)
        if self.kind == "cumulative":
            out = out - self.thresholds()
        return out

    def to_config(self) -> dict[str, object]:
        """JSON-serialisable config for :func:`~lumbarssl.models.build_model`."""
        return {
            ARCHITECTURE_KEY: "ordinal_head",
            "in_dim": self.in_dim,
            "num_classes": self.num_classes,
            "kind": self.kind,
        }
