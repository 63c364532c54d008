r"""Ordinal grading: CORN and cumulative-link logits for the three grades, with the paper's alpha.

The paper grades Normal/Mild < Moderate < Severe with a softmax and a class-weighted focal loss
(Sec. 3.6, Eq. 2) and names ordinal modelling as future work (Conclusion). This module gives two
ordinal parameterisations of the same :math:`K = 3` grades. Both produce :math:`K - 1 = 2`
logits per disc, ``logits[:, k]`` speaking about the event :math:`y > k`:

* ``"corn"``, conditional ordinal regression (Shi, Cao & Raschka, 2021, *Deep neural networks
  for rank-consistent ordinal regression based on conditional probabilities*):
  :math:`\sigma(\ell_k) = P(y > k \mid y > k - 1)`, so :math:`P(y > k) = \prod_{j \le k}
  \sigma(\ell_j)`. The logits are unconstrained; the products make :math:`P(y > k)` non-increasing
  in :math:`k` (rank consistency) by construction.
* ``"cumulative"``, the logistic cumulative link (proportional odds; McCullagh, 1980):
  :math:`\sigma(\ell_k) = P(y > k)` with :math:`\ell_k = \eta(x) - \theta_k` and ordered
  thresholds :math:`\theta_0 \le \theta_1`, so the logits must be non-increasing in :math:`k`
  (:class:`lumbarssl.models.OrdinalHead` builds them so).

Class probabilities follow as :math:`P(y = 0) = 1 - P(y > 0)`, :math:`P(y = k) = P(y > k - 1) -
P(y > k)`, :math:`P(y = K - 1) = P(y > K - 2)`; :func:`ordinal_log_probabilities` computes their
logarithms in log space, so they also serve as logits for calibration
(:mod:`lumbarssl.metrics.calibration`) and for the RSNA score.

**How the paper's alpha enters.** The loss of disc :math:`i` with grade :math:`y_i` is the focal
negative log-likelihood of the ordinal distribution,

.. math::

   \ell_i = -\alpha_{y_i} (1 - p_{i, y_i})^\gamma \log p_{i, y_i},
   \qquad p_{i, c} = P(y = c \mid x_i),

i.e. Eq. 2 of the paper with the softmax replaced by the ordinal model. With :math:`\gamma = 0`
(the default) and ``"corn"``, :math:`-\log p_{i, y_i}` is exactly the sum of the binary
cross-entropies of the conditional tasks :math:`k = 0, \dots, \min(y_i, K - 2)` that disc
:math:`i` enters in CORN's training scheme (label :math:`[y_i > k]`), so :math:`\alpha_{y_i}`
multiplies every binary term of that disc: the CORN loss with per-sample weights
:math:`\alpha_{y_i}`. ``reduction="mean"`` divides by :math:`\sum_i \alpha_{y_i}`
(``normalize="weights"``, the convention of weighted cross-entropy and of
:func:`~lumbarssl.losses.weighted_focal_loss`) or by the number of discs (``"samples"``).
(coral-pytorch's unweighted ``corn_loss`` divides the same sum by the number of
(disc, task) pairs instead; the two differ by that constant factor only.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lumbarssl.losses._weighting import (
    ClassWeightedLoss,
    Normalize,
    Reduction,
    check_target_dtype_shape,
    reduce_weighted,
    valid_rows,
    validate_alpha,
    validate_hparams,
)
from lumbarssl.paper import FOCAL_ALPHA

__all__ = [
    "ORDINAL_KINDS",
    "OrdinalKind",
    "OrdinalLoss",
    "ordinal_log_probabilities",
    "ordinal_loss",
    "ordinal_probabilities",
]

#: The two ordinal parameterisations: conditional (CORN) and logistic cumulative link.
OrdinalKind = Literal["corn", "cumulative"]
ORDINAL_KINDS: tuple[str, ...] = ("corn", "cumulative")


def _check_kind(kind: str) -> None:
    if kind not in ORDINAL_KINDS:
        raise ValueError(f"kind must be one of {ORDINAL_KINDS}, got {kind!r}")


def _check_logits(logits: Tensor) -> None:
    if logits.dim() != 2 or not logits.is_floating_point() or logits.shape[1] < 1:
        raise ValueError(
            "ordinal logits must be a floating-point tensor of shape (B, K - 1) with K >= 2, "
            f"got shape {tuple(logits.shape)} and dtype {logits.dtype}"
        )


def _log1mexp(d: Tensor) -> Tensor:
    """``log(1 - exp(-d))`` for ``d >= 0``; ``d`` is floored at the smallest normal number."""
    # One branch for all d (torch.where over two branches would leak NaN gradients); for large
    # d it loses at most ~1 ulp of 1 in absolute terms, far below any probability that matters.
    tiny = torch.finfo(d.dtype).tiny
    return torch.log(-torch.expm1(-d.clamp_min(tiny)))


def ordinal_log_probabilities(logits: Tensor, kind: OrdinalKind = "corn") -> Tensor:
    r"""Log class probabilities of an ordinal model, computed in log space.

    See the module docstring for both parameterisations. For ``"corn"``,
    :math:`\log P(y = c) = \sum_{j < c} \log\sigma(\ell_j) + [c < K-1]\log\sigma(-\ell_c)`. For
    ``"cumulative"``, the middle classes use
    :math:`\sigma(a) - \sigma(b) = \sigma(a)\,\sigma(-b)\,(1 - e^{-(a - b)})` for :math:`a \ge b`.

    Args:
        logits: Ordinal logits, ``logits[:, k]`` about :math:`y > k`.
        kind: ``"corn"`` or ``"cumulative"``.

    Returns:
        Log-probabilities whose exponentials are non-negative and sum to one over classes;
        float32 for half-precision logits.

    Raises:
        ValueError: For a wrong shape, an unknown ``kind``, or ``"cumulative"`` logits that
            increase along dim 1 (they would give a negative probability).

    Shape:
        - logits: (B, K - 1); K = 3 grades gives (B, 2).
        - Output: (B, K).
    """
    _check_kind(kind)
    _check_logits(logits)
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    z = logits.to(dtype)
    zero = z.new_zeros(z.shape[0], 1)
    if kind == "corn":
        # log P(y > k) = sum_{j <= k} log sigma(l_j); P(y = c) = P(y > c - 1) * (1 - sigma(l_c)).
        exceed = torch.cumsum(F.logsigmoid(z), dim=1)
        return torch.cat([zero, exceed], dim=1) + torch.cat([F.logsigmoid(-z), zero], dim=1)
    if z.shape[1] > 1 and bool((z[:, 1:] > z[:, :-1]).any()):
        raise ValueError(
            "cumulative-link logits (logit P(y > k)) must be non-increasing along dim 1; "
            "build them with lumbarssl.models.OrdinalHead(kind='cumulative')"
        )
    first = F.logsigmoid(-z[:, :1])
    last = F.logsigmoid(z[:, -1:])
    a, b = z[:, :-1], z[:, 1:]
    middle = F.logsigmoid(a) + F.logsigmoid(-b) + _log1mexp(a - b)
    return torch.cat([first, middle, last], dim=1)


def ordinal_probabilities(logits: Tensor, kind: OrdinalKind = "corn") -> Tensor:
    """Class probabilities of an ordinal model; rows are non-negative and sum to one.

    Args:
        logits: Ordinal logits, ``logits[:, k]`` about :math:`y > k`.
        kind: ``"corn"`` or ``"cumulative"``.

    Returns:
        The probabilities ``exp(ordinal_log_probabilities(logits, kind))``.

    Raises:
        ValueError: As :func:`ordinal_log_probabilities`.

    Shape:
        - logits: (B, K - 1).
        - Output: (B, K).

    Example:
        >>> probs = ordinal_probabilities(torch.randn(4, 2))
        >>> probs.shape
        torch.Size([4, 3])
    """
    return ordinal_log_probabilities(logits, kind).exp()


def _ordinal_loss(
    logits: Tensor,
    target: Tensor,
    kind: str,
    alpha: Tensor,
    gamma: float,
    reduction: str,
    ignore_index: int,
    normalize: str,
) -> Tensor:
    _check_kind(kind)
    _check_logits(logits)
    num_classes = logits.shape[1] + 1
    check_target_dtype_shape(logits, target)
    if alpha.numel() != num_classes:
        raise ValueError(
            f"alpha has {alpha.numel()} class weights but {logits.shape[1]} ordinal logits "
            f"describe K={num_classes} classes"
        )
    valid = valid_rows(target, num_classes, ignore_index)
    log_probs = ordinal_log_probabilities(logits, kind)  # type: ignore[arg-type]
    dtype = log_probs.dtype
    safe_target = torch.where(valid, target, 0).long()
    log_p = log_probs.gather(1, safe_target.unsqueeze(1)).squeeze(1)
    weight = alpha.to(device=logits.device, dtype=dtype)[safe_target] * valid
    loss = -weight * log_p
    if gamma != 0.0:
        one_minus_p = (-torch.expm1(log_p)).clamp_min(torch.finfo(dtype).tiny)
        loss = loss * one_minus_p.pow(gamma)
    return reduce_weighted(loss, weight, valid, reduction, normalize)


def ordinal_loss(
    logits: Tensor,
    target: Tensor,
    *,
    kind: OrdinalKind = "corn",
    alpha: Sequence[float] | Tensor = FOCAL_ALPHA,
    gamma: float = 0.0,
    reduction: Reduction = "mean",
    ignore_index: int = -100,
    normalize: Normalize = "weights",
) -> Tensor:
    r"""Class-weighted (focal) negative log-likelihood of an ordinal model.

    Per disc, :math:`\ell_i = -\alpha_{y_i} (1 - p_{i,y_i})^\gamma \log p_{i,y_i}` with
    :math:`p` from :func:`ordinal_log_probabilities`; the module docstring says how
    :math:`\alpha` relates to CORN's binary tasks. Samples whose target is ``ignore_index``
    contribute nothing; if none is left, ``"mean"`` and ``"sum"`` return a zero connected to
    the graph.

    Args:
        logits: Ordinal logits, ``logits[:, k]`` about :math:`y > k`.
        target: Grades in ``[0, K)`` or ``ignore_index``.
        kind: ``"corn"`` or ``"cumulative"``.
        alpha: Per-grade weights :math:`\alpha_c > 0`; the paper's ``(0.8, 4.0, 5.0)``
            (Sec. 4.4) by default.
        gamma: Focusing parameter :math:`\gamma \ge 0`; 0 (default) is the weighted ordinal
            likelihood, the paper's softmax loss uses 2.0 (Sec. 4.4).
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.
        ignore_index: Target value whose samples are skipped.
        normalize: Denominator of ``"mean"``: ``"weights"`` (sum of :math:`\alpha_{y_i}`) or
            ``"samples"``.

    Returns:
        The loss (float32 for half-precision logits).

    Raises:
        ValueError: For hyper-parameters out of range, wrong shapes or dtypes, targets outside
            ``[0, K)`` that are not ``ignore_index``, or increasing cumulative logits.

    Shape:
        - logits: (B, K - 1).
        - target: (B,), integer.
        - Output: () for ``"mean"`` and ``"sum"``, (B,) for ``"none"``.

    Example:
        >>> logits = torch.randn(24, 2, requires_grad=True)
        >>> ordinal_loss(logits, torch.randint(0, 3, (24,))).backward()
    """
    validate_hparams(gamma, reduction, ignore_index, normalize)
    _check_kind(kind)
    alpha_tensor = validate_alpha(alpha)
    return _ordinal_loss(
        logits, target, kind, alpha_tensor, float(gamma), reduction, ignore_index, normalize
    )


class OrdinalLoss(ClassWeightedLoss):
    r"""Module form of :func:`ordinal_loss`; ``alpha`` is a buffer.

    Args:
        kind: ``"corn"`` or ``"cumulative"``.
        alpha: Per-grade weights :math:`\alpha_c > 0` (default: the paper's
            ``(0.8, 4.0, 5.0)``, Sec. 4.4).
        gamma: Focusing parameter :math:`\gamma \ge 0` (default 0).
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.
        ignore_index: Target value whose samples are skipped.
        normalize: What ``"mean"`` divides by: ``"weights"`` or ``"samples"``.

    Raises:
        ValueError: If a hyper-parameter is out of range.

    Shape:
        - logits: (B, K - 1).
        - target: (B,), integer.
        - Output: () for ``"mean"``/``"sum"``, (B,) for ``"none"``.

    Example:
        >>> criterion = OrdinalLoss(kind="corn")
        >>> loss = criterion(torch.randn(24, 2), torch.randint(0, 3, (24,)))
    """

    def __init__(
        self,
        kind: OrdinalKind = "corn",
        alpha: Sequence[float] | Tensor = FOCAL_ALPHA,
        gamma: float = 0.0,
        reduction: Reduction = "mean",
        ignore_index: int = -100,
        normalize: Normalize = "weights",
    ) -> None:
        _check_kind(kind)
        super().__init__(alpha, gamma, reduction, ignore_index, normalize)
        self.kind: OrdinalKind = kind

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Compute the loss.

        Args:
            logits: Ordinal logits of shape (B, K - 1).
            target: Grades of shape (B,), in ``[0, K)`` or ``ignore_index``.

        Returns:
            The reduced loss, or one value per sample for ``reduction="none"``.
        """
        return _ordinal_loss(
            logits,
            target,
            self.kind,
            self.alpha,
            self.gamma,
            self.reduction,
            self.ignore_index,
            self.normalize,
        )

    def extra_repr(self) -> str:
        """Hyper-parameters shown by ``repr``."""
        return f"kind={self.kind!r}, {super().extra_repr()}"
