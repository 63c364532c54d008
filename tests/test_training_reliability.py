"""Issue 11 on the training side: resume with allowed changes, the loss guard, one-line errors."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import pickle
import shlex
from pathlib import Path
from typing import Any

import pytest
import torch
from _training_toys import STEPS_PER_EPOCH, Batch, config, make_run, mse_step, trainer
from torch import Tensor, nn

from lumbarssl.cli import build_parser
from lumbarssl.cli import main as cli_main
from lumbarssl.cli._stages import resume_command
from lumbarssl.errors import ConfigError, InputError, TrainingDivergedError
from lumbarssl.pipeline import PretrainConfig
from lumbarssl.pipeline._common import prepare_out_dir
from lumbarssl.training import load_training_state, read_history


def _scaled(factor_after: int, factor: float) -> Any:
    """mse_step, with the loss multiplied by ``factor`` from call ``factor_after`` on."""
    calls = [0]

    def step(model: nn.Module, batch: Batch) -> Tensor:
        calls[0] += 1
        loss = mse_step(model, batch)
        return loss * factor if calls[0] > factor_after else loss

    return step


def test_resume_with_an_allowed_lr_change_applies_and_records_it(tmp_path: Path) -> None:
    base = make_run(seed=0, lr=1e-2)  # cosine over T_max=4 epochs
    trainer(base, config(tmp_path, epochs=1)).fit(base.loader)

    lower = make_run(seed=0, lr=1e-3)
    with pytest.raises(ConfigError) as info:
        trainer(lower, config(tmp_path, epochs=2, allow_change=["epochs"])).fit(
            lower.loader, resume=True
        )
    message = str(info.value)
    assert "lr [0.01] -> [0.001]; to apply and record the change" in message
    assert "--allow-change lr" in message
    assert "\n" not in message

    lower = make_run(seed=0, lr=1e-3)
    resumed = trainer(lower, config(tmp_path, epochs=2, allow_change=["epochs", "lr"]))
    history = resumed.fit(lower.loader, resume=True)
    # The cosine schedule continues from the new base: lr_e = 1e-3 * (1 + cos(pi e / 4)) / 2.
    assert history[0].lr == pytest.approx((1e-2,))
    assert history[1].lr == pytest.approx((1e-3 * (1 + math.cos(math.pi / 4)) / 2,))
    assert lower.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.5)
    records = read_history(tmp_path / "history.jsonl")
    assert [dict(r.changes) for r in records] == [
        {},
        {"epochs": {"old": 1, "new": 2}, "lr": {"old": [0.01], "new": [0.001]}},
    ]


def test_settings_outside_the_allowed_list_are_refused(tmp_path: Path) -> None:
    run = make_run(seed=0)
    trainer(run, config(tmp_path, epochs=1)).fit(run.loader)
    again = make_run(seed=0)
    changed = config(tmp_path, epochs=1, monitor_mode="max", allow_change=["epochs"])
    with pytest.raises(ConfigError, match=r"monitor_mode min -> max; monitor_mode cannot change"):
        trainer(again, changed).fit(again.loader, resume=True)
    with pytest.raises(ValueError, match=r"allow_change names \['monitor'\]"):
        config(tmp_path, allow_change=["monitor"])


@pytest.mark.parametrize("mode", ["warn", "stop", "off"])
def test_loss_guard_on_a_finite_but_absurd_loss(tmp_path: Path, mode: str) -> None:
    run = make_run(seed=0)
    # Epoch 1 is normal; from epoch 2 on the loss is 1e6 times larger (finite).
    step = _scaled(STEPS_PER_EPOCH, 1e6)
    fit = trainer(run, config(tmp_path, epochs=3, loss_guard=mode), step)
    if mode == "stop":
        with pytest.raises(TrainingDivergedError) as info:
            fit.fit(run.loader)
        message = str(info.value)
        assert "at epoch 2 is more than 1000 times the first epoch's" in message
        assert info.value.checkpoint == tmp_path / "last.pt"
        assert load_training_state(tmp_path / "last.pt")["epoch"] == 1  # last good kept
        assert len(read_history(tmp_path / "history.jsonl")) == 1
        return
    if mode == "warn":
        with pytest.warns(RuntimeWarning, match="more than 1000 times the first epoch's"):
            history = fit.fit(run.loader)
    else:
        history = fit.fit(run.loader)
    assert len(history) == 3
    assert history[1].train_loss > 1e3 * history[0].train_loss  # the guard's premise


def test_loss_guard_stays_quiet_on_a_normal_run(
    tmp_path: Path, recwarn: pytest.WarningsRecorder
) -> None:
    run = make_run(seed=0)
    trainer(run, config(tmp_path, epochs=3, loss_guard="stop")).fit(run.loader)
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_loss_guard_factor_must_exceed_one(tmp_path: Path) -> None:
    for bad in (1, 0.5, math.nan):
        with pytest.raises(ValueError, match="loss_guard_factor must be a number > 1"):
            config(tmp_path, loss_guard_factor=bad)


def _stage(tmp_path: Path, **changes: Any) -> PretrainConfig:
    return PretrainConfig(cache_dir="c", out_dir=str(tmp_path), **changes)


def test_stage_resume_refuses_changes_unless_allowed(tmp_path: Path) -> None:
    prepare_out_dir(_stage(tmp_path))
    with pytest.raises(ConfigError) as info:
        prepare_out_dir(_stage(tmp_path, lr=1e-4, epochs=80, resume=True))
    message = str(info.value)
    assert "epochs: 60 -> 80, lr: 0.001 -> 0.0001" in message
    assert "add --allow-change epochs,lr" in message
    allowed = _stage(tmp_path, lr=1e-4, epochs=80, resume=True, allow_change=("lr,epochs",))
    assert allowed.allow_change == ("lr", "epochs")
    prepare_out_dir(allowed)
    with pytest.raises(ConfigError, match="batch_size cannot change on resume"):
        prepare_out_dir(
            _stage(tmp_path, lr=1e-4, epochs=80, batch_size=8, resume=True, allow_change=("lr",))
        )
    with pytest.raises(ValueError, match=r"allow_change names \['temperature'\]"):
        _stage(tmp_path, allow_change=("temperature",))


def test_a_saved_config_without_the_new_settings_still_resumes(tmp_path: Path) -> None:
    prepare_out_dir(_stage(tmp_path))
    saved = tmp_path / "stage_config.json"
    data = json.loads(saved.read_text())
    for key in ("allow_change", "loss_guard", "loss_guard_factor"):
        data.pop(key)
    saved.write_text(json.dumps(data))
    prepare_out_dir(_stage(tmp_path, resume=True))


def test_divergence_advice_names_the_exact_resume_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import lumbarssl.cli.pretrain

    last = tmp_path / "last.pt"

    def diverging(config: PretrainConfig) -> None:
        raise TrainingDivergedError(epoch=3, step=7, loss=math.nan, checkpoint=last)

    monkeypatch.setattr(lumbarssl.cli.pretrain, "run_pretraining", diverging)
    argv = ["pretrain", "--cache-dir", "c", "--out-dir", str(tmp_path), "--lr", "0.002"]
    assert cli_main(argv) == 4
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    command = (
        f"lumbarssl pretrain --config {tmp_path / 'stage_config.json'} --resume "
        "--allow-change lr --lr 0.0002"
    )
    assert err.rstrip("\n").endswith(f"with a lower learning rate run: {command}")
    assert "weights_only" not in err


def test_resume_command_lowers_every_learning_rate_and_parses(tmp_path: Path) -> None:
    from lumbarssl.pipeline import FinetuneConfig

    config = FinetuneConfig(cache_dir="c", out_dir=str(tmp_path), mode="scratch")
    command = resume_command("finetune", config, resume=True)
    assert "--allow-change backbone-lr,head-lr" in command
    args = build_parser().parse_args(shlex.split(command)[1:])
    assert args.resume is True
    assert args.config == str(tmp_path / "stage_config.json")
    again = dataclasses.replace(config, resume=True, allow_change=tuple(args.allow_change))
    assert again.allow_change == ("backbone_lr", "head_lr")
    assert f"--backbone-lr {config.backbone_lr / 10:g}" in command
    assert f"--head-lr {config.head_lr / 10:g}" in command
    fresh = resume_command("finetune", config, resume=False)
    assert "--resume" not in fresh
    assert "--allow-change" not in fresh


class _Evil:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo pwned",))


def _write_pickle_checkpoint(path: Path) -> None:
    torch.save({"model": _Evil()}, path)


@pytest.mark.parametrize("kind", ["pickle", "garbage", "truncated", "ansi"])
def test_a_refused_checkpoint_is_one_line_without_weights_only_advice(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "last.pt"
    if kind == "pickle":
        _write_pickle_checkpoint(path)
    elif kind == "garbage":
        path.write_bytes(b"not a checkpoint" * 10)
    elif kind == "truncated":
        buffer = io.BytesIO()
        torch.save({"x": torch.zeros(1000)}, buffer)
        path.write_bytes(buffer.getvalue()[:500])
    else:
        path.write_bytes(b"x")

        def colourful(*args: Any, **kwargs: Any) -> None:
            raise pickle.UnpicklingError(
                "\x1b[31mWeights only load failed.\x1b[0m Re-running `torch.load` with "
                "`weights_only` set to `False` will likely succeed\n\n"
                "\x1b[1mUnsupported global: GLOBAL builtins.eval\x1b[0m\nCheck the documentation"
            )

        monkeypatch.setattr(torch, "load", colourful)
    with pytest.raises(InputError) as info:
        load_training_state(path)
    message = str(info.value)
    assert message.startswith(f"{path} is not a readable training checkpoint (")
    assert "\n" not in message
    assert "\x1b" not in message
    assert "weights_only" not in message
    assert "False" not in message
    if kind == "pickle":
        assert "posix.system" in message or "os.system" in message
    if kind == "ansi":
        assert "(Unsupported global: GLOBAL builtins.eval)" in message
    assert "only tensors and plain containers are loaded" in message
