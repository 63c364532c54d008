r"""Weighted focal loss of Sec. 3.6, Eq. 2: :math:`-\alpha_y (1 - p_y)^\gamma \log p_y`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import torch
import torch.nn.functional as F
from torch import Tensor

from lumbarssl import paper
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

__all__ = ["WeightedFocalLoss", "weighted_focal_loss"]

#: Sec. 4.4: class weights alpha for Normal/Mild, Moderate, Severe (an alias of
#: :data:`lumbarssl.paper.FOCAL_ALPHA`).
PAPER_ALPHA: Final[tuple[float, ...]] = paper.FOCAL_ALPHA
#: Sec. 4.4: focusing parameter gamma (an alias of :data:`lumbarssl.paper.FOCAL_GAMMA`).
PAPER_GAMMA: Final = paper.FOCAL_GAMMA


def _focal(
    logits: Tensor,
    target: Tensor,
    alpha: Tensor,
    gamma: float,
    reduction: str,
    ignore_index: int,
    normalize: str,
) -> Tensor:
    if logits.dim() != 2 or not logits.is_floating_point():
        raise ValueError(
            f"logits must be a floating-point tensor of shape (B, C), got shape "
            f"{tuple(logits.shape)} and dtype {logits.dtype}"
        )
    check_target_dtype_shape(logits, target)
    num_classes = logits.shape[1]
    if alpha.numel() != num_classes:
        raise ValueError(
            f"alpha has {alpha.numel()} class weights but logits have C={num_classes} classes"
        )
    valid = valid_rows(target, num_classes, ignore_index)

    # Half-precision logits are promoted so that log p and (1 - p) keep their resolution.
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    safe_target = torch.where(valid, target, 0).long()
    log_p = F.log_softmax(logits.to(dtype), dim=1).gather(1, safe_target.unsqueeze(1)).squeeze(1)
    # 1 - p = -expm1(log p) is accurate as p -> 1 where 1 - exp(log p) cancels; the floor
    # keeps (1 - p)^gamma differentiable for gamma < 1 when p rounds to exactly 1.
    one_minus_p = (-torch.expm1(log_p)).clamp_min(torch.finfo(dtype).tiny)
    weight = alpha.to(device=logits.device, dtype=dtype)[safe_target] * valid
    loss = -weight * one_minus_p.pow(gamma) * log_p

    return reduce_weighted(loss, weight, valid, reduction, normalize)


def weighted_focal_loss(
    logits: Tensor,
    target: Tensor,
    *,
    alpha: Sequence[float] | Tensor = PAPER_ALPHA,
    gamma: float = PAPER_GAMMA,
    reduction: Reduction = "mean",
    ignore_index: int = -100,
    normalize: Normalize = "weights",
) -> Tensor:
    r"""Weighted focal loss: cross-entropy with class weights and a focusing term.

    Eq. 2 of Sec. 3.6 of the paper (the focal loss of Lin et al., 2017, with class weights).

    Per sample, :math:`\ell = -\alpha_y (1 - p_y)^\gamma \log p_y` where :math:`p_y` is the
    softmax probability of the true class. :math:`\log p_y` comes from
    :func:`~torch.nn.functional.log_softmax` and :math:`1 - p_y` from ``-expm1(log p_y)``, so
    the focusing term stays accurate for confident predictions. Samples whose target equals
    ``ignore_index`` contribute nothing.

    What ``reduction="mean"`` divides by is set by ``normalize``:

    * ``"weights"`` (default): the sum of :math:`\alpha_y` over the non-ignored samples, as
      :func:`torch.nn.functional.cross_entropy` does with ``weight``; with ``gamma=0`` the
      loss and its gradient equal ``cross_entropy(logits, target, weight=alpha)``.
    * ``"samples"``: the number of non-ignored samples.

    If every sample is ignored (or the batch is empty), ``"mean"`` and ``"sum"`` return a zero
    connected to the graph (``cross_entropy`` returns NaN there).

    Args:
        logits: Unnormalised class scores.
        target: Class indices in ``[0, C)`` or ``ignore_index``.
        alpha: Per-class weights :math:`\alpha_c > 0`, one per class; the paper uses
            ``(0.8, 4.0, 5.0)`` for Normal/Mild, Moderate, Severe (Sec. 4.4).
        gamma: Focusing parameter :math:`\gamma \ge 0`; the paper uses 2.0 (Sec. 4.4).
            ``gamma=0`` is weighted cross-entropy.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.
        ignore_index: Target value whose samples are skipped.
        normalize: Denominator of ``"mean"``: ``"weights"`` or ``"samples"``.

    Returns:
        The loss, float32 for half-precision logits.

    Raises:
        ValueError: For hyper-parameters out of range, wrong shapes or dtypes, or targets
            outside ``[0, C)`` that are not ``ignore_index``.

    Shape:
        - logits: (B, C).
        - target: (B,), integer.
        - Output: () for ``"mean"`` and ``"sum"``, (B,) for ``"none"`` (0 at ignored rows).

    Example:
        >>> logits = torch.randn(24, 3, requires_grad=True)
        >>> target = torch.randint(0, 3, (24,))
        >>> weighted_focal_loss(logits, target).backward()
    """
    validate_hparams(gamma, reduction, ignore_index, normalize)
    alpha_tensor = validate_alpha(alpha)
    return _focal(logits, target, alpha_tensor, float(gamma), reduction, ignore_index, normalize)


class WeightedFocalLoss(ClassWeightedLoss):
    r"""Module form of the weighted focal loss; see :func:`weighted_focal_loss`.

    Sec. 3.6 of the paper, Eq. 2.

    ``alpha`` is a buffer, so it follows ``.to()`` and is stored in the ``state_dict``.

    Args:
        alpha: Per-class weights :math:`\alpha_c > 0` (default: the paper's
            ``(0.8, 4.0, 5.0)``, Sec. 4.4). Its length must equal C of the logits.
        gamma: Focusing parameter :math:`\gamma \ge 0` (default 2.0, Sec. 4.4).
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.
        ignore_index: Target value whose samples are skipped.
        normalize: What ``"mean"`` divides by: the sum of the samples' weights
            (``"weights"``, equal to weighted cross-entropy at ``gamma=0``) or their number
            (``"samples"``).

    Raises:
        ValueError: If a hyper-parameter is out of range.

    Shape:
        - logits: (B, C).
        - target: (B,), integer.
        - Output: () for ``"mean"``/``"sum"``, (B,) for ``"none"``.

    Example:
        >>> criterion = WeightedFocalLoss()  # paper defaults
        >>> loss = criterion(torch.randn(24, 3), torch.randint(0, 3, (24,)))
    """

    def __init__(
        self,
        alpha: Sequence[float] | Tensor = PAPER_ALPHA,
        gamma: float = PAPER_GAMMA,
        reduction: Reduction = "mean",
        ignore_index: int = -100,
        normalize: Normalize = "weights",
    ) -> None:
        super().__init__(alpha, gamma, reduction, ignore_index, normalize)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Compute the loss.

        Args:
            logits: Unnormalised class scores.
            target: Class indices in ``[0, C)`` or ``ignore_index``.

        Returns:
            The reduced loss, or one value per sample for ``reduction="none"``.
        """
        return _focal(
            logits,
            target,
            self.alpha,
            self.gamma,
            self.reduction,
            self.ignore_index,
            self.normalize,
        )
