"""Exact resume, divergence stop and crash safety of the Trainer's checkpoints."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from _training_toys import STEPS_PER_EPOCH, Batch, config, make_run, mse_step, trainer
from torch import Tensor, nn

from lumbarssl.errors import ConfigError
from lumbarssl.training import TrainingDivergedError, load_training_state, read_history


class _Interrupted(Exception):
    pass


def _counting(
    step: Callable[[nn.Module, Batch], Tensor],
    *,
    fail_at: int | None = None,
    poison_at: int | None = None,
    poison: float = float("nan"),
) -> tuple[Callable[[nn.Module, Batch], Tensor], list[int]]:
    """Wrap a step: count calls, raise at call ``fail_at``, return a bad loss at ``poison_at``."""
    calls = [0]

    def wrapped(model: nn.Module, batch: Batch) -> Tensor:
        calls[0] += 1
        if calls[0] == fail_at:
            raise _Interrupted
        loss = step(model, batch)
        return loss * poison if calls[0] == poison_at else loss

    return wrapped, calls


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _assert_state_dicts_equal(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_interrupted_and_resumed_run_ends_bit_identical(tmp_path: Path) -> None:
    epochs = 4
    reference = make_run(seed=0, epochs=epochs)
    ref_trainer = trainer(reference, config(tmp_path / "ref", epochs=epochs))
    ref_history = ref_trainer.fit(reference.loader)

    # Same construction, but the process "dies" in the middle of epoch 3.
    first = make_run(seed=0, epochs=epochs)
    crash_at = 2 * STEPS_PER_EPOCH + 2
    step, _ = _counting(mse_step, fail_at=crash_at)
    with pytest.raises(_Interrupted):
        trainer(first, config(tmp_path / "run", epochs=epochs), step).fit(first.loader)
    assert load_training_state(tmp_path / "run" / "last.pt")["epoch"] == 2

    # A new process: different seed and fresh objects; only the checkpoint carries the state.
    second = make_run(seed=99, epochs=epochs)
    step, calls = _counting(mse_step)
    resumed = trainer(second, config(tmp_path / "run", epochs=epochs), step)
    history = resumed.fit(second.loader, resume=True)

    assert calls[0] == 2 * STEPS_PER_EPOCH  # epochs 3 and 4 only
    _assert_state_dicts_equal(second.model.state_dict(), reference.model.state_dict())
    opt_a, opt_b = second.optimizer.state_dict(), reference.optimizer.state_dict()
    for param_id, param_state in opt_b["state"].items():
        for name, value in param_state.items():
            assert torch.equal(opt_a["state"][param_id][name], value), name
    assert [r.train_loss for r in history] == [r.train_loss for r in ref_history]
    assert [r.lr for r in history] == [r.lr for r in ref_history]
    assert [r.epoch for r in read_history(tmp_path / "run" / "history.jsonl")] == [1, 2, 3, 4]


def test_resume_with_more_epochs_equals_longer_run(tmp_path: Path) -> None:
    # Stopping after k epochs and resuming with a larger budget is the same as one long run.
    reference = make_run(seed=0)
    trainer(reference, config(tmp_path / "ref", epochs=3)).fit(reference.loader)

    first = make_run(seed=0)
    trainer(first, config(tmp_path / "run", epochs=1)).fit(first.loader)
    second = make_run(seed=5)
    with pytest.raises(ConfigError, match=r"epochs 1 -> 3; .*--allow-change epochs"):
        trainer(second, config(tmp_path / "run", epochs=3)).fit(second.loader, resume=True)
    more = config(tmp_path / "run", epochs=3, allow_change=["epochs"])
    trainer(second, more).fit(second.loader, resume=True)
    _assert_state_dicts_equal(second.model.state_dict(), reference.model.state_dict())
    records = read_history(tmp_path / "run" / "history.jsonl")
    assert [dict(r.changes) for r in records] == [{}, {"epochs": {"old": 1, "new": 3}}, {}]


def test_resume_restores_loader_shuffle_order(tmp_path: Path) -> None:
    # Without restoring the loader's generator the resumed epoch would see another order.
    seen: list[list[float]] = []

    def recording(model: nn.Module, batch: Batch) -> Tensor:
        seen.append(batch[1].flatten().tolist())
        return mse_step(model, batch)

    reference = make_run(seed=0)
    trainer(reference, config(tmp_path / "ref", epochs=2), recording).fit(reference.loader)
    expected = seen[STEPS_PER_EPOCH:]
    seen.clear()
    first = make_run(seed=0)
    trainer(first, config(tmp_path / "run", epochs=1)).fit(first.loader)
    second = make_run(seed=0)
    more = config(tmp_path / "run", epochs=2, allow_change=["epochs"])
    trainer(second, more, recording).fit(second.loader, resume=True)
    assert seen == expected


@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(
    tmp_path: Path, poison: float
) -> None:
    run = make_run(seed=0)
    trainer(run, config(tmp_path, epochs=1)).fit(run.loader)
    last = tmp_path / "last.pt"
    digest = _sha256(last)

    resumed = make_run(seed=0)
    step, _ = _counting(mse_step, poison_at=3, poison=poison)  # epoch 2, step 3
    more = config(tmp_path, epochs=3, allow_change=["epochs"])
    with pytest.raises(TrainingDivergedError, match=r"epoch 2, step 3") as info:
        trainer(resumed, more, step).fit(resumed.loader, resume=True)
    assert str(poison) in str(info.value)
    assert str(last) in str(info.value)
    assert (info.value.epoch, info.value.step, info.value.checkpoint) == (2, 3, last)
    assert _sha256(last) == digest
    assert len(read_history(tmp_path / "history.jsonl")) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "best.pt",
        "history.jsonl",
        "last.pt",
        "trainer_config.json",
    ]


def test_divergence_in_first_epoch_says_no_checkpoint_exists(tmp_path: Path) -> None:
    run = make_run(seed=0)
    step, _ = _counting(mse_step, poison_at=2)
    with pytest.raises(TrainingDivergedError, match="no checkpoint had been written") as info:
        trainer(run, config(tmp_path), step).fit(run.loader)
    assert info.value.checkpoint is None
    assert not (tmp_path / "last.pt").exists()


def test_crash_while_saving_keeps_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = make_run(seed=0)
    trainer(run, config(tmp_path, epochs=1)).fit(run.loader)
    digest = _sha256(tmp_path / "last.pt")
    real_save = torch.save

    def failing_save(obj: object, f: object) -> None:
        real_save({"partial": torch.zeros(3)}, f)  # type: ignore[arg-type]
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    resumed = make_run(seed=0)
    more = config(tmp_path, epochs=2, allow_change=["epochs"])
    with pytest.raises(OSError, match="disk full"):
        trainer(resumed, more).fit(resumed.loader, resume=True)
    monkeypatch.undo()
    assert _sha256(tmp_path / "last.pt") == digest
    assert load_training_state(tmp_path / "last.pt")["epoch"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_fresh_run_refuses_to_overwrite_a_run(tmp_path: Path) -> None:
    run = make_run(seed=0)
    trainer(run, config(tmp_path, epochs=1)).fit(run.loader)
    again = make_run(seed=0)
    with pytest.raises(FileExistsError, match="resume=True"):
        trainer(again, config(tmp_path, epochs=1)).fit(again.loader)


def test_resume_without_checkpoint_fails_clearly(tmp_path: Path) -> None:
    run = make_run(seed=0)
    with pytest.raises(FileNotFoundError, match="no training checkpoint"):
        trainer(run, config(tmp_path)).fit(run.loader, resume=True)


def test_deferred_loss_checks_train_the_same_weights_and_history(tmp_path: Path) -> None:
    # Reading the loss every 3 steps (as on an accelerator) changes nothing but when the host
    # waits: same weights, same per-epoch losses as reading it every step.
    every_step = make_run(seed=0)
    trainer(every_step, config(tmp_path / "a", epochs=2, loss_check_every=1)).fit(every_step.loader)
    deferred = make_run(seed=0)
    trainer(deferred, config(tmp_path / "b", epochs=2, loss_check_every=3)).fit(deferred.loader)
    _assert_state_dicts_equal(every_step.model.state_dict(), deferred.model.state_dict())
    losses_a = [r.train_loss for r in read_history(tmp_path / "a" / "history.jsonl")]
    losses_b = [r.train_loss for r in read_history(tmp_path / "b" / "history.jsonl")]
    assert losses_a == losses_b


def test_deferred_loss_check_reports_the_step_that_diverged(tmp_path: Path) -> None:
    run = make_run(seed=0)
    step, _ = _counting(mse_step, poison_at=2)  # found at the check after step 3
    with pytest.raises(TrainingDivergedError, match=r"epoch 1, step 2") as info:
        trainer(run, config(tmp_path, epochs=1, loss_check_every=3), step).fit(run.loader)
    assert (info.value.epoch, info.value.step, info.value.checkpoint) == (1, 2, None)
    assert not (tmp_path / "last.pt").exists()


def test_loss_check_every_is_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="loss_check_every"):
        config(tmp_path, loss_check_every=0)
