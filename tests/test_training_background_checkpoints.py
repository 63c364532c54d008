"""Checkpoint writes in a background thread (issue 12): same files, ordered, errors surface."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from _training_toys import (
    STEPS_PER_EPOCH,
    Batch,
    Scripted,
    config,
    make_run,
    mse_step,
    trainer,
)
from torch import Tensor, nn

import lumbarssl.training.trainer as trainer_module
from lumbarssl.errors import DiskFullError
from lumbarssl.training import Trainer, TrainingDivergedError, load_training_state, read_history
from lumbarssl.training._background import BackgroundWriter, host_snapshot

WriteFn = Callable[[object, "str | Path"], None]


def _writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "lumbarssl-checkpoint"]


@pytest.fixture(autouse=True)
def _no_thread_left() -> Iterator[None]:
    yield
    assert _writer_threads() == []


def _patch_save(monkeypatch: pytest.MonkeyPatch, wrapper: Callable[[WriteFn], WriteFn]) -> None:
    real: WriteFn = trainer_module.atomic_save  # type: ignore[attr-defined]
    monkeypatch.setattr(trainer_module, "atomic_save", wrapper(real))


def _epoch_of(obj: object) -> int:
    assert isinstance(obj, dict)
    return int(obj["epoch"])


def test_written_checkpoint_is_the_state_at_its_epoch_although_training_went_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Reference: epoch 1 written in the training thread, the run ending there.
    reference = make_run(seed=0)
    trainer(reference, config(tmp_path / "ref", epochs=1, background_checkpoints=False)).fit(
        reference.loader
    )
    expected = load_training_state(tmp_path / "ref" / "last.pt")

    # The epoch-1 write is held back until epoch 2 has updated the weights twice.
    mutated = threading.Event()
    held: list[bool] = []

    def gated(save: WriteFn) -> WriteFn:
        def wrapped(obj: object, path: str | Path) -> None:
            if _epoch_of(obj) == 1 and not held:  # best.pt: the epoch's one serialisation
                held.append(mutated.wait(timeout=60))
                save(obj, tmp_path / "epoch1.pt")
            save(obj, path)

        return wrapped

    calls = [0]

    def step(model: nn.Module, batch: Batch) -> Tensor:
        calls[0] += 1
        if calls[0] == STEPS_PER_EPOCH + 3:  # the third step of epoch 2: two updates done
            mutated.set()
        return mse_step(model, batch)

    _patch_save(monkeypatch, gated)
    run = make_run(seed=0)
    trainer(run, config(tmp_path / "run", epochs=2), step).fit(run.loader)
    assert held == [True]
    written = load_training_state(tmp_path / "epoch1.pt")
    assert written["epoch"] == 1
    for key, value in expected["model"].items():
        assert torch.equal(written["model"][key], value), key
        assert not torch.equal(run.model.state_dict()[key], value), key  # training went on
    states: Any = (expected["optimizer"]["state"], written["optimizer"]["state"])
    for param_id, state in states[0].items():
        for name, value in state.items():
            assert torch.equal(states[1][param_id][name], value), name
    assert written["rng"][0]["torch"].equal(expected["rng"][0]["torch"])
    assert _untimed(written["history"]) == _untimed(expected["history"])


def test_background_and_blocking_runs_write_the_same_files(tmp_path: Path) -> None:
    for name, background in (("blocking", False), ("background", True)):
        run = make_run(seed=0)
        cfg = config(tmp_path / name, epochs=3, background_checkpoints=background)
        trainer(run, cfg).fit(run.loader)
    for file in ("last.pt", "best.pt"):
        a = load_training_state(tmp_path / "blocking" / file)
        b = load_training_state(tmp_path / "background" / file)
        assert a["epoch"] == b["epoch"] == 3
        for key, value in a["model"].items():
            assert torch.equal(b["model"][key], value), key
        assert _untimed(a["history"]) == _untimed(b["history"])
    assert _history_lines(tmp_path / "blocking") == _history_lines(tmp_path / "background")


def _untimed(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The history records without their wall-clock figures."""
    timed = {"seconds", "images_per_s"}
    return [{k: v for k, v in record.items() if k not in timed} for record in history]


def _history_lines(run_dir: Path) -> list[tuple[int, float]]:
    return [(r.epoch, r.train_loss) for r in read_history(run_dir / "history.jsonl")]


def test_a_failed_background_write_is_raised_in_the_training_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    message = f"no space left on the device of {tmp_path}: free 1 GiB and resume"

    def failing(save: WriteFn) -> WriteFn:
        def wrapped(obj: object, path: str | Path) -> None:
            if _epoch_of(obj) == 2:
                raise DiskFullError(message)
            save(obj, path)

        return wrapped

    calls = [0]

    def step(model: nn.Module, batch: Batch) -> Tensor:
        calls[0] += 1
        return mse_step(model, batch)

    _patch_save(monkeypatch, failing)
    run = make_run(seed=0)
    with pytest.raises(DiskFullError) as info:
        trainer(run, config(tmp_path, epochs=6), step).fit(run.loader)
    assert str(info.value) == message
    # Raised at a step of epoch 3 or, at the latest, when epoch 3's write waits for it.
    assert 2 * STEPS_PER_EPOCH <= calls[0] <= 3 * STEPS_PER_EPOCH
    assert load_training_state(tmp_path / "last.pt")["epoch"] == 1
    assert [r.epoch for r in read_history(tmp_path / "history.jsonl")] == [1]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_failed_last_write_is_raised_when_fit_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(save: WriteFn) -> WriteFn:
        def wrapped(obj: object, path: str | Path) -> None:
            time.sleep(0.05)  # still in flight when the loop ends
            raise OSError(28, "No space left on device")

        return wrapped

    _patch_save(monkeypatch, failing)
    run = make_run(seed=0)
    with pytest.raises(OSError, match="No space left on device"):
        trainer(run, config(tmp_path, epochs=1)).fit(run.loader)
    assert not (tmp_path / "last.pt").exists()


def test_writes_reach_the_disk_in_order_and_the_last_is_the_last_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    order: list[tuple[str, int]] = []

    def slow(save: WriteFn) -> WriteFn:
        def wrapped(obj: object, path: str | Path) -> None:
            time.sleep(0.02)
            save(obj, path)
            order.append((Path(path).name, _epoch_of(obj)))

        return wrapped

    real_duplicate = trainer_module.atomic_duplicate  # type: ignore[attr-defined]

    def duplicate(source: Path, path: Path) -> None:  # last.pt of a best epoch
        time.sleep(0.02)
        real_duplicate(source, path)
        order.append((path.name, int(load_training_state(path)["epoch"])))

    _patch_save(monkeypatch, slow)
    monkeypatch.setattr(trainer_module, "atomic_duplicate", duplicate)
    run = make_run(seed=0)
    scores = [0.5, 0.4, 0.7, 0.6]  # best, not, best, not: both ways of writing last.pt
    cfg = config(tmp_path, epochs=4, monitor="val_score", monitor_mode="max")
    Trainer(
        run.model, run.optimizer, train_step=mse_step, config=cfg, evaluate=Scripted(scores)
    ).fit(run.loader, run.val_loader)
    assert [name for name, _ in order] == ["best.pt", "last.pt", "last.pt"] * 2
    last_writes = [epoch for name, epoch in order if name == "last.pt"]
    assert last_writes == [1, 2, 3, 4]
    assert order[-1] == ("last.pt", 4)
    assert load_training_state(tmp_path / "last.pt")["epoch"] == 4
    assert [r.epoch for r in read_history(tmp_path / "history.jsonl")] == [1, 2, 3, 4]


class _Stop(KeyboardInterrupt):
    pass


def _delayed(seconds: float) -> Callable[[WriteFn], WriteFn]:
    """A save wrapper that sleeps ``seconds`` first, so the write is still in flight."""

    def wrap(save: WriteFn) -> WriteFn:
        def wrapped(obj: object, path: str | Path) -> None:
            time.sleep(seconds)
            save(obj, path)

        return wrapped

    return wrap


def test_an_interrupt_waits_for_the_write_in_flight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = [0]

    def step(model: nn.Module, batch: Batch) -> Tensor:
        calls[0] += 1
        if calls[0] == STEPS_PER_EPOCH + 1:
            raise _Stop
        return mse_step(model, batch)

    _patch_save(monkeypatch, _delayed(0.2))
    run = make_run(seed=0)
    with pytest.raises(_Stop):
        trainer(run, config(tmp_path, epochs=3), step).fit(run.loader)
    assert load_training_state(tmp_path / "last.pt")["epoch"] == 1
    assert [r.epoch for r in read_history(tmp_path / "history.jsonl")] == [1]


def test_divergence_names_the_checkpoint_still_being_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = [0]

    def step(model: nn.Module, batch: Batch) -> Tensor:
        calls[0] += 1
        loss = mse_step(model, batch)
        return loss * float("nan") if calls[0] == STEPS_PER_EPOCH + 1 else loss

    _patch_save(monkeypatch, _delayed(0.2))
    run = make_run(seed=0)
    with pytest.raises(TrainingDivergedError) as info:
        trainer(run, config(tmp_path, epochs=3), step).fit(run.loader)
    assert info.value.checkpoint == tmp_path / "last.pt"
    assert load_training_state(tmp_path / "last.pt")["epoch"] == 1


def test_the_setting_is_validated_and_may_change_on_resume(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="background_checkpoints must be a bool"):
        config(tmp_path, background_checkpoints="yes")
    run = make_run(seed=0)
    trainer(run, config(tmp_path, epochs=1, background_checkpoints=False)).fit(run.loader)
    again = make_run(seed=0)
    more = config(tmp_path, epochs=2, allow_change=["epochs"])
    trainer(again, more).fit(again.loader, resume=True)
    assert load_training_state(tmp_path / "last.pt")["epoch"] == 2


def test_host_snapshot_copies_tensors_once_and_keeps_plain_values() -> None:
    shared = torch.arange(4.0)
    state: dict[str, Any] = {"a": shared, "b": [shared, 3, "x", None], "c": (torch.ones(2), 1.5)}
    copy = host_snapshot(state)
    shared.add_(10)
    assert torch.equal(copy["a"], torch.arange(4.0))
    assert copy["b"][0] is copy["a"]  # tied tensors stay tied
    assert copy["b"][1:] == [3, "x", None]
    assert isinstance(copy["c"], tuple)
    assert torch.equal(copy["c"][0], torch.ones(2))


def test_background_writer_runs_one_job_at_a_time_and_reraises() -> None:
    writer = BackgroundWriter()
    events: list[str] = []
    release = threading.Event()

    def first() -> None:
        release.wait(timeout=30)
        events.append("first")

    def second() -> None:
        events.append("second")
        raise ValueError("second failed")

    writer.submit(first)
    assert writer.busy
    writer.check()  # not finished: nothing to raise, no wait
    threading.Timer(0.05, release.set).start()
    writer.submit(second)  # waits for the first
    assert events[0] == "first"
    with pytest.raises(ValueError, match="second failed"):
        writer.wait()
    writer.wait()  # the error is raised once
    assert events == ["first", "second"]
