"""Properties of the weighted focal loss (Sec. 3.6, Eq. 2) against independent references."""

from __future__ import annotations

import math
from typing import Any, Literal

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

from lumbarssl.losses import WeightedFocalLoss, weighted_focal_loss

IGNORE = -100


@st.composite
def classification_batches(
    draw: st.DrawFn, min_size: int = 1, with_ignored: bool = True
) -> tuple[Tensor, Tensor, Tensor]:
    """float64 logits (B, C), targets (B,) with some ignore_index, alpha (C,)."""
    b = draw(st.integers(min_size, 16))
    c = draw(st.integers(2, 6))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    scale = draw(st.floats(0.1, 20.0))
    logits = scale * torch.randn(b, c, dtype=torch.float64, generator=generator)
    target = torch.randint(0, c, (b,), generator=generator)
    if with_ignored:
        ignored = torch.rand(b, generator=generator) < draw(st.floats(0.0, 0.5))
        target[ignored] = IGNORE
    alpha = torch.tensor(draw(st.lists(st.floats(0.05, 10.0), min_size=c, max_size=c)))
    return logits, target, alpha.double()


def _value_and_grad(fn: Any, logits: Tensor) -> tuple[Tensor, Tensor]:
    x = logits.detach().clone().requires_grad_(True)
    loss = fn(x)
    (grad,) = torch.autograd.grad(loss, x)
    return loss.detach(), grad


@given(batch=classification_batches(), reduction=st.sampled_from(["mean", "sum"]))
def test_gamma_zero_equals_weighted_cross_entropy(
    batch: tuple[Tensor, Tensor, Tensor], reduction: Literal["mean", "sum"]
) -> None:
    logits, target, alpha = batch
    if reduction == "mean" and not bool((target != IGNORE).any()):
        target[0] = 0  # cross_entropy's mean over zero samples is NaN
    expected = _value_and_grad(
        lambda x: F.cross_entropy(x, target, weight=alpha, reduction=reduction), logits
    )
    got = _value_and_grad(
        lambda x: weighted_focal_loss(x, target, alpha=alpha, gamma=0.0, reduction=reduction),
        logits,
    )
    torch.testing.assert_close(got, expected)


@given(batch=classification_batches(), gamma=st.floats(0.0, 5.0))
def test_focal_is_at_most_cross_entropy_per_sample(
    batch: tuple[Tensor, Tensor, Tensor], gamma: float
) -> None:
    logits, target, alpha = batch
    ce = F.cross_entropy(logits, target, weight=alpha, reduction="none")
    focal = weighted_focal_loss(logits, target, alpha=alpha, gamma=gamma, reduction="none")
    assert focal.shape == target.shape
    assert bool((focal <= ce + 1e-12).all())
    assert bool((focal >= 0).all())


@given(batch=classification_batches(with_ignored=False), gamma=st.floats(0.5, 5.0))
def test_larger_gamma_never_increases_the_loss(
    batch: tuple[Tensor, Tensor, Tensor], gamma: float
) -> None:
    logits, target, alpha = batch
    low = weighted_focal_loss(logits, target, alpha=alpha, gamma=gamma, reduction="none")
    high = weighted_focal_loss(logits, target, alpha=alpha, gamma=gamma + 1, reduction="none")
    assert bool((high <= low + 1e-12).all())


def test_hand_computed_case() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 3.0], [1.0, -1.0, 0.5]])
    target = torch.tensor([0, 1, 2])
    alpha, gamma = (0.8, 4.0, 5.0), 2.0
    expected = []
    for row, y in zip(logits.tolist(), target.tolist(), strict=True):
        p = math.exp(row[y]) / sum(math.exp(v) for v in row)
        expected.append(-alpha[y] * (1 - p) ** gamma * math.log(p))
    got = weighted_focal_loss(logits, target, reduction="none")  # paper defaults
    torch.testing.assert_close(got, torch.tensor(expected))
    weight_sum = sum(alpha[y] for y in target.tolist())
    torch.testing.assert_close(
        weighted_focal_loss(logits, target), torch.tensor(sum(expected) / weight_sum)
    )
    torch.testing.assert_close(
        weighted_focal_loss(logits, target, normalize="samples"), torch.tensor(sum(expected) / 3)
    )
    torch.testing.assert_close(
        weighted_focal_loss(logits, target, reduction="sum"), torch.tensor(sum(expected))
    )


@given(batch=classification_batches(), gamma=st.floats(0.0, 4.0))
def test_ignored_rows_contribute_nothing(
    batch: tuple[Tensor, Tensor, Tensor], gamma: float
) -> None:
    logits, target, alpha = batch
    kept = target != IGNORE
    x = logits.detach().clone().requires_grad_(True)
    per_sample = weighted_focal_loss(x, target, alpha=alpha, gamma=gamma, reduction="none")
    assert bool((per_sample[~kept] == 0).all())
    torch.autograd.backward(per_sample.sum())
    assert x.grad is not None
    assert torch.count_nonzero(x.grad[~kept]) == 0
    if bool(kept.any()):
        for normalize in ("weights", "samples"):
            torch.testing.assert_close(
                weighted_focal_loss(logits, target, alpha=alpha, gamma=gamma, normalize=normalize),
                weighted_focal_loss(
                    logits[kept], target[kept], alpha=alpha, gamma=gamma, normalize=normalize
                ),
            )


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("all_ignored", [False, True])
def test_empty_batch_returns_connected_zero(reduction: str, all_ignored: bool) -> None:
    b = 3 if all_ignored else 0
    logits = torch.randn(b, 3, requires_grad=True)
    target = torch.full((b,), IGNORE)
    loss = WeightedFocalLoss(reduction=reduction)(logits, target)  # type: ignore[arg-type]
    assert loss.shape == ()
    assert loss.item() == 0.0
    torch.autograd.backward(loss)
    assert logits.grad is not None
    assert torch.count_nonzero(logits.grad) == 0


def test_empty_batch_with_reduction_none_is_empty() -> None:
    out = weighted_focal_loss(
        torch.randn(0, 3), torch.zeros(0, dtype=torch.int64), reduction="none"
    )
    assert out.shape == (0,)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 3.7])
@pytest.mark.parametrize("normalize", ["weights", "samples"])
def test_gradcheck_float64(gamma: float, normalize: str) -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 3, dtype=torch.float64, generator=generator, requires_grad=True)
    target = torch.tensor([0, 1, 2, IGNORE, 2, 1, 0])

    def fn(x: Tensor) -> Tensor:
        return weighted_focal_loss(x, target, gamma=gamma, normalize=normalize)  # type: ignore[arg-type]

    assert torch.autograd.gradcheck(fn, (logits,))


@pytest.mark.parametrize("gamma", [0.25, 2.0])
def test_confident_predictions_give_finite_gradients(gamma: float) -> None:
    # log_softmax returns exactly 0 here, so p = 1 and (1 - p)^gamma sits at its kink.
    logits = torch.tensor([[60.0, 0.0, 0.0], [0.0, 0.0, -60.0]], requires_grad=True)
    loss = weighted_focal_loss(logits, torch.tensor([0, 2]), gamma=gamma)
    torch.autograd.backward(loss)
    assert torch.isfinite(loss)
    assert logits.grad is not None
    assert torch.isfinite(logits.grad).all()


def test_half_precision_logits_are_promoted() -> None:
    logits = torch.randn(5, 3)
    target = torch.tensor([0, 1, 2, 1, 0])
    out = weighted_focal_loss(logits.bfloat16(), target)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, weighted_focal_loss(logits.bfloat16().float(), target))


def test_module_matches_functional_and_keeps_alpha_as_a_buffer() -> None:
    criterion = WeightedFocalLoss(alpha=[1.0, 2.0], gamma=1.5, normalize="samples")
    assert "alpha" in dict(criterion.named_buffers())
    assert "alpha" in criterion.state_dict()
    criterion = criterion.to(torch.float64)
    assert criterion.alpha.dtype == torch.float64
    before = {k: v for k, v in vars(criterion).items() if k != "_buffers"}
    alpha_before = criterion.alpha.clone()
    logits = torch.randn(4, 2, dtype=torch.float64)
    target = torch.tensor([0, 1, 1, 0])
    loss = criterion(logits, target)
    assert {k: v for k, v in vars(criterion).items() if k != "_buffers"} == before
    assert torch.equal(criterion.alpha, alpha_before)
    torch.testing.assert_close(
        loss,
        weighted_focal_loss(logits, target, alpha=[1.0, 2.0], gamma=1.5, normalize="samples"),
    )
    assert "gamma=1.5" in repr(criterion)


def test_defaults_follow_the_paper() -> None:
    criterion = WeightedFocalLoss()
    assert criterion.gamma == 2.0  # Sec. 4.4
    torch.testing.assert_close(criterion.alpha, torch.tensor([0.8, 4.0, 5.0]))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"gamma": -0.5}, r"gamma must be in \[0, inf\), got -0.5"),
        ({"gamma": float("nan")}, r"gamma must be in \[0, inf\), got nan"),
        ({"gamma": "2"}, r"gamma must be a number in \[0, inf\), got '2'"),
        (
            {"alpha": [1.0, 0.0, 2.0]},
            r"alpha must be finite and > 0 for every class, got \[1.0, 0.0",
        ),
        ({"alpha": [1.0, float("inf")]}, "alpha must be finite and > 0"),
        ({"alpha": []}, "alpha must be a non-empty 1-D sequence"),
        (
            {"alpha": [[1.0, 2.0]]},
            r"non-empty 1-D sequence of per-class weights, got shape \(1, 2\)",
        ),
        ({"reduction": "avg"}, r"reduction must be one of \('none', 'mean', 'sum'\), got 'avg'"),
        ({"normalize": "batch"}, r"normalize must be one of \('weights', 'samples'\), got 'batch'"),
        ({"ignore_index": 1.5}, "ignore_index must be an int, got 1.5"),
    ],
)
def test_bad_hyperparameters_raise(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        WeightedFocalLoss(**kwargs)
    with pytest.raises(ValueError, match=match):
        weighted_focal_loss(torch.randn(2, 3), torch.tensor([0, 1]), **kwargs)


@pytest.mark.parametrize(
    ("logits", "target", "match"),
    [
        (torch.randn(4), torch.zeros(4, dtype=torch.int64), r"shape \(B, C\), got shape \(4,\)"),
        (torch.ones(4, 3, dtype=torch.int64), torch.zeros(4, dtype=torch.int64), "floating-point"),
        (torch.randn(4, 3), torch.zeros(5, dtype=torch.int64), r"shape \(4,\) .* got \(5,\)"),
        (torch.randn(4, 3), torch.zeros(4), "integer class indices, got dtype torch.float32"),
        (
            torch.randn(4, 5),
            torch.zeros(4, dtype=torch.int64),
            "alpha has 3 class weights but logits have C=5",
        ),
        (
            torch.randn(2, 3),
            torch.tensor([0, 3]),
            r"target values must be in \[0, 3\) or ignore_index=-100, got 3",
        ),
        (torch.randn(2, 3), torch.tensor([-1, 0]), r"got -1"),
    ],
)
def test_bad_inputs_raise(logits: Tensor, target: Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        WeightedFocalLoss()(logits, target)
