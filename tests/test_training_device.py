"""Device selection, mixed-precision policy, seeding and data-loading helpers."""

# ruff: noqa: NPY002  (these tests exercise NumPy's legacy global generator on purpose)

from __future__ import annotations

import random
from collections import OrderedDict
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from lumbarssl.training import (
    autocast_settings,
    dataloader_kwargs,
    default_num_workers,
    move_to_device,
    seed_everything,
    select_device,
)

CPU = torch.device("cpu")


def _no_accelerators(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def test_auto_device_falls_back_to_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_accelerators(monkeypatch)
    assert select_device("auto") == CPU


def test_auto_device_prefers_cuda_then_mps(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_accelerators(monkeypatch)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert select_device() == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")  # torchrun's process on the second GPU
    assert select_device() == torch.device("cuda", 1)


def test_explicit_device_overrides_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device("cpu") == CPU
    assert select_device(torch.device("cpu")) == CPU


def test_unavailable_or_unknown_device_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_accelerators(monkeypatch)
    with pytest.raises(ValueError, match="'cuda' was requested but CUDA is not available"):
        select_device("cuda")
    with pytest.raises(ValueError, match="'mps' was requested but MPS is not available"):
        select_device("mps")
    with pytest.raises(ValueError, match="'gpu0' is not a device name"):
        select_device("gpu0")


def test_autocast_is_off_on_cpu_by_default() -> None:
    settings = autocast_settings(CPU)
    assert not settings.enabled
    assert not settings.use_grad_scaler
    assert not settings.grad_scaler().is_enabled()
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with settings.autocast():
        assert (a @ b).dtype == torch.float32


def test_bf16_on_cpu_is_an_explicit_opt_in() -> None:
    settings = autocast_settings(CPU, "bf16")
    assert settings.dtype == torch.bfloat16
    assert not settings.use_grad_scaler
    with settings.autocast():
        assert (torch.randn(4, 4) @ torch.randn(4, 4)).dtype == torch.bfloat16


def test_amp_off_is_off_everywhere() -> None:
    assert not autocast_settings(torch.device("cuda", 0), "off").enabled
    assert not autocast_settings(torch.device("mps"), "auto").enabled


@pytest.mark.parametrize(
    ("capability", "dtype", "scaler"),
    [
        ((9, 0), torch.bfloat16, False),
        ((8, 0), torch.bfloat16, False),
        ((7, 5), torch.float16, True),
    ],
)
def test_auto_amp_on_cuda_follows_the_hardware(
    monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int], dtype: torch.dtype, scaler: bool
) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    settings = autocast_settings(torch.device("cuda", 0))
    assert (settings.device_type, settings.dtype, settings.use_grad_scaler) == (
        "cuda",
        dtype,
        scaler,
    )


def test_forcing_bf16_on_an_old_gpu_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    with pytest.raises(ValueError, match="amp='bf16' was requested but cuda:0 has no native"):
        autocast_settings(torch.device("cuda", 0), "bf16")
    assert autocast_settings(torch.device("cuda", 0), "fp16").use_grad_scaler


def test_unknown_amp_mode_is_rejected() -> None:
    with pytest.raises(ValueError, match="amp='fp8' is not supported"):
        autocast_settings(CPU, "fp8")  # type: ignore[arg-type]


def test_seed_everything_reproduces_every_generator() -> None:
    def draws() -> tuple[list[float], list[float], float, list[int]]:
        generator = seed_everything(11)
        return (
            torch.rand(3).tolist(),
            np.random.rand(3).tolist(),
            random.random(),
            torch.randperm(8, generator=generator).tolist(),
        )

    assert draws() == draws()
    first = draws()
    seed_everything(12)
    assert torch.rand(3).tolist() != first[0]
    assert np.random.rand(3).tolist() != first[1]


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_seed_out_of_range_is_rejected(seed: int) -> None:
    with pytest.raises(ValueError, match=rf"seed must be in \[0, 2\*\*32\), got {seed}"):
        seed_everything(seed)


class _RandomItems(Dataset[tuple[float, float, int]]):
    """Each item draws from NumPy and Python's random, as augmentations in workers would."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> tuple[float, float, int]:
        return float(np.random.rand()), random.random(), index


def _epoch(seed: int) -> list[tuple[float, float, int]]:
    kwargs = dataloader_kwargs(CPU, seed=seed, num_workers=2)
    loader = DataLoader(_RandomItems(), batch_size=None, shuffle=True, **kwargs)
    return [(float(a), float(b), int(i)) for a, b, i in loader]


def test_loader_workers_are_reproducible_and_distinct() -> None:
    first, second = _epoch(5), _epoch(5)
    assert first == second  # same order, same random draws in the workers
    assert sorted(i for _, _, i in first) == list(range(8))
    assert len({a for a, _, _ in first}) == 8  # workers do not repeat each other's draws
    assert len({b for _, b, _ in first}) == 8
    assert _epoch(6) != first


def test_dataloader_kwargs_pin_memory_only_for_cuda() -> None:
    assert not dataloader_kwargs(CPU, seed=0, num_workers=0)["pin_memory"]
    cuda_kwargs = dataloader_kwargs(torch.device("cuda", 0), seed=0, num_workers=2)
    assert cuda_kwargs["pin_memory"]
    assert not cuda_kwargs["persistent_workers"]
    assert not dataloader_kwargs(CPU, seed=0, num_workers=0, persistent_workers=True)[
        "persistent_workers"
    ]  # impossible without workers


def test_default_num_workers_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    real = default_num_workers()
    assert 0 <= real <= 8
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert default_num_workers() == 8  # capped
    assert default_num_workers(max_workers=32) == 15  # one CPU left to the training loop
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # four torchrun processes share the node
    assert default_num_workers(max_workers=32) == 3
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0}, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert default_num_workers() == 0
    with pytest.raises(ValueError, match="max_workers must be >= 0, got -1"):
        default_num_workers(-1)


class _Pair(NamedTuple):
    image: torch.Tensor
    label: torch.Tensor


def test_move_to_device_keeps_structure_and_applies_channels_last() -> None:
    batch: dict[str, Any] = {
        "pair": _Pair(torch.randn(2, 3, 4, 5), torch.tensor([0, 1])),
        "list": [torch.randn(2, 3, 4, 5).long(), "id"],
        "ordered": OrderedDict(a=torch.randn(2, 4)),
        "meta": 7,
    }
    moved = move_to_device(batch, CPU, memory_format=torch.channels_last)
    assert isinstance(moved["pair"], _Pair)
    assert isinstance(moved["ordered"], OrderedDict)
    assert moved["meta"] == 7
    assert moved["list"][1] == "id"
    image = moved["pair"].image
    assert image.is_contiguous(memory_format=torch.channels_last)
    assert not image.is_contiguous()
    assert torch.equal(image, batch["pair"].image)  # same values, other layout
    assert moved["list"][0].is_contiguous()  # integer tensors keep their layout
    plain = move_to_device(batch, CPU)
    assert plain["pair"].image.is_contiguous()
