"""Counter-based random numbers keyed by (seed, stream, epoch, sample index, view, slot).

Augmentation parameters drawn from a stateful generator depend on the order in which samples
are drawn, on how many loader workers share the work and on what was drawn before a resume.
Here each number is a pure function of its key instead: a 32-bit integer hash (the MurmurHash3
finaliser, applied along the key) turned into a uniform in [0, 1). The same key gives the same
number on any device, in any batch composition, with any number of workers, so a resumed run
draws exactly the views the uninterrupted run would have drawn (issue 11, item 4).

All arithmetic is on int64 tensors holding values below 2**32, with the 32-bit products split
into 16-bit halves, so nothing overflows and CPU and CUDA give bit-identical integers.
"""

from __future__ import annotations

from typing import Final, TypeVar

import torch
from torch import Tensor

__all__ = ["MAX_KEY", "keyed_uniforms"]

#: Largest value of each key part (epoch, stream, sample index, view and slot); seeds may be
#: any non-negative integer below 2**64.
MAX_KEY: Final = 2**32 - 1

_MASK32: Final = 0xFFFFFFFF
_MASK16: Final = 0xFFFF
_SALT: Final = 0x9E3779B9  # 2**32 / golden ratio: separates the key levels
_GOLDEN: Final = 0x9E3779B1  # an odd multiplier, so multiplying is a bijection of [0, 2**32)
_COUNTERS: dict[tuple[int, torch.device], Tensor] = {}

_Int = TypeVar("_Int", int, Tensor)


def _mul32(x: _Int, constant: int) -> _Int:
    """``(x * constant) mod 2**32`` for ``0 <= x < 2**32`` without leaving int64's range."""
    low = (x & _MASK16) * constant
    high = (((x >> 16) * constant) & _MASK16) << 16
    return (low + high) & _MASK32


def _mix(x: _Int) -> _Int:
    """MurmurHash3's 32-bit finaliser: a bijection of [0, 2**32) with full avalanche."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x85EBCA6B)
    x = x ^ (x >> 13)
    x = _mul32(x, 0xC2B2AE35)
    return x ^ (x >> 16)


def _combine(key: _Int, part: _Int) -> _Int:
    return _mix(key ^ _mix((part + _SALT) & _MASK32))


def _counter_hashes(n: int, device: torch.device) -> Tensor:
    """``_mix(k * _GOLDEN + _SALT)`` for k < n, int64 (n,), made on ``device`` once."""
    cached = _COUNTERS.get((n, device))
    if cached is None:
        counters = torch.arange(n, dtype=torch.int64, device=device)
        cached = _mix((_mul32(counters, _GOLDEN) + _SALT) & _MASK32)
        _COUNTERS[(n, device)] = cached
    return cached


def _check(name: str, value: int, high: int = MAX_KEY) -> None:
    if not 0 <= value <= high:
        raise ValueError(f"{name} must be in [0, {high}], got {value}")


def keyed_uniforms(
    seed: int,
    epoch: int,
    indices: Tensor,
    *,
    n_views: int,
    n_slots: int,
    stream: int = 0,
) -> Tensor:
    """Uniform numbers in [0, 1), each a pure function of its key.

    Element ``[b, v, k]`` depends only on ``(seed, stream, epoch, indices[b], v, k)``: the
    same sample gets the same numbers wherever it sits in the batch, on whichever device.

    Args:
        seed: Run seed, ``0 <= seed < 2**64``.
        epoch: Epoch number, ``0 <= epoch <= MAX_KEY``.
        indices: int64 (B,), the sample ids (cache rows), each in ``[0, MAX_KEY]`` (checked
            for CPU tensors); the result lives on their device.
        n_views: Views per sample, V.
        n_slots: Numbers per view, K.
        stream: Separates independent uses of one seed (training views, validation views).

    Returns:
        float64 (B, V, K), uniform in [0, 1) with 32-bit resolution.

    Raises:
        ValueError: If a key part is outside its range or ``indices`` is not 1-D integer.
    """
    _check("seed", seed, 2**64 - 1)
    _check("epoch", epoch)
    _check("stream", stream)
    if n_views < 1 or n_slots < 1 or n_views * n_slots > MAX_KEY:
        raise ValueError(f"n_views and n_slots must be >= 1, got {n_views} and {n_slots}")
    if indices.dim() != 1 or indices.dtype.is_floating_point or indices.dtype == torch.bool:
        raise ValueError(
            f"indices must be a 1-D integer tensor, got {indices.dtype} {tuple(indices.shape)}"
        )
    rows = indices.to(torch.int64)
    # Checked on the host only: on an accelerator the check would stall the step loop.
    if rows.device.type == "cpu" and rows.numel() and (rows.min() < 0 or rows.max() > MAX_KEY):
        raise ValueError(f"indices must be in [0, {MAX_KEY}], got {rows.min()}..{rows.max()}")
    # The run-level part of the key is hashed on the host, once per call; each tensor step is
    # one multiply-xor-hash, since on an accelerator the cost is the number of kernels.
    key = _combine(_combine(_combine(_mix(_SALT), seed & _MASK32), seed >> 32), stream)
    key = _combine(key, epoch)
    per_sample = _mix(_mul32(rows, _GOLDEN) ^ key)  # (B,), a bijection of the row
    bits = _mix(per_sample[:, None] ^ _counter_hashes(n_views * n_slots, rows.device))
    uniforms = bits.to(torch.float64) * (1.0 / 2**32)
    return uniforms.view(-1, n_views, n_slots)
