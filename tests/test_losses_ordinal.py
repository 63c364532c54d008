from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lumbarssl.losses import (
    OrdinalLoss,
    ordinal_log_probabilities,
    ordinal_loss,
    ordinal_probabilities,
)
from lumbarssl.models import OrdinalHead, build_model, model_config
from lumbarssl.paper import FOCAL_ALPHA


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _corn_probs_by_definition(row: list[float]) -> list[float]:
    # P(y > k) = prod_{j <= k} P(y > j | y > j - 1); P(y = c) = P(y > c - 1) - P(y > c).
    exceed = []
    running = 1.0
    for value in row:
        running *= _sigmoid(value)
        exceed.append(running)
    tail = [1.0, *exceed, 0.0]
    return [tail[c] - tail[c + 1] for c in range(len(row) + 1)]


def _cumulative_probs_by_definition(row: list[float]) -> list[float]:
    tail = [1.0, *(_sigmoid(v) for v in row), 0.0]
    return [tail[c] - tail[c + 1] for c in range(len(row) + 1)]


def _corn_loss_slow(
    logits: list[list[float]], target: list[int], alpha: tuple[float, ...]
) -> tuple[float, float, int]:
    """CORN as Shi et al. define it: task k sees the samples with y > k - 1, label [y > k].

    Returns the alpha-weighted sum of binary cross-entropies, the sum of the samples' alpha,
    and the number of (sample, task) pairs (coral-pytorch's corn_loss denominator).
    """
    total = weight_sum = 0.0
    pairs = 0
    for row, y in zip(logits, target, strict=True):
        weight_sum += alpha[y]
        for k, value in enumerate(row):
            if y > k - 1:
                p = _sigmoid(value)
                label = 1.0 if y > k else 0.0
                bce = -(label * math.log(p) + (1 - label) * math.log(1 - p))
                total += alpha[y] * bce
                pairs += 1
    return total, weight_sum, pairs


_rows = st.lists(
    st.lists(st.floats(-6.0, 6.0), min_size=2, max_size=2), min_size=1, max_size=8
).flatmap(
    lambda rows: st.tuples(
        st.just(rows), st.lists(st.integers(0, 2), min_size=len(rows), max_size=len(rows))
    )
)


@settings(deadline=None)
@given(case=_rows)
def test_corn_matches_the_papers_definition(case: tuple[list[list[float]], list[int]]) -> None:
    rows, target = case
    logits = torch.tensor(rows, dtype=torch.float64)
    y = torch.tensor(target)
    total, weight_sum, pairs = _corn_loss_slow(rows, target, FOCAL_ALPHA)
    assert ordinal_loss(logits, y, kind="corn").item() == pytest.approx(total / weight_sum)
    # coral-pytorch's corn_loss (unweighted) divides the same sum by the number of task pairs.
    unweighted, _, _ = _corn_loss_slow(rows, target, (1.0, 1.0, 1.0))
    ours = ordinal_loss(logits, y, kind="corn", alpha=(1.0, 1.0, 1.0), reduction="sum")
    assert ours.item() / pairs == pytest.approx(unweighted / pairs)
    probs = ordinal_probabilities(logits, "corn")
    for got, row in zip(probs.tolist(), rows, strict=True):
        assert got == pytest.approx(_corn_probs_by_definition(row), abs=1e-12)


@settings(deadline=None)
@given(case=_rows, gamma=st.sampled_from([0.0, 0.5, 2.0]))
def test_cumulative_link_matches_a_loop(
    case: tuple[list[list[float]], list[int]], gamma: float
) -> None:
    rows, target = case
    rows = [sorted(row, reverse=True) for row in rows]  # logit P(y > k) falls with k
    rows = [[row[0], row[1] - 0.01] for row in rows]  # strictly, so no class has p = 0
    expected = []
    for row, y in zip(rows, target, strict=True):
        p = _cumulative_probs_by_definition(row)[y]
        expected.append(-FOCAL_ALPHA[y] * (1 - p) ** gamma * math.log(p))
    logits = torch.tensor(rows, dtype=torch.float64)
    got = ordinal_loss(
        logits, torch.tensor(target), kind="cumulative", gamma=gamma, reduction="none"
    )
    assert got.tolist() == pytest.approx(expected, rel=1e-9, abs=1e-12)


@settings(deadline=None)
@given(case=_rows)
def test_probabilities_are_distributions_and_rank_consistent(
    case: tuple[list[list[float]], list[int]],
) -> None:
    rows, _ = case
    for kind, logits in (
        ("corn", torch.tensor(rows)),
        ("cumulative", torch.tensor(rows).sort(dim=1, descending=True).values),
    ):
        probs = ordinal_probabilities(logits, kind)  # type: ignore[arg-type]
        assert probs.shape == (len(rows), 3)
        assert bool((probs >= 0).all())
        assert probs.sum(dim=1).tolist() == pytest.approx([1.0] * len(rows), abs=1e-6)
        # Rank consistency: P(y > 0) >= P(y > 1) for every disc.
        exceed = probs.flip(1).cumsum(1).flip(1)[:, 1:]
        assert bool((exceed[:, 0] >= exceed[:, 1] - 1e-7).all())


def test_hand_computed_two_discs() -> None:
    # CORN. Disc A: logits (0, 0), grade 0: P = (1/2, 1/4, 1/4), loss 0.8 * ln 2.
    # Disc B: logits (ln 3, ln 3), grade 2: P(y > 0) = 3/4, P(y > 1) = 9/16, loss 5 * ln(16/9).
    logits = torch.tensor([[0.0, 0.0], [math.log(3), math.log(3)]], dtype=torch.float64)
    probs = ordinal_probabilities(logits, "corn")
    assert probs.tolist() == [
        pytest.approx([0.5, 0.25, 0.25]),
        pytest.approx([0.25, 0.1875, 0.5625]),
    ]
    loss = ordinal_loss(logits, torch.tensor([0, 2]), kind="corn")
    assert loss.item() == pytest.approx((0.8 * math.log(2) + 5 * math.log(16 / 9)) / 5.8)
    # Cumulative: logits (ln 3, -ln 3) give P(y > 0) = 3/4, P(y > 1) = 1/4: P = (1/4, 1/2, 1/4).
    cumulative = torch.tensor([[math.log(3), -math.log(3)]] * 2, dtype=torch.float64)
    assert ordinal_probabilities(cumulative, "cumulative")[0].tolist() == pytest.approx(
        [0.25, 0.5, 0.25]
    )
    loss = ordinal_loss(cumulative, torch.tensor([1, 2]), kind="cumulative")
    assert loss.item() == pytest.approx((4 * math.log(2) + 5 * math.log(4)) / 9)


@pytest.mark.parametrize("kind", ["corn", "cumulative"])
@pytest.mark.parametrize("gamma", [0.0, 2.0])
def test_gradcheck(kind: str, gamma: float) -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 2, dtype=torch.float64, generator=generator)
    if kind == "cumulative":
        logits = logits.sort(dim=1, descending=True).values
        logits[:, 1] -= 0.5
    logits.requires_grad_(True)
    target = torch.tensor([0, 1, 2, 2, 1, 0])

    def fn(x: torch.Tensor) -> torch.Tensor:
        return ordinal_loss(x, target, kind=kind, gamma=gamma)  # type: ignore[arg-type]

    assert torch.autograd.gradcheck(fn, (logits,))


def test_half_precision_is_promoted_and_ignore_index_skips() -> None:
    logits = torch.randn(5, 2).half()
    target = torch.tensor([0, -100, 2, 1, -100])
    loss = ordinal_loss(logits, target, reduction="none")
    assert loss.dtype == torch.float32
    assert loss[1].item() == 0.0
    assert loss[4].item() == 0.0
    kept = ordinal_loss(logits[[0, 2, 3]], target[[0, 2, 3]])
    assert ordinal_loss(logits, target).item() == pytest.approx(kept.item())
    empty = torch.zeros(0, 2, requires_grad=True)
    out = ordinal_loss(empty, torch.zeros(0, dtype=torch.long))
    torch.autograd.backward(out)
    assert out.item() == 0.0


def test_module_matches_function_and_normalize_samples() -> None:
    logits = torch.randn(7, 2)
    target = torch.randint(0, 3, (7,))
    criterion = OrdinalLoss(kind="corn", gamma=2.0, normalize="samples")
    expected = ordinal_loss(logits, target, gamma=2.0, reduction="none").sum() / 7
    assert criterion(logits, target).item() == pytest.approx(expected.item())
    assert "kind='corn'" in repr(criterion)


def test_log_probabilities_stay_finite_for_extreme_logits() -> None:
    logits = torch.tensor([[80.0, -80.0], [-80.0, -90.0], [30.0, 29.9999]])
    for kind in ("corn", "cumulative"):
        log_p = ordinal_log_probabilities(logits, kind)
        assert bool(torch.isfinite(log_p).all())
        assert log_p.exp().sum(1).tolist() == pytest.approx([1.0] * 3, abs=1e-5)


def test_validation_messages() -> None:
    with pytest.raises(ValueError, match="non-increasing"):
        ordinal_probabilities(torch.tensor([[0.0, 1.0]]), "cumulative")
    with pytest.raises(ValueError, match="kind must be one of"):
        ordinal_loss(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), kind="softmax")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"alpha has 2 class weights but 2 ordinal logits"):
        ordinal_loss(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), alpha=(1.0, 2.0))
    with pytest.raises(ValueError, match=r"target values must be in \[0, 3\)"):
        ordinal_loss(torch.zeros(1, 2), torch.tensor([3]))
    with pytest.raises(ValueError, match=r"shape \(B, K - 1\)"):
        ordinal_probabilities(torch.zeros(3))
    with pytest.raises(ValueError, match="gamma must be"):
        OrdinalLoss(gamma=-1.0)


def test_head_outputs_and_config_round_trip() -> None:
    torch.manual_seed(0)
    for kind in ("corn", "cumulative"):
        head = OrdinalHead(16, 4, kind=kind)
        out = head(torch.randn(8, 16))
        assert out.shape == (8, 3)
        rebuilt = build_model(model_config(head))
        assert isinstance(rebuilt, OrdinalHead)
        assert rebuilt.kind == kind
        assert rebuilt.num_classes == 4
    head = OrdinalHead(16, 4, kind="cumulative")
    with torch.no_grad():
        head.threshold_gaps.copy_(torch.tensor([-30.0, 5.0]))  # gaps may shrink, never invert
    out = head(torch.randn(64, 16))
    assert bool((out[:, 1:] <= out[:, :-1]).all())
    thresholds = head.thresholds()
    assert bool((thresholds[1:] >= thresholds[:-1]).all())
    with pytest.raises(ValueError, match="num_classes must be >= 2"):
        OrdinalHead(16, 1)
    with pytest.raises(ValueError, match="thresholds exist only"):
        OrdinalHead(16).thresholds()


def test_head_and_loss_learn_an_ordinal_toy_problem() -> None:
    # One feature whose value orders the grades; both heads should fit it well.
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(300, 1, generator=generator) * 2
    y = torch.bucketize(x.squeeze(1), torch.tensor([-1.0, 1.0]))
    for kind in ("corn", "cumulative"):
        torch.manual_seed(0)
        head = OrdinalHead(1, kind=kind)
        optimiser = torch.optim.Adam(head.parameters(), lr=0.1)
        for _ in range(200):
            optimiser.zero_grad()
            torch.autograd.backward(ordinal_loss(head(x), y, kind=kind))
            optimiser.step()
        predicted = ordinal_probabilities(head(x).detach(), kind).argmax(1)
        assert (predicted == y).float().mean().item() > 0.9


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", ["corn", "cumulative"])
def test_cuda_matches_cpu(dtype: torch.dtype, kind: str) -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 2, generator=generator).sort(dim=1, descending=True).values
    target = torch.randint(0, 3, (64,), generator=generator)
    cpu = ordinal_loss(logits.to(dtype), target, kind=kind, gamma=2.0)  # type: ignore[arg-type]
    gpu = ordinal_loss(logits.to(dtype).cuda(), target.cuda(), kind=kind, gamma=2.0)  # type: ignore[arg-type]
    assert gpu.dtype == torch.float32
    assert gpu.item() == pytest.approx(cpu.item(), rel=1e-5)
    probs = ordinal_probabilities(logits.to(dtype).cuda(), kind)  # type: ignore[arg-type]
    assert probs.sum(1).cpu().tolist() == pytest.approx([1.0] * 64, abs=1e-5)
