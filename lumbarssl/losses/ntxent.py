r"""Multi-positive NT-Xent (InfoNCE) loss of Sec. 3.6, Eq. 3-5 (SupCon's :math:`L_{out}`).

For an anchor :math:`i` with positives :math:`P(i)` (the other views of the same disc) and
temperature :math:`\tau`, write :math:`s_{ij} = \cos(z_i, z_j) / \tau` and
:math:`\operatorname{LSE}_{j \in A} s_{ij} = \log \sum_{j \in A} \exp s_{ij}`.

* ``form="outside"`` is Eq. 3:
  :math:`\ell_i = \operatorname{LSE}_{k \neq i} s_{ik} - \frac{1}{|P(i)|} \sum_{p \in P(i)} s_{ip}`.
* ``form="inside"`` is Eq. 4 exactly as printed, where :math:`1/|P(i)|` multiplies *both*
  terms: :math:`\ell_i = \frac{1}{|P(i)|} \bigl[\operatorname{LSE}_{k \neq i} s_{ik} -
  \operatorname{LSE}_{p \in P(i)} s_{ip}\bigr]`.

The paper calls the two equivalent; they are equal only when every anchor has exactly one
positive (two views per disc). Otherwise, since the denominator runs over a superset of the
positives (:math:`\operatorname{LSE}_{k \neq i} \ge \operatorname{LSE}_{p \in P(i)}`) and a
log-sum-exp of :math:`n` numbers is at least their mean plus :math:`\log n` (Jensen),

.. math::

    \ell_i^{(3)} - \ell_i^{(4)}
    = \Bigl(1 - \tfrac{1}{|P|}\Bigr) \operatorname{LSE}_{k \neq i} s_{ik}
      + \tfrac{1}{|P|} \operatorname{LSE}_{p \in P} s_{ip} - \tfrac{1}{|P|} \sum_{p \in P} s_{ip}
    \ \ge\ \operatorname{LSE}_{p \in P} s_{ip} - \tfrac{1}{|P|} \sum_{p \in P} s_{ip}
    \ \ge\ \log |P(i)|,

so with :math:`V \ge 3` views Eq. 3 exceeds Eq. 4 by at least :math:`\log(V - 1)` per anchor.
Eq. 4 as printed is not SupCon's :math:`L_{in}` either, which has no :math:`1/|P|` factor
on the denominator term and an extra :math:`+\log |P|`.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import Any, Final, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from lumbarssl import paper
from lumbarssl._core.distributed import get_world_size
from lumbarssl.losses import _distributed

__all__ = ["MultiPositiveNTXent", "multi_positive_ntxent"]

#: Sec. 4.3: "multi-positive NT-Xent loss, with a temperature parameter tau = 0.1"
#: (an alias of :data:`lumbarssl.paper.TEMPERATURE`).
PAPER_TEMPERATURE: Final = paper.TEMPERATURE

NTXentForm = Literal["outside", "inside"]
_FORMS = ("outside", "inside")


def _validate_hparams(
    temperature: float, form: str, chunk_size: int | None, gather_distributed: bool
) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, int | float):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be in (0, inf), got {temperature!r}")
    if form not in _FORMS:
        raise ValueError(f"form must be one of {_FORMS}, got {form!r}")
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be None or an integer >= 1, got {chunk_size!r}")
    if not isinstance(gather_distributed, bool):
        raise ValueError(f"gather_distributed must be a bool, got {gather_distributed!r}")
    if gather_distributed and not torch.distributed.is_available():
        raise ValueError("gather_distributed=True needs a PyTorch build with torch.distributed")


def _check_inputs(embeddings: Tensor, group_ids: Tensor | None) -> None:
    if not isinstance(embeddings, Tensor):
        raise TypeError(f"embeddings must be a torch.Tensor, got {type(embeddings).__name__}")
    if not embeddings.is_floating_point():
        raise ValueError(f"embeddings must be floating point, got dtype {embeddings.dtype}")
    shape = tuple(embeddings.shape)
    if embeddings.dim() == 3:
        if group_ids is not None:
            raise ValueError(
                f"group_ids must be None for view-stacked embeddings (N, V, D), got embeddings "
                f"of shape {shape} and group_ids of shape {tuple(group_ids.shape)}"
            )
    elif embeddings.dim() == 2:
        if group_ids is None:
            raise ValueError(
                f"embeddings of shape {shape} (M, D) need group_ids of shape ({shape[0]},); "
                "pass view-stacked (N, V, D) embeddings to imply them"
            )
        if group_ids.shape != shape[:1]:
            raise ValueError(
                f"group_ids must have shape ({shape[0]},) to match embeddings of shape "
                f"{shape}, got {tuple(group_ids.shape)}"
            )
        if group_ids.is_floating_point() or group_ids.is_complex():
            raise ValueError(f"group_ids must be an integer tensor, got dtype {group_ids.dtype}")
    else:
        raise ValueError(
            f"embeddings must have shape (M, D) with group_ids or (N, V, D), got {shape}"
        )
    if shape[-1] == 0:
        raise ValueError(f"embedding size D must be >= 1, got embeddings of shape {shape}")


def _autocast_off(device_type: str) -> contextlib.AbstractContextManager[Any]:
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


SelfIndex = Tensor | int


def _masked_logits(q_scaled: Tensor, keys: Tensor, self_idx: SelfIndex, start: int) -> Tensor:
    """Logits of anchor rows ``start:start + len(q_scaled)`` with their self-pairs masked.

    ``self_idx`` holds the key index of every anchor's self-pair, or is an int ``o`` when
    anchor ``r`` sits at key ``o + r`` (a diagonal, masked without index tensors).
    """
    logits = q_scaled @ keys.T
    # finfo.min rather than -inf: shifting it by a finite row max stays finite, exp gives 0.
    lowest = torch.finfo(logits.dtype).min
    if isinstance(self_idx, int):
        logits.diagonal(self_idx + start).fill_(lowest)
    else:
        rows = torch.arange(logits.shape[0], device=logits.device)
        logits[rows, self_idx[start : start + logits.shape[0]]] = lowest
    return logits


class _LogSumExpOverKeys(torch.autograd.Function):
    """``lse[r] = log sum_{j != self(r)} exp(inv_tau * q[r] . keys[j])``.

    A hand-written backward keeps the quadratic memory small: unchunked, the forward's
    shifted exponentials are the only ``(m, M)`` matrix saved and backward makes one more
    (the logits' gradient); chunked, nothing quadratic is saved and each ``(chunk, M)`` block
    is recomputed in backward.
    """

    @staticmethod
    def forward(
        ctx: Any,
        q: Tensor,
        keys: Tensor,
        self_idx: SelfIndex,
        inv_tau: float,
        chunk_size: int | None,
    ) -> Tensor:
        m = q.shape[0]
        step = m if chunk_size is None else min(chunk_size, m)
        q_scaled = q * inv_tau
        lse = q.new_empty(m)
        saved: list[Tensor] = []
        for start in range(0, m, step):
            block = _masked_logits(q_scaled[start : start + step], keys, self_idx, start)
            row_max = block.amax(dim=1, keepdim=True)
            exp_shifted = block.sub_(row_max).exp_()
            sums = exp_shifted.sum(dim=1)
            lse[start : start + step] = torch.log(sums).add_(row_max.squeeze(1))
            if step == m:
                saved = [exp_shifted, sums]
        ctx.inv_tau, ctx.step = inv_tau, step
        ctx.self_offset = self_idx if isinstance(self_idx, int) else None
        index = [] if isinstance(self_idx, int) else [self_idx]
        ctx.num_saved = len(saved)
        ctx.save_for_backward(q, keys, lse, *saved, *index)
        return lse

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, grad_lse: Tensor
    ) -> tuple[Tensor | None, Tensor | None, None, None, None]:
        q, keys, lse, *rest = ctx.saved_tensors
        saved, index = rest[: ctx.num_saved], rest[ctx.num_saved :]
        self_idx: SelfIndex = index[0] if index else ctx.self_offset
        with _autocast_off(q.device.type):
            # d lse_r / d logit_rj = softmax_rj, and the logits carry the factor inv_tau.
            coef = (grad_lse * ctx.inv_tau).unsqueeze(1)
            grad_q = torch.empty_like(q)
            grad_keys = torch.zeros_like(keys)
            m, step = q.shape[0], ctx.step
            for start in range(0, m, step):
                stop = start + step
                if saved:
                    # softmax = exp(logit - row_max) / sum; out of place so that the saved
                    # block survives a second backward (retain_graph=True, gradcheck).
                    exp_shifted, sums = saved
                    block = exp_shifted * (coef / sums.unsqueeze(1))
                else:
                    block = _masked_logits(q[start:stop] * ctx.inv_tau, keys, self_idx, start)
                    block.sub_(lse[start:stop].unsqueeze(1)).exp_().mul_(coef[start:stop])
                torch.mm(block, keys, out=grad_q[start:stop])
                grad_keys.addmm_(block.T, q[start:stop])
        needs_q, needs_keys = ctx.needs_input_grad[:2]
        return (grad_q if needs_q else None), (grad_keys if needs_keys else None), None, None, None


def _positive_pairs(self_idx: Tensor, inverse: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
    """Every (anchor row, key index) pair of the same group, self-pairs excluded."""
    device = self_idx.device
    order = torch.argsort(inverse, stable=True)
    group_start = torch.cumsum(counts, 0) - counts
    group = inverse[self_idx]
    size = counts[group]
    anchor = torch.repeat_interleave(torch.arange(self_idx.numel(), device=device), size)
    first = torch.repeat_interleave(torch.cumsum(size, 0) - size, size)
    within = torch.arange(anchor.numel(), device=device) - first
    key = order[group_start[group][anchor] + within]
    keep = key != self_idx[anchor]
    return anchor[keep], key[keep]


def _segment_logsumexp(values: Tensor, segment: Tensor, num_segments: int) -> Tensor:
    """``out[s] = log sum_{i: segment[i] == s} exp(values[i])``; every segment non-empty."""
    lowest = torch.finfo(values.dtype).min
    seg_max = values.new_full((num_segments,), lowest).scatter_reduce(
        0, segment, values.detach(), reduce="amax"
    )
    sums = values.new_zeros(num_segments).index_add(0, segment, (values - seg_max[segment]).exp())
    return sums.log() + seg_max


def _no_anchor(keys: Tensor) -> Tensor:
    warnings.warn(
        "multi_positive_ntxent: no anchor has a positive in the batch (every group id occurs "
        "once, or V = 1); returning a zero loss",
        stacklevel=4,
    )
    # Connected to `keys`, so a distributed backward still reaches the all-reduce.
    return keys[:0].sum()


def multi_positive_ntxent(
    embeddings: Tensor,
    group_ids: Tensor | None = None,
    *,
    temperature: float = PAPER_TEMPERATURE,
    form: NTXentForm = "outside",
    chunk_size: int | None = None,
    gather_distributed: bool = False,
) -> Tensor:
    r"""Multi-positive NT-Xent loss over groups of views, such as the views of one disc.

    Sec. 3.6 of the paper: Eq. 3 (or Eq. 4 as printed) per anchor, averaged as in Eq. 5.

    Rows that share a group id are positives of each other (the views of one disc); every
    other row is a negative. Similarities are cosine similarities divided by ``temperature``;
    an anchor's pair with itself is left out of both numerator and denominator. Anchors with
    no positive in the batch are left out of the mean of Eq. 5 but still serve as negatives.

    ``form="outside"`` (default) is Eq. 3, SupCon's :math:`L_{out}`. ``form="inside"`` is
    Eq. 4 exactly as printed, with :math:`1/|P(i)|` multiplying both the log-sum-exp over the
    positives and the log of the denominator. The two are equal only when every anchor has
    exactly one positive (``V = 2``). For ``V >= 3`` Eq. 3 is strictly larger: per anchor,
    :math:`\ell_i^{(3)} \ge \ell_i^{(4)} + \log |P(i)|` (proved in the section *Eq. 3 vs
    Eq. 4* of the API documentation of :mod:`lumbarssl.losses`).

    Logits are computed in float32 (float64 for float64 input) with autocast disabled, so the
    result is float32 under bf16/fp16 autocast. The exponentials are shifted by the detached
    row maximum, which keeps the loss finite at ``temperature=0.01``.

    With ``gather_distributed=True`` and an initialised default process group, rows (and ids)
    are all-gathered from every rank; this rank's anchors are scored against all ranks' keys
    and gradients reach every rank's rows. Each rank returns the mean over **its own** anchors.
    When every rank holds the same number of anchors with a positive, the mean of the ranks'
    losses equals the single-process loss over the concatenated batch, and the gradient of a
    rank's local rows is ``world_size`` times the single-process gradient of those rows, so
    DDP's averaging over ranks gives exactly the single-process parameter gradient. Group ids
    are compared across ranks (a disc's views may live on different ranks, so ids must be
    global); for view-stacked input the positives are the local views of each disc. Without
    an initialised process group the flag has no effect.

    Args:
        embeddings: Either ``(M, D)`` rows with ``group_ids``, or view-stacked ``(N, V, D)``
            whose V views of disc n form one group.
        group_ids: Integer group id per row for ``(M, D)`` input; must be None for
            ``(N, V, D)`` input. Groups may have different sizes.
        temperature: :math:`\tau > 0`; the paper uses 0.1 (Sec. 4.3).
        form: ``"outside"`` for Eq. 3 or ``"inside"`` for Eq. 4 as printed.
        chunk_size: If given, anchors are processed in blocks of this many rows, forward and
            backward, so at most ``chunk_size x M`` similarities exist at once; the loss and
            gradients are those of the unchunked computation.
        gather_distributed: Score local anchors against the keys of all ranks.

    Returns:
        Scalar loss. If no anchor has a positive, a zero connected to the graph and a
        warning. The hand-written backward supports first-order gradients only
        (``create_graph=True`` through this loss is not supported).

    Raises:
        ValueError: For hyper-parameters out of range or inputs of the wrong shape or dtype.

    Shape:
        - embeddings: (M, D) or (N, V, D), with M = N * V rows for view-stacked input.
        - group_ids: (M,) or None.
        - Output: () scalar, float32 (float64 for float64 embeddings).

    Example:
        >>> z = torch.randn(8, 3, 128, requires_grad=True)  # 8 discs, 3 views each
        >>> loss = multi_positive_ntxent(z, temperature=0.1)
        >>> loss.backward()
    """
    _validate_hparams(temperature, form, chunk_size, gather_distributed)
    _check_inputs(embeddings, group_ids)
    with _autocast_off(embeddings.device.type):
        return _ntxent(
            embeddings, group_ids, 1.0 / temperature, form, chunk_size, gather_distributed
        )


def _ntxent(
    embeddings: Tensor,
    group_ids: Tensor | None,
    inv_tau: float,
    form: str,
    chunk_size: int | None,
    gather_distributed: bool,
) -> Tensor:
    dtype = torch.float64 if embeddings.dtype == torch.float64 else torch.float32
    z = F.normalize(embeddings.to(dtype), dim=-1)
    rows = z.reshape(-1, z.shape[-1])
    m = rows.shape[0]
    distributed = gather_distributed and get_world_size() > 1
    keys, offset = _distributed.all_gather_rows(rows) if distributed else (rows, 0)

    if group_ids is None:
        # View-stacked (N, V, D): the positives of a view are the other views of its disc,
        # all on this rank, so nothing beyond the keys has to be gathered.
        views = z.shape[1]
        if m == 0 or views < 2:
            return _no_anchor(keys)
        q: Tensor = rows
        self_idx: SelfIndex = offset
        num_positives: Tensor | float = float(views - 1)
        if form == "outside":
            others = z.sum(dim=1, keepdim=True) - z
            positive_term = (z * others).sum(dim=-1).reshape(m) * inv_tau
        else:
            within = (z @ z.transpose(1, 2)) * inv_tau
            eye = torch.eye(views, dtype=torch.bool, device=z.device)
            within = within.masked_fill(eye, torch.finfo(dtype).min)
            positive_term = torch.logsumexp(within, dim=-1).reshape(m)
    else:
        ids = group_ids.to(device=rows.device, dtype=torch.int64)
        key_ids = _distributed.all_gather_ids(ids) if distributed else ids
        _, inverse, counts = torch.unique(key_ids, return_inverse=True, return_counts=True)
        positives_per_row = counts[inverse[offset : offset + m]] - 1
        has_positive = positives_per_row > 0
        num_anchors = int(has_positive.sum())
        if num_anchors == 0:
            return _no_anchor(keys)
        if num_anchors == m:
            q, self_idx = rows, offset
            key_index = torch.arange(offset, offset + m, device=rows.device)
        else:
            anchor_rows = torch.nonzero(has_positive).squeeze(1)
            q, key_index = rows[anchor_rows], anchor_rows + offset
            self_idx = key_index
        num_positives = positives_per_row[has_positive].to(dtype)
        if form == "outside":
            # Sum of an anchor's positives = its group's sum minus itself: O(M D), no mask.
            group_sum = keys.new_zeros((counts.numel(), keys.shape[1])).index_add(0, inverse, keys)
            others = group_sum[inverse[key_index]] - keys[key_index]
            positive_term = (q * others).sum(dim=1) * inv_tau
        else:
            anchor, key = _positive_pairs(key_index, inverse, counts)
            logits = (q[anchor] * keys[key]).sum(dim=1) * inv_tau
            positive_term = _segment_logsumexp(logits, anchor, q.shape[0])

    lse: Tensor = _LogSumExpOverKeys.apply(q, keys, self_idx, inv_tau, chunk_size)
    # Eq. 3: LSE - mean positive logit; Eq. 4 as printed: (LSE - LSE over positives) / |P|.
    if form == "outside":
        per_anchor = lse - positive_term / num_positives
    else:
        per_anchor = (lse - positive_term) / num_positives
    return per_anchor.mean()


class MultiPositiveNTXent(nn.Module):
    r"""Module form of the multi-positive NT-Xent loss; see :func:`multi_positive_ntxent`.

    Sec. 3.6 of the paper, Eq. 3-5. ``forward`` takes the inputs of the function.

    Args:
        temperature: :math:`\tau > 0`; the paper uses 0.1 (Sec. 4.3).
        form: ``"outside"`` for Eq. 3 (SupCon :math:`L_{out}`, default) or ``"inside"`` for
            Eq. 4 as printed. Equal only with one positive per anchor; for ``V >= 3`` Eq. 3
            exceeds Eq. 4 by at least :math:`\log(V - 1)` per anchor.
        chunk_size: Process anchors in blocks of this many rows (same loss and gradients,
            at most ``chunk_size x M`` similarities in memory at once).
        gather_distributed: All-gather rows and ids from every rank before scoring.

    Raises:
        ValueError: If a hyper-parameter is out of range.

    Shape:
        - embeddings: (M, D) with group_ids (M,), or view-stacked (N, V, D).
        - Output: () scalar, float32.

    Example:
        >>> criterion = MultiPositiveNTXent(temperature=0.1)
        >>> z = torch.randn(24, 3, 128)  # 24 discs, V = 3 views
        >>> loss = criterion(z)
    """

    def __init__(
        self,
        temperature: float = PAPER_TEMPERATURE,
        form: NTXentForm = "outside",
        chunk_size: int | None = None,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        _validate_hparams(temperature, form, chunk_size, gather_distributed)
        self.temperature = float(temperature)
        self.form: NTXentForm = form
        self.chunk_size = chunk_size
        self.gather_distributed = gather_distributed

    def forward(self, embeddings: Tensor, group_ids: Tensor | None = None) -> Tensor:
        """Compute the loss.

        Args:
            embeddings: ``(M, D)`` rows with ``group_ids``, or view-stacked ``(N, V, D)``.
            group_ids: Integer group id per row for ``(M, D)`` input, else None.

        Returns:
            Scalar loss.
        """
        return multi_positive_ntxent(
            embeddings,
            group_ids,
            temperature=self.temperature,
            form=self.form,
            chunk_size=self.chunk_size,
            gather_distributed=self.gather_distributed,
        )

    def extra_repr(self) -> str:
        """Hyper-parameters shown by ``repr``."""
        return (
            f"temperature={self.temperature}, form={self.form!r}, "
            f"chunk_size={self.chunk_size}, gather_distributed={self.gather_distributed}"
        )
