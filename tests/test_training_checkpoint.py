"""Atomic writes, RNG capture and safe loading of training checkpoints."""

# ruff: noqa: NPY002  (these tests exercise NumPy's legacy global generator on purpose)

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, BinaryIO, cast

import numpy as np
import pytest
import torch
from _training_toys import Batch, Run, config, make_run, trainer
from torch.optim.lr_scheduler import ReduceLROnPlateau

from lumbarssl._core.atomic import atomic_duplicate
from lumbarssl.training import (
    Trainer,
    atomic_save,
    capture_rng_state,
    load_training_state,
    restore_rng_state,
)


def _draws(generator: torch.Generator) -> tuple[list[float], list[float], list[float], list[int]]:
    return (
        torch.rand(4).tolist(),
        np.random.rand(4).tolist(),
        [random.random() for _ in range(4)],
        torch.randperm(10, generator=generator).tolist(),
    )


def test_rng_state_round_trip_replays_every_generator() -> None:
    generator = torch.Generator().manual_seed(7)
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    np.random.normal()  # leaves a cached Gaussian in NumPy's state
    random.gauss(0.0, 1.0)  # and in Python's
    state = capture_rng_state([generator])
    first = _draws(generator)
    restore_rng_state(state, [generator])
    assert _draws(generator) == first
    assert _draws(generator) != first  # the streams did advance


def test_rng_state_survives_a_weights_only_save(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(1)
    state = capture_rng_state([generator])
    first = _draws(generator)
    atomic_save(state, tmp_path / "rng.pt")
    loaded = torch.load(tmp_path / "rng.pt", weights_only=True)
    restore_rng_state(loaded, [generator])
    assert _draws(generator) == first


def test_restoring_with_another_number_of_loader_generators_fails() -> None:
    state = capture_rng_state([torch.Generator()])
    with pytest.raises(ValueError, match="holds 1 DataLoader generator state"):
        restore_rng_state(state, [])


def test_atomic_save_failure_leaves_previous_file_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ckpt.pt"
    atomic_save({"weights": torch.arange(5)}, path)
    before = path.read_bytes()

    def partial_then_crash(obj: object, f: BinaryIO) -> None:
        f.write(b"PK\x03\x04 half a zip archive")
        raise OSError("no space left on device")

    monkeypatch.setattr(torch, "save", partial_then_crash)
    with pytest.raises(OSError, match="no space left"):
        atomic_save({"weights": torch.zeros(5)}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert torch.equal(torch.load(path, weights_only=True)["weights"], torch.arange(5))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_atomic_save_creates_parents_and_replaces(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "x.pt"
    atomic_save({"v": torch.ones(1)}, path)
    atomic_save({"v": torch.full((1,), 2.0)}, path)
    assert torch.load(path, weights_only=True)["v"].item() == 2.0
    assert [p.name for p in path.parent.iterdir()] == ["x.pt"]


@pytest.mark.parametrize("scheduler", ["cosine", "plateau"])
def test_trainer_checkpoint_loads_with_weights_only(tmp_path: Path, scheduler: str) -> None:
    run = make_run(seed=0)
    if scheduler == "plateau":
        run.scheduler = ReduceLROnPlateau(run.optimizer)
    trainer(run, config(tmp_path, epochs=2)).fit(run.loader)
    raw = torch.load(tmp_path / "last.pt", weights_only=True)
    assert raw["epoch"] == 2
    assert run.scheduler is not None
    assert raw["scheduler"] == run.scheduler.state_dict()
    state = load_training_state(tmp_path / "last.pt")
    for key, value in run.model.state_dict().items():
        assert torch.equal(state["model"][key], value)
    assert len(state["rng"]) == 1
    assert [record["epoch"] for record in state["history"]] == [1, 2]
    assert state["config"] == config(tmp_path, epochs=2).to_dict()


def test_grad_scaler_state_is_saved_and_restored_with_fp16(tmp_path: Path) -> None:
    # fp16 autocast on CPU is an explicit opt-in; it exercises the GradScaler path.
    run = make_run(seed=0)
    fit = trainer(run, config(tmp_path, epochs=1, amp="fp16"))
    assert fit.scaler.is_enabled()
    fit.fit(run.loader)
    saved = load_training_state(tmp_path / "last.pt")["scaler"]
    assert saved is not None
    assert saved["scale"] == fit.scaler.get_scale()

    again = make_run(seed=0)
    resumed = trainer(again, config(tmp_path, epochs=1, amp="fp16"))
    resumed.fit(again.loader, resume=True)
    assert resumed.scaler.get_scale() == fit.scaler.get_scale()


def test_load_training_state_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no training checkpoint at"):
        load_training_state(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"garbage\.pt is not a readable training checkpoint"):
        load_training_state(garbage)
    weights = tmp_path / "weights.pt"
    torch.save({"model": {}}, weights)
    with pytest.raises(ValueError, match=r"weights\.pt is not a training checkpoint.*'epoch'"):
        load_training_state(weights)


def test_checkpoint_with_pickled_objects_is_refused(tmp_path: Path) -> None:
    # weights_only=True must stay in force: an arbitrary object is not loaded.
    path = tmp_path / "evil.pt"
    torch.save({"obj": Path("x")}, path)
    with pytest.raises(ValueError, match="not a readable training checkpoint"):
        load_training_state(path)


def test_resume_with_a_different_scheduler_setup_fails(tmp_path: Path) -> None:
    run = make_run(seed=0)
    trainer(run, config(tmp_path, epochs=1)).fit(run.loader)
    again = make_run(seed=0)
    fit: Trainer[Batch] = Trainer(
        again.model,
        again.optimizer,
        train_step=lambda model, batch: model(batch[0]).mean(),
        config=config(tmp_path, epochs=2, allow_change=["epochs"]),
    )
    with pytest.raises(ValueError, match="written with a scheduler"):
        fit.fit(again.loader, resume=True)


def test_resume_after_reduce_lr_on_plateau_lowered_the_rate(tmp_path: Path) -> None:
    # patience 0 and a huge threshold: every epoch counts as no improvement, so the rate halves.
    def plateau_run() -> Run:
        run = make_run(seed=0)
        run.optimizer = torch.optim.Adam(run.model.parameters(), lr=1e-2)  # no cosine start
        run.scheduler = ReduceLROnPlateau(run.optimizer, patience=0, factor=0.5, threshold=1e9)
        return run

    run = plateau_run()
    trainer(run, config(tmp_path, epochs=2)).fit(run.loader)
    optimizer = load_training_state(tmp_path / "last.pt")["optimizer"]
    assert isinstance(optimizer, dict)
    saved = cast(list[dict[str, Any]], optimizer["param_groups"])
    start = [group["initial_lr"] for group in saved]
    assert [group["lr"] for group in saved] != start  # the schedule did lower it
    # The same settings resume (before, the lowered rate read as a changed --lr and was refused).
    again = plateau_run()
    resumed = trainer(again, config(tmp_path, epochs=2))
    resumed.fit(again.loader, resume=True)
    assert [g["initial_lr"] for g in resumed.optimizer.param_groups] == start
    assert [g["lr"] for g in resumed.optimizer.param_groups] == [g["lr"] for g in saved]


def test_atomic_duplicate_keeps_its_content_when_the_source_is_replaced(tmp_path: Path) -> None:
    source, copy = tmp_path / "best.pt", tmp_path / "last.pt"
    atomic_save({"v": torch.ones(1)}, source)
    atomic_save({"v": torch.zeros(1)}, copy)
    atomic_duplicate(source, copy)
    assert copy.samefile(source)
    atomic_save({"v": torch.full((1,), 2.0)}, source)  # a later best.pt
    assert torch.load(copy, weights_only=True)["v"].item() == 1.0
    atomic_save({"v": torch.full((1,), 3.0)}, copy)  # a later last.pt
    assert torch.load(source, weights_only=True)["v"].item() == 2.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]


def test_atomic_duplicate_copies_where_hard_links_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", refuse)
    source, copy = tmp_path / "best.pt", tmp_path / "last.pt"
    atomic_save({"v": torch.arange(1000.0)}, source)
    atomic_duplicate(source, copy)
    assert not copy.samefile(source)
    assert copy.read_bytes() == source.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]
