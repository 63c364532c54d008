from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from lumbarssl.data.keyed_random import MAX_KEY, _mix, _mul32, keyed_uniforms

U32 = st.integers(0, 2**32 - 1)


def _fmix32_reference(x: int) -> int:
    # MurmurHash3's finaliser as published, with Python's unbounded integers.
    x ^= x >> 16
    x = (x * 0x85EBCA6B) % 2**32
    x ^= x >> 13
    x = (x * 0xC2B2AE35) % 2**32
    return x ^ (x >> 16)


@given(U32, U32)
def test_mul32_is_the_product_modulo_2_32(x: int, c: int) -> None:
    assert _mul32(x, c) == (x * c) % 2**32
    assert int(_mul32(torch.tensor([x]), c)) == (x * c) % 2**32


@given(st.lists(U32, min_size=1, max_size=20))
def test_tensor_hash_equals_the_published_finaliser(values: list[int]) -> None:
    hashed = _mix(torch.tensor(values, dtype=torch.int64))
    assert hashed.tolist() == [_fmix32_reference(v) for v in values]
    assert [_mix(v) for v in values] == hashed.tolist()


def test_known_value_of_the_finaliser() -> None:
    # fmix32(1) from the MurmurHash3 reference implementation.
    assert _fmix32_reference(1) == 0x514E28B7
    assert _mix(1) == 0x514E28B7


def test_uniforms_are_uniform_and_in_range() -> None:
    u = keyed_uniforms(0, 0, torch.arange(2000), n_views=3, n_slots=5)
    assert u.shape == (2000, 3, 5)
    assert u.dtype == torch.float64
    assert float(u.min()) >= 0.0
    assert float(u.max()) < 1.0
    assert stats.kstest(u.flatten().numpy(), "uniform").pvalue > 1e-3
    # Neighbouring slots and neighbouring samples are uncorrelated.
    flat = u.reshape(2000, 15)
    corr = torch.corrcoef(flat.T)
    off_diagonal = corr - torch.eye(15, dtype=corr.dtype)
    assert float(off_diagonal.abs().max()) < 0.1  # 4.5 sigma for n = 2000
    assert abs(float(torch.corrcoef(torch.stack([flat[:-1, 0], flat[1:, 0]]))[0, 1])) < 0.1


def test_each_number_depends_only_on_its_key() -> None:
    rows = torch.tensor([5, 17, 3, 40_000, 0])
    u = keyed_uniforms(7, 2, rows, n_views=3, n_slots=4)
    perm = torch.tensor([3, 0, 4, 2, 1])
    assert torch.equal(keyed_uniforms(7, 2, rows[perm], n_views=3, n_slots=4), u[perm])
    assert torch.equal(keyed_uniforms(7, 2, rows[2:3], n_views=3, n_slots=4), u[2:3])
    assert torch.equal(keyed_uniforms(7, 2, rows.int(), n_views=3, n_slots=4), u)
    # More slots extend the sequence of each view only when the view count is 1.
    longer = keyed_uniforms(7, 2, rows, n_views=1, n_slots=12)
    assert torch.equal(longer.view(5, 3, 4), u)


@pytest.mark.parametrize(
    ("seed", "epoch", "stream"), [(8, 2, 0), (7, 3, 0), (7, 2, 1), (7 + 2**32, 2, 0)]
)
def test_changing_any_key_part_changes_the_numbers(seed: int, epoch: int, stream: int) -> None:
    rows = torch.arange(50)
    base = keyed_uniforms(7, 2, rows, n_views=2, n_slots=3)
    other = keyed_uniforms(seed, epoch, rows, n_views=2, n_slots=3, stream=stream)
    assert float((base == other).double().mean()) < 0.01


def test_large_seeds_and_indices_are_accepted() -> None:
    rows = torch.tensor([0, MAX_KEY])
    u = keyed_uniforms(2**64 - 1, MAX_KEY, rows, n_views=1, n_slots=1, stream=MAX_KEY)
    assert u.shape == (2, 1, 1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"seed": -1}, "seed must be in"),
        ({"epoch": 2**32}, "epoch must be in"),
        ({"stream": -3}, "stream must be in"),
        ({"indices": torch.tensor([-1, 2])}, r"indices must be in \[0, 4294967295\], got -1\.\.2"),
        ({"indices": torch.zeros(2, 2, dtype=torch.int64)}, "1-D integer tensor"),
        ({"indices": torch.zeros(2)}, "1-D integer tensor"),
        ({"n_views": 0}, "n_views and n_slots must be >= 1"),
    ],
)
def test_bad_keys_are_refused(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {
        "seed": 0,
        "epoch": 0,
        "indices": torch.arange(3),
        "n_views": 1,
        "n_slots": 1,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        keyed_uniforms(**args)  # type: ignore[arg-type]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_draws_the_same_numbers_as_the_cpu() -> None:
    rows = torch.randint(0, 10_000, (257,))
    cpu = keyed_uniforms(3, 9, rows, n_views=3, n_slots=45)
    cuda = keyed_uniforms(3, 9, rows.cuda(), n_views=3, n_slots=45)
    assert torch.equal(cuda.cpu(), cpu)
