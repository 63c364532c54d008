from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lumbarssl.models import DeepSetsDiscPool, masked_mean

_POOLS = {
    "mean": DeepSetsDiscPool(6).eval(),
    "deep_sets": DeepSetsDiscPool(6, hidden_dim=5).eval(),
}


@st.composite
def _sets(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    batch = draw(st.integers(1, 4))
    slices = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**16))
    keep = draw(
        st.lists(
            st.lists(st.booleans(), min_size=slices, max_size=slices).filter(any),
            min_size=batch,
            max_size=batch,
        )
    )
    perm = draw(st.permutations(list(range(slices))))
    x = torch.randn(batch, slices, 6, generator=torch.Generator().manual_seed(seed))
    return x, torch.tensor(keep, dtype=torch.bool), perm


@given(data=_sets(), kind=st.sampled_from(sorted(_POOLS)))
def test_pool_is_permutation_invariant(
    data: tuple[torch.Tensor, torch.Tensor, list[int]], kind: str
) -> None:
    x, mask, perm = data
    pool = _POOLS[kind]
    with torch.no_grad():
        torch.testing.assert_close(pool(x[:, perm]), pool(x))
        torch.testing.assert_close(pool(x[:, perm], mask[:, perm]), pool(x, mask))


@given(data=_sets(), kind=st.sampled_from(sorted(_POOLS)))
def test_masked_entries_do_not_matter(
    data: tuple[torch.Tensor, torch.Tensor, list[int]], kind: str
) -> None:
    x, mask, _ = data
    pool = _POOLS[kind]
    garbage = torch.where(mask.unsqueeze(-1), x, torch.full_like(x, float("nan")))
    with torch.no_grad():
        out = pool(garbage, mask)
        assert torch.isfinite(out).all()
        # Reference: pool each disc's real slices alone.
        for b in range(x.shape[0]):
            alone = pool(x[b, mask[b]].unsqueeze(0))
            torch.testing.assert_close(out[b : b + 1], alone)


@given(data=_sets())
def test_masked_mean_matches_the_mean_of_kept_rows(
    data: tuple[torch.Tensor, torch.Tensor, list[int]],
) -> None:
    x, mask, _ = data
    out = masked_mean(x, mask)
    for b in range(x.shape[0]):
        torch.testing.assert_close(out[b], x[b, mask[b]].mean(dim=0))


def test_single_slice_is_the_identity() -> None:
    x = torch.randn(5, 1, 512)
    pool = DeepSetsDiscPool()
    assert torch.equal(pool(x), x[:, 0])
    assert torch.equal(pool(x, torch.ones(5, 1, dtype=torch.bool)), x[:, 0])


def test_default_pool_has_no_parameters() -> None:
    assert list(DeepSetsDiscPool().parameters()) == []
    assert len(list(DeepSetsDiscPool(8, hidden_dim=4).parameters())) > 0


def test_pool_validates() -> None:
    with pytest.raises(ValueError, match="dim must be >= 1, got 0"):
        DeepSetsDiscPool(0)
    with pytest.raises(ValueError, match="hidden_dim must be None or >= 1, got 0"):
        DeepSetsDiscPool(4, hidden_dim=0)
    pool = DeepSetsDiscPool(4)
    with pytest.raises(ValueError, match=r"expected x of shape \(B, S, 4\), got \(2, 4\)"):
        pool(torch.randn(2, 4))
    x = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match=r"expected mask of shape \(B, S\) = \(2, 3\)"):
        pool(x, torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="expected a boolean mask"):
        pool(x, torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"mask keeps no element for batch rows \[1\]"):
        pool(x, torch.tensor([[True, False, False], [False, False, False]]))


def test_masked_mean_is_differentiable_through_kept_entries_only() -> None:
    x = torch.randn(1, 3, 2, requires_grad=True)
    mask = torch.tensor([[True, False, True]])
    torch.autograd.backward(masked_mean(x, mask).sum())
    assert x.grad is not None
    torch.testing.assert_close(x.grad[0, :, 0], torch.tensor([0.5, 0.0, 0.5]))
