"""Multi-positive NT-Xent (Sec. 3.6, Eq. 3-5) checked against independent references."""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from pytorch_metric_learning.losses import SupConLoss
from torch import Tensor
from torch.profiler import ProfilerActivity, profile

from lumbarssl.losses import MultiPositiveNTXent, multi_positive_ntxent
from lumbarssl.losses.ntxent import NTXentForm

FORMS: tuple[NTXentForm, ...] = ("outside", "inside")


# ---------------------------------------------------------------------------------------------
# Independent references
# ---------------------------------------------------------------------------------------------


def _cosine(z: Tensor, i: int, j: int) -> Tensor:
    return F.cosine_similarity(z[i], z[j], dim=0)


def reference_loss(z: Tensor, ids: list[int], tau: float, form: NTXentForm = "outside") -> Tensor:
    """Eq. 3 (or Eq. 4 as printed) and Eq. 5 written with Python loops, one pair at a time."""
    m = len(ids)
    per_anchor: list[Tensor] = []
    for i in range(m):
        positives = [p for p in range(m) if p != i and ids[p] == ids[i]]
        if not positives:
            continue
        denominator = torch.stack([torch.exp(_cosine(z, i, k) / tau) for k in range(m) if k != i])
        denominator = denominator.sum()
        if form == "outside":  # Eq. 3
            terms = [torch.log(torch.exp(_cosine(z, i, p) / tau) / denominator) for p in positives]
            per_anchor.append(-torch.stack(terms).sum() / len(positives))
        else:  # Eq. 4 exactly as printed: 1/|P| multiplies both logs.
            numerator = torch.stack([torch.exp(_cosine(z, i, p) / tau) for p in positives]).sum()
            per_anchor.append(-(torch.log(numerator) - torch.log(denominator)) / len(positives))
    return torch.stack(per_anchor).mean()


def simclr_ntxent(a: Tensor, b: Tensor, tau: float) -> Tensor:
    """Standard SimCLR NT-Xent: cross-entropy over the 2N x 2N similarities, self masked."""
    n = a.shape[0]
    z = F.normalize(torch.cat([a, b]), dim=1)
    logits = (z @ z.T / tau).masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return F.cross_entropy(logits, targets)


def ntxent(
    embeddings: Tensor,
    group_ids: Tensor | None = None,
    temperature: float = 0.1,
    form: NTXentForm = "outside",
) -> Tensor:
    """Positional-friendly wrapper for functools.partial."""
    return multi_positive_ntxent(embeddings, group_ids, temperature=temperature, form=form)


def _grad(loss_fn: Callable[[Tensor], Tensor], z: Tensor) -> tuple[Tensor, Tensor]:
    z = z.detach().clone().requires_grad_(True)
    loss = loss_fn(z)
    (grad,) = torch.autograd.grad(loss, z)
    return loss.detach(), grad


# ---------------------------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------------------------


@st.composite
def grouped_batches(
    draw: st.DrawFn, max_group: int = 5, min_groups: int = 1
) -> tuple[Tensor, Tensor]:
    """(M, D) embeddings with unequal, shuffled groups; at least one group has 2+ rows."""
    sizes = draw(st.lists(st.integers(1, max_group), min_size=min_groups, max_size=6))
    if max(sizes) < 2:
        sizes[0] = 2
    ids = torch.tensor([g for g, size in enumerate(sizes) for _ in range(size)])
    perm = torch.randperm(
        len(ids), generator=torch.Generator().manual_seed(draw(st.integers(0, 99)))
    )
    dim = draw(st.integers(1, 8))
    seed = draw(st.integers(0, 2**16))
    z = torch.randn(len(ids), dim, generator=torch.Generator().manual_seed(seed))
    return z, ids[perm]


temperatures = st.floats(0.05, 2.0)


def _stacked(n: int, v: int, d: int, seed: int, dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.randn(n, v, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---------------------------------------------------------------------------------------------
# Agreement with references
# ---------------------------------------------------------------------------------------------


@given(batch=grouped_batches(), tau=temperatures, form=st.sampled_from(FORMS))
def test_matches_loop_reference_on_unequal_groups(
    batch: tuple[Tensor, Tensor], tau: float, form: NTXentForm
) -> None:
    z, ids = batch
    expected = reference_loss(z.double(), ids.tolist(), tau, form)
    got = multi_positive_ntxent(z, ids, temperature=tau, form=form)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


@given(
    n=st.integers(1, 6),
    v=st.sampled_from([2, 3, 4]),
    d=st.integers(1, 8),
    tau=temperatures,
    seed=st.integers(0, 2**16),
    form=st.sampled_from(FORMS),
)
def test_view_stacked_matches_loop_reference(
    n: int, v: int, d: int, tau: float, seed: int, form: NTXentForm
) -> None:
    z = _stacked(n, v, d, seed)
    ids = [i for i in range(n) for _ in range(v)]
    expected = reference_loss(z.reshape(n * v, d).double(), ids, tau, form)
    got = multi_positive_ntxent(z, temperature=tau, form=form)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


def test_gradient_matches_loop_reference() -> None:
    z = _stacked(3, 3, 4, seed=1, dtype=torch.float64).reshape(9, 4)
    ids = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 3])
    for form in FORMS:
        expected = _grad(functools.partial(reference_loss, ids=ids.tolist(), tau=0.2, form=form), z)
        got = _grad(functools.partial(ntxent, group_ids=ids, temperature=0.2, form=form), z)
        torch.testing.assert_close(got, expected)


@given(n=st.integers(1, 12), d=st.integers(1, 16), tau=temperatures, seed=st.integers(0, 2**16))
def test_two_views_equal_simclr_ntxent(n: int, d: int, tau: float, seed: int) -> None:
    z = _stacked(n, 2, d, seed, dtype=torch.float64)
    expected = _grad(lambda x: simclr_ntxent(x[:, 0], x[:, 1], tau), z)
    for form in FORMS:
        got = _grad(functools.partial(ntxent, temperature=tau, form=form), z)
        torch.testing.assert_close(got, expected)


@given(batch=grouped_batches(min_groups=2), tau=temperatures)
def test_agrees_with_pytorch_metric_learning_supcon(
    batch: tuple[Tensor, Tensor], tau: float
) -> None:
    z, ids = batch
    z = z.double()
    # SupConLoss returns 0 when the batch has no negative at all; two groups always do.
    expected = _grad(lambda x: SupConLoss(temperature=tau)(x, ids), z)
    got = _grad(lambda x: multi_positive_ntxent(x, ids, temperature=tau), z)
    torch.testing.assert_close(got, expected)


# ---------------------------------------------------------------------------------------------
# Eq. 3 versus Eq. 4 as printed
# ---------------------------------------------------------------------------------------------


@given(n=st.integers(1, 10), d=st.integers(1, 8), tau=temperatures, seed=st.integers(0, 2**16))
def test_eq3_equals_eq4_with_one_positive_per_anchor(n: int, d: int, tau: float, seed: int) -> None:
    z = _stacked(n, 2, d, seed, dtype=torch.float64)
    outside = _grad(lambda x: multi_positive_ntxent(x, temperature=tau, form="outside"), z)
    inside = _grad(lambda x: multi_positive_ntxent(x, temperature=tau, form="inside"), z)
    torch.testing.assert_close(outside, inside)


@given(
    n=st.integers(1, 8),
    v=st.sampled_from([3, 4]),
    d=st.integers(1, 8),
    tau=temperatures,
    seed=st.integers(0, 2**16),
)
def test_eq3_exceeds_eq4_by_at_least_log_positives(
    n: int, v: int, d: int, tau: float, seed: int
) -> None:
    # Per anchor: l3 - l4 >= LSE_P - mean_P >= log|P| (see the module docstring), so the
    # means differ by at least log(V - 1) > 0.
    z = _stacked(n, v, d, seed, dtype=torch.float64)
    outside = multi_positive_ntxent(z, temperature=tau, form="outside")
    inside = multi_positive_ntxent(z, temperature=tau, form="inside")
    assert outside - inside >= math.log(v - 1) - 1e-12


@given(batch=grouped_batches(), tau=temperatures)
def test_eq3_minus_eq4_bound_with_unequal_groups(batch: tuple[Tensor, Tensor], tau: float) -> None:
    z, ids = batch
    z = z.double()
    counts = torch.bincount(ids)[ids] - 1
    bound = torch.log(counts[counts > 0].double()).mean()
    outside = multi_positive_ntxent(z, ids, temperature=tau, form="outside")
    inside = multi_positive_ntxent(z, ids, temperature=tau, form="inside")
    assert outside - inside >= bound - 1e-12
    if bool((counts >= 2).any()):
        assert outside > inside


# ---------------------------------------------------------------------------------------------
# Invariances
# ---------------------------------------------------------------------------------------------


@given(batch=grouped_batches(), tau=temperatures, seed=st.integers(0, 2**16))
def test_invariant_to_permuting_the_batch(
    batch: tuple[Tensor, Tensor], tau: float, seed: int
) -> None:
    z, ids = batch
    z = z.double()
    perm = torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed))
    loss, grad = _grad(lambda x: multi_positive_ntxent(x, ids, temperature=tau), z)
    loss_p, grad_p = _grad(lambda x: multi_positive_ntxent(x, ids[perm], temperature=tau), z[perm])
    torch.testing.assert_close(loss_p, loss)
    torch.testing.assert_close(grad_p, grad[perm])


@given(batch=grouped_batches(), tau=temperatures, seed=st.integers(0, 2**16))
def test_invariant_to_relabelling_group_ids(
    batch: tuple[Tensor, Tensor], tau: float, seed: int
) -> None:
    z, ids = batch
    mapping = torch.randperm(1000, generator=torch.Generator().manual_seed(seed)) - 500
    for form in FORMS:
        expected = multi_positive_ntxent(z, ids, temperature=tau, form=form)
        got = multi_positive_ntxent(z, mapping[ids], temperature=tau, form=form)
        torch.testing.assert_close(got, expected)


@given(
    batch=grouped_batches(),
    tau=temperatures,
    scale=st.floats(1e-3, 1e3),
    form=st.sampled_from(FORMS),
)
def test_invariant_to_scaling_embeddings(
    batch: tuple[Tensor, Tensor], tau: float, scale: float, form: NTXentForm
) -> None:
    z, ids = batch
    expected = multi_positive_ntxent(z, ids, temperature=tau, form=form)
    got = multi_positive_ntxent(z * scale, ids, temperature=tau, form=form)
    torch.testing.assert_close(got, expected)


def test_view_stacked_equals_flat_with_implied_ids() -> None:
    z = _stacked(5, 3, 6, seed=3)
    ids = torch.arange(5).repeat_interleave(3)
    for form in FORMS:
        torch.testing.assert_close(
            multi_positive_ntxent(z, form=form),
            multi_positive_ntxent(z.reshape(15, 6), ids, form=form),
        )


# ---------------------------------------------------------------------------------------------
# Gradients, chunking
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("chunk_size", [None, 4])
def test_gradcheck_float64(form: NTXentForm, chunk_size: int | None) -> None:
    generator = torch.Generator().manual_seed(0)
    flat = torch.randn(11, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    ids = torch.tensor([3, 3, 7, 1, 1, 1, 7, 9, 2, 2, 2])  # unequal groups and a singleton
    stacked = torch.randn(4, 3, 5, dtype=torch.float64, generator=generator, requires_grad=True)

    def grouped(x: Tensor) -> Tensor:
        return multi_positive_ntxent(x, ids, temperature=0.3, form=form, chunk_size=chunk_size)

    def views(x: Tensor) -> Tensor:
        return multi_positive_ntxent(x, temperature=0.3, form=form, chunk_size=chunk_size)

    assert torch.autograd.gradcheck(grouped, (flat,))
    assert torch.autograd.gradcheck(views, (stacked,))


@given(batch=grouped_batches(), chunk=st.integers(1, 30), form=st.sampled_from(FORMS))
def test_chunked_equals_unchunked(
    batch: tuple[Tensor, Tensor], chunk: int, form: NTXentForm
) -> None:
    z, ids = batch
    expected = _grad(lambda x: multi_positive_ntxent(x, ids, form=form), z)
    got = _grad(lambda x: multi_positive_ntxent(x, ids, form=form, chunk_size=chunk), z)
    torch.testing.assert_close(got, expected)


def _largest_allocation(fn: Callable[[], None], tmp_path: Path) -> int:
    """Bytes of the largest single CPU allocation made while running ``fn``."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    trace = tmp_path / "trace.json"
    prof.export_chrome_trace(str(trace))
    events = json.loads(trace.read_text())["traceEvents"]
    return int(max(e["args"]["Bytes"] for e in events if e.get("name") == "[memory]"))


@pytest.mark.parametrize("form", FORMS)
def test_chunking_bounds_the_largest_similarity_block(form: NTXentForm, tmp_path: Path) -> None:
    m, dim, chunk = 60, 4, 5  # chunk * M = 300 > M * D = 240, far below M * M = 3600
    z = _stacked(20, 3, dim, seed=0).requires_grad_(True)

    def step(chunk_size: int | None) -> Callable[[], None]:
        return lambda: torch.autograd.backward(
            multi_positive_ntxent(z, chunk_size=chunk_size, form=form)
        )

    float_bytes = 4
    assert _largest_allocation(step(chunk), tmp_path) <= chunk * m * float_bytes
    # The measurement does see the full matrix when it exists.
    assert _largest_allocation(step(None), tmp_path) == m * m * float_bytes


def test_backward_twice_with_retain_graph_gives_the_same_gradient() -> None:
    z = _stacked(6, 3, 4, seed=2).requires_grad_(True)
    loss = multi_positive_ntxent(z)
    (first,) = torch.autograd.grad(loss, z, retain_graph=True)
    (second,) = torch.autograd.grad(loss, z)
    torch.testing.assert_close(first, second)


# ---------------------------------------------------------------------------------------------
# Numerics: low temperature, autocast
# ---------------------------------------------------------------------------------------------


def _near_duplicate_views(n: int, v: int, d: int, seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 1, d, generator=generator)
    return base + 0.05 * torch.randn(n, v, d, generator=generator)


@pytest.mark.parametrize("form", FORMS)
def test_low_temperature_is_finite_and_accurate_in_float32(form: NTXentForm) -> None:
    # At tau = 0.01 logits reach 100 and exp(100) overflows float32: only a shifted
    # log-sum-exp stays finite.
    z = _near_duplicate_views(16, 3, 32, seed=0)
    loss, grad = _grad(lambda x: multi_positive_ntxent(x, temperature=0.01, form=form), z)
    assert torch.isfinite(loss)
    assert torch.isfinite(grad).all()
    expected_loss, expected_grad = _grad(
        lambda x: multi_positive_ntxent(x, temperature=0.01, form=form),
        z.double(),
    )
    torch.testing.assert_close(loss.double(), expected_loss, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grad.double(), expected_grad, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("tau", [0.01, 0.1])
def test_autocast_keeps_logits_in_float32(dtype: torch.dtype, tau: float) -> None:
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 8)
    x = _near_duplicate_views(6, 3, 16, seed=1)
    with torch.autocast("cpu", dtype=dtype):
        embeddings = head(x)
        loss = multi_positive_ntxent(embeddings, temperature=tau)
    assert embeddings.dtype == dtype
    assert loss.dtype == torch.float32
    torch.autograd.backward(loss)
    assert torch.isfinite(loss)
    assert head.weight.grad is not None
    assert torch.isfinite(head.weight.grad).all()
    # Autocast must not reach inside: same result as float32 maths on the same inputs.
    torch.testing.assert_close(
        loss.detach(), multi_positive_ntxent(embeddings.detach().float(), temperature=tau)
    )


def test_float64_input_gives_float64_loss() -> None:
    assert multi_positive_ntxent(_stacked(3, 2, 4, 0, torch.float64)).dtype == torch.float64


# ---------------------------------------------------------------------------------------------
# Anchors without positives
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
def test_anchors_without_positive_are_left_out_but_stay_negatives(form: NTXentForm) -> None:
    z = _stacked(1, 7, 5, seed=4, dtype=torch.float64)[0]
    ids = torch.tensor([0, 0, 1, 1, 1, 8, 9])  # rows 5 and 6 have no positive
    expected = reference_loss(z, ids.tolist(), 0.5, form)
    got = multi_positive_ntxent(z, ids, temperature=0.5, form=form)
    torch.testing.assert_close(got, expected)
    # As negatives they still matter: dropping them changes the loss.
    dropped = multi_positive_ntxent(z[:5], ids[:5], temperature=0.5, form=form)
    assert not torch.isclose(dropped, got)


@pytest.mark.parametrize(
    ("embeddings", "group_ids"),
    [
        (torch.randn(5, 4), torch.arange(5)),
        (torch.randn(4, 1, 3), None),
        (torch.randn(0, 4), torch.zeros(0, dtype=torch.int64)),
    ],
)
def test_batch_without_positives_returns_connected_zero_and_warns(
    embeddings: Tensor, group_ids: Tensor | None
) -> None:
    embeddings.requires_grad_(True)
    with pytest.warns(UserWarning, match="no anchor has a positive"):
        loss = multi_positive_ntxent(embeddings, group_ids)
    assert loss.item() == 0.0
    assert loss.requires_grad
    torch.autograd.backward(loss)
    assert embeddings.grad is not None
    assert torch.count_nonzero(embeddings.grad) == 0


# ---------------------------------------------------------------------------------------------
# Module and validation
# ---------------------------------------------------------------------------------------------


def test_module_matches_functional_and_forward_leaves_module_unchanged() -> None:
    criterion = MultiPositiveNTXent(temperature=0.2, form="inside", chunk_size=3)
    before = dict(vars(criterion))
    z = _stacked(4, 3, 5, seed=5)
    loss = criterion(z)
    assert dict(vars(criterion)) == before
    torch.testing.assert_close(
        loss, multi_positive_ntxent(z, temperature=0.2, form="inside", chunk_size=3)
    )
    assert "form='inside'" in repr(criterion)


def test_module_defaults_follow_the_paper() -> None:
    assert MultiPositiveNTXent().temperature == 0.1  # Sec. 4.3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"temperature": 0.0}, r"temperature must be in \(0, inf\), got 0.0"),
        ({"temperature": -1.0}, r"temperature must be in \(0, inf\), got -1.0"),
        ({"temperature": float("nan")}, r"temperature must be in \(0, inf\), got nan"),
        ({"temperature": float("inf")}, r"temperature must be in \(0, inf\), got inf"),
        ({"temperature": True}, "temperature must be a positive finite number, got True"),
        ({"form": "both"}, r"form must be one of \('outside', 'inside'\), got 'both'"),
        ({"chunk_size": 0}, "chunk_size must be None or an integer >= 1, got 0"),
        ({"chunk_size": 2.5}, "chunk_size must be None or an integer >= 1, got 2.5"),
        ({"gather_distributed": "yes"}, "gather_distributed must be a bool, got 'yes'"),
    ],
)
def test_bad_hyperparameters_raise(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MultiPositiveNTXent(**kwargs)
    with pytest.raises(ValueError, match=match):
        multi_positive_ntxent(torch.randn(2, 2, 3), **kwargs)


@pytest.mark.parametrize(
    ("embeddings", "group_ids", "match"),
    [
        (torch.randn(6), None, r"shape \(M, D\) with group_ids or \(N, V, D\), got \(6,\)"),
        (torch.randn(2, 2, 2, 2), None, r"got \(2, 2, 2, 2\)"),
        (torch.ones(4, 3, dtype=torch.int64), torch.arange(4), "floating point, got dtype"),
        (torch.randn(4, 3), None, r"\(M, D\) need group_ids of shape \(4,\)"),
        (torch.randn(4, 3), torch.arange(5), r"shape \(4,\) .* got \(5,\)"),
        (torch.randn(4, 3), torch.zeros(4), "integer tensor, got dtype torch.float32"),
        (torch.randn(2, 2, 3), torch.arange(4), r"group_ids must be None for view-stacked"),
        (torch.randn(4, 0), torch.arange(4), "embedding size D must be >= 1"),
    ],
)
def test_bad_inputs_raise(embeddings: Tensor, group_ids: Tensor | None, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MultiPositiveNTXent()(embeddings, group_ids)


def test_gather_distributed_without_process_group_is_single_process() -> None:
    z = _stacked(4, 3, 5, seed=6)
    torch.testing.assert_close(
        multi_positive_ntxent(z, gather_distributed=True), multi_positive_ntxent(z)
    )
