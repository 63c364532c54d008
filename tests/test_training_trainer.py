"""Schedulers, best checkpoint, early stopping, history, progress and config of the Trainer."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest
import torch
from _training_toys import STEPS_PER_EPOCH, Batch, Scripted, config, make_run, mse_step, trainer
from torch import Tensor, nn
from torch.optim.lr_scheduler import CosineAnnealingLR, ReduceLROnPlateau

from lumbarssl.training import (
    RuntimeConfig,
    Trainer,
    TrainerConfig,
    load_training_state,
    read_history,
)


def _plateau_reference(
    scores: Sequence[float], lr: float, *, factor: float, patience: int, mode: str
) -> list[float]:
    """Learning rate of each epoch under the ReduceLROnPlateau rule as documented by PyTorch.

    An epoch whose metric is not better than the best so far is "bad"; once more than
    ``patience`` bad epochs accumulate, the rate is multiplied by ``factor`` for the next epoch
    and the count restarts (threshold and cooldown zero).
    """
    lrs, best, bad = [], math.inf if mode == "min" else -math.inf, 0
    for score in scores:
        lrs.append(lr)
        if (score < best) if mode == "min" else (score > best):
            best, bad = score, 0
        else:
            bad += 1
        if bad > patience:
            lr, bad = lr * factor, 0
    return lrs


def test_cosine_schedule_matches_closed_form(tmp_path: Path) -> None:
    epochs, base, eta_min = 5, 0.1, 0.01
    run = make_run(seed=0, lr=base)
    run.scheduler = CosineAnnealingLR(run.optimizer, T_max=epochs, eta_min=eta_min)
    history = trainer(run, config(tmp_path, epochs=epochs)).fit(run.loader)
    for e, record in enumerate(history):
        expected = eta_min + (base - eta_min) * (1 + math.cos(math.pi * e / epochs)) / 2
        assert record.lr == pytest.approx((expected,), rel=1e-12)


@pytest.mark.parametrize("mode", ["min", "max"])
def test_reduce_on_plateau_follows_the_validation_metric(tmp_path: Path, mode: str) -> None:
    scores = [0.5, 0.6, 0.6, 0.55, 0.6, 0.58, 0.7, 0.7]
    run = make_run(seed=0, lr=1.0)
    run.scheduler = ReduceLROnPlateau(
        run.optimizer,
        mode="min" if mode == "min" else "max",
        factor=0.5,
        patience=1,
        threshold=0.0,
    )
    cfg = config(tmp_path, epochs=len(scores), monitor="val_score", monitor_mode=mode)
    fit = Trainer(
        run.model,
        run.optimizer,
        train_step=mse_step,
        config=cfg,
        scheduler=run.scheduler,
        evaluate=Scripted(scores),
    )
    history = fit.fit(run.loader, run.val_loader)
    expected = _plateau_reference(scores, 1.0, factor=0.5, patience=1, mode=mode)
    assert [r.lr[0] for r in history] == pytest.approx(expected)
    assert len(set(expected)) > 1  # the schedule did reduce


def test_scheduler_metric_can_differ_from_monitor(tmp_path: Path) -> None:
    run = make_run(seed=0, lr=1.0)
    run.scheduler = ReduceLROnPlateau(run.optimizer, mode="max", factor=0.1, patience=0)
    cfg = config(tmp_path, epochs=3, monitor="val_loss", scheduler_metric="val_score")

    def evaluate(model: nn.Module, batches: Iterable[Batch]) -> dict[str, float]:
        return {"loss": 1.0, "score": 0.3}  # the score never improves after epoch 1

    history = Trainer(
        run.model,
        run.optimizer,
        train_step=mse_step,
        config=cfg,
        scheduler=run.scheduler,
        evaluate=evaluate,
    ).fit(run.loader, run.val_loader)
    assert [r.lr[0] for r in history] == pytest.approx([1.0, 1.0, 0.1])


def test_reduce_on_plateau_without_validation_is_rejected(tmp_path: Path) -> None:
    run = make_run(seed=0)
    run.scheduler = ReduceLROnPlateau(run.optimizer)
    fit = trainer(run, config(tmp_path, monitor="train_loss", scheduler_metric="val_loss"))
    with pytest.raises(ValueError, match=r"scheduler_metric='val_loss'.*no val_loader"):
        fit.fit(run.loader)


def test_scheduler_metric_needs_reduce_on_plateau(tmp_path: Path) -> None:
    run = make_run(seed=0)
    with pytest.raises(ValueError, match=r"only applies to ReduceLROnPlateau.*CosineAnnealingLR"):
        trainer(run, config(tmp_path, scheduler_metric="val_loss"))


def test_monitoring_a_metric_evaluate_does_not_return_fails_clearly(tmp_path: Path) -> None:
    run = make_run(seed=0)
    cfg = config(tmp_path, monitor="val_balanced_accuracy", monitor_mode="max")
    with pytest.raises(ValueError, match=r"monitor='val_balanced_accuracy'.*val_loss"):
        trainer(run, cfg).fit(run.loader, run.val_loader)


@pytest.mark.parametrize(("mode", "best_epoch"), [("max", 4), ("min", 1)])
def test_best_checkpoint_holds_the_weights_of_the_best_epoch(
    tmp_path: Path, mode: str, best_epoch: int
) -> None:
    scores = [0.2, 0.6, 0.4, 0.7, 0.5]
    evaluate = Scripted(scores)
    run = make_run(seed=0)
    cfg = config(tmp_path, epochs=len(scores), monitor="val_score", monitor_mode=mode)
    history = Trainer(
        run.model, run.optimizer, train_step=mse_step, config=cfg, evaluate=evaluate
    ).fit(run.loader, run.val_loader)

    running = [max(scores[: i + 1]) if mode == "max" else min(scores[: i + 1]) for i in range(5)]
    improved = [i == 0 or running[i] != running[i - 1] for i in range(5)]
    assert [r.is_best for r in history] == improved
    best = load_training_state(tmp_path / "best.pt")
    assert best["epoch"] == best_epoch
    assert best["progress"]["best_value"] == scores[best_epoch - 1]
    for key, value in evaluate.weights[best_epoch - 1].items():
        assert torch.equal(best["model"][key], value), key
    assert load_training_state(tmp_path / "last.pt")["epoch"] == len(scores)


def test_early_stopping_after_patience_epochs_without_improvement(tmp_path: Path) -> None:
    scores = [0.5, 0.6, 0.6, 0.55, 0.59, 0.9, 0.95]
    run = make_run(seed=0)
    cfg = config(
        tmp_path,
        epochs=len(scores),
        monitor="val_score",
        monitor_mode="max",
        early_stopping_patience=3,
    )
    history = Trainer(
        run.model, run.optimizer, train_step=mse_step, config=cfg, evaluate=Scripted(scores)
    ).fit(run.loader, run.val_loader)
    assert [r.epoch for r in history] == [1, 2, 3, 4, 5]  # best at 2, then 3 bad epochs
    last = load_training_state(tmp_path / "last.pt")
    assert last["progress"]["stopped_early"]
    assert last["progress"]["best_epoch"] == 2

    # Resuming a run that stopped early trains no further.
    again = make_run(seed=0)
    calls = [0]

    def counting(model: nn.Module, batch: Batch) -> Tensor:
        calls[0] += 1
        return mse_step(model, batch)

    resumed = Trainer(
        again.model, again.optimizer, train_step=counting, config=cfg, evaluate=Scripted(scores)
    ).fit(again.loader, again.val_loader, resume=True)
    assert calls[0] == 0
    assert len(resumed) == 5


def test_history_file_lines_parse_and_carry_the_fields(tmp_path: Path) -> None:
    run = make_run(seed=0)
    cfg = config(tmp_path, epochs=3, monitor="val_loss")
    fit = trainer(run, cfg)
    history = fit.fit(run.loader, run.val_loader)
    lines = (tmp_path / "history.jsonl").read_text().splitlines()
    assert len(lines) == 3
    for epoch, line in enumerate(lines, start=1):
        record = json.loads(line)
        assert set(record) == {
            "epoch",
            "train_loss",
            "val_loss",
            "lr",
            "seconds",
            "images_per_s",
            "is_best",
        }
        assert record["epoch"] == epoch
        assert len(record["lr"]) == len(run.optimizer.param_groups)
        assert record["seconds"] > 0
        assert record["images_per_s"] > 0
        assert math.isfinite(record["train_loss"])
        assert math.isfinite(record["val_loss"])
    assert read_history(tmp_path / "history.jsonl") == history
    assert TrainerConfig.load(tmp_path / "trainer_config.json") == cfg


def test_train_loss_is_the_sample_weighted_mean_of_step_losses(tmp_path: Path) -> None:
    losses: list[float] = []

    def recording(model: nn.Module, batch: Batch) -> Tensor:
        loss = mse_step(model, batch)
        losses.append(loss.item())
        return loss

    run = make_run(seed=0)
    history = trainer(run, config(tmp_path, epochs=1), recording).fit(run.loader)
    assert len(losses) == STEPS_PER_EPOCH  # equal batches: weighted mean is the plain mean
    assert history[0].train_loss == pytest.approx(sum(losses) / len(losses), rel=1e-12)


def test_gradient_clipping_bounds_the_update(tmp_path: Path) -> None:
    # With plain SGD at lr 1, one step moves the weights by exactly the (clipped) gradient.
    max_norm = 1e-3
    run = make_run(seed=0)
    run.optimizer = torch.optim.SGD(run.model.parameters(), lr=1.0)
    run.scheduler = None
    before = [p.detach().clone() for p in run.model.parameters()]
    one_batch = [next(iter(run.loader))]
    cfg = config(tmp_path, epochs=1, max_grad_norm=max_norm)
    Trainer(run.model, run.optimizer, train_step=mse_step, config=cfg).fit(one_batch)
    moved = torch.cat(
        [(p.detach() - b).flatten() for p, b in zip(run.model.parameters(), before, strict=True)]
    )
    assert torch.linalg.vector_norm(moved).item() == pytest.approx(max_norm, rel=1e-4)


def test_plain_lines_when_the_stream_is_not_a_terminal(tmp_path: Path) -> None:
    stream = io.StringIO()
    run = make_run(seed=0)
    cfg = config(tmp_path, epochs=2, progress="auto", log_every=2)
    Trainer(run.model, run.optimizer, train_step=mse_step, config=cfg, stream=stream).fit(
        run.loader
    )
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert f"epoch 1/2 step 2/{STEPS_PER_EPOCH} loss" in lines[0]
    summaries = [line for line in lines if "train_loss" in line]
    assert [line.split()[1] for line in summaries] == ["1/2", "2/2"]
    assert all("images/s" in line for line in summaries)


def test_default_stream_is_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run(seed=0)
    trainer(run, config(tmp_path, epochs=1, progress="auto")).fit(run.loader)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "epoch 1/1" in captured.err
    assert "\r" not in captured.err


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    stream = _Terminal()
    run = make_run(seed=0)
    cfg = config(tmp_path, epochs=1, progress="auto")
    Trainer(run.model, run.optimizer, train_step=mse_step, config=cfg, stream=stream).fit(
        run.loader
    )
    text = stream.getvalue()
    assert "\r" in text  # tqdm redraws in place
    assert "epoch 1/1" in text


def test_non_scalar_loss_is_rejected(tmp_path: Path) -> None:
    def per_sample(model: nn.Module, batch: Batch) -> Tensor:
        prediction: Tensor = model(batch[0])
        return (prediction - batch[1]).pow(2).flatten()

    run = make_run(seed=0)
    with pytest.raises(ValueError, match=r"scalar loss, got shape \(6,\)"):
        trainer(run, config(tmp_path), per_sample).fit(run.loader)


def test_monitoring_validation_without_val_loader_is_rejected(tmp_path: Path) -> None:
    run = make_run(seed=0)
    with pytest.raises(ValueError, match=r"monitor='val_loss'.*no val_loader"):
        trainer(run, config(tmp_path, monitor="val_loss")).fit(run.loader)


def test_config_round_trips_through_json(tmp_path: Path) -> None:
    cfg = TrainerConfig(
        epochs=60,
        out_dir=str(tmp_path),
        runtime=RuntimeConfig(amp="bf16"),
        max_grad_norm=1.0,
        monitor="val_balanced_accuracy",
        monitor_mode="max",
        early_stopping_patience=5,
    )
    cfg.save(tmp_path / "c.json")
    assert TrainerConfig.load(tmp_path / "c.json") == cfg
    assert TrainerConfig.from_json(cfg.to_json()) == cfg
    assert TrainerConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("epochs", 0, "epochs must be an integer >= 1, got 0"),
        ("amp", "fp8", "amp must be one of"),
        ("monitor_mode", "up", "monitor_mode must be one of"),
        ("max_grad_norm", 0.0, "max_grad_norm must be a finite number > 0"),
        ("max_grad_norm", math.inf, "max_grad_norm must be a finite number > 0"),
        ("early_stopping_patience", 0, "early_stopping_patience must be an integer >= 1"),
        ("monitor", "balanced_accuracy", "monitor must be 'train_loss' or 'val_<metric>'"),
        ("progress", "fancy", "progress must be one of"),
        ("log_every", 0, "log_every must be an integer >= 1"),
    ],
)
def test_config_rejects_bad_values(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TrainerConfig.from_dict({"epochs": 2, "out_dir": "x", field: value})


def test_config_rejects_unknown_fields(tmp_path: Path) -> None:
    (tmp_path / "c.json").write_text('{"epochs": 2, "out_dir": "x", "lr": 0.1}')
    with pytest.raises(ValueError, match=r"c\.json: unknown TrainerConfig key 'lr'"):
        TrainerConfig.load(tmp_path / "c.json")


def test_compiled_training_checkpoints_the_plain_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The eager backend keeps the test fast; what matters is the wrapping, not code generation.
    real_compile = torch.compile
    compiled: list[nn.Module] = []

    def eager_compile(model: nn.Module) -> nn.Module:
        compiled.append(model)
        result = real_compile(model, backend="eager")
        assert isinstance(result, nn.Module)
        return result

    monkeypatch.setattr(torch, "compile", eager_compile)
    run = make_run(seed=0)
    seen: list[nn.Module] = []

    def recording(model: nn.Module, batch: Batch) -> Tensor:
        seen.append(model)
        return mse_step(model, batch)

    trainer(run, config(tmp_path, epochs=1, compile=True), recording).fit(run.loader)
    assert compiled == [run.model]
    assert seen[0] is not run.model  # training went through the compiled wrapper
    state = load_training_state(tmp_path / "last.pt")
    assert state["model"].keys() == run.model.state_dict().keys()


@pytest.mark.parametrize("background", [True, False])
def test_a_best_epoch_is_serialised_once_and_best_pt_survives_later_epochs(
    tmp_path: Path, background: bool
) -> None:
    # Scores 0.5, 0.4, 0.7 (max): epochs 1 and 3 are the best so far, epoch 2 is not.
    for epochs, best_epoch in ((1, 1), (2, 1), (3, 3)):
        out = tmp_path / f"{epochs}-epochs"
        run = make_run(seed=0)
        cfg = config(
            out,
            epochs=epochs,
            monitor="val_score",
            monitor_mode="max",
            background_checkpoints=background,
        )
        Trainer(
            run.model,
            run.optimizer,
            train_step=mse_step,
            config=cfg,
            evaluate=Scripted([0.5, 0.4, 0.7][:epochs]),
        ).fit(run.loader, run.val_loader)
        best = load_training_state(out / "best.pt")
        last = load_training_state(out / "last.pt")
        assert (best["epoch"], last["epoch"]) == (best_epoch, epochs)
        # One file under two names when the last epoch is the best; two files otherwise.
        assert (out / "best.pt").samefile(out / "last.pt") == (best_epoch == epochs)
        for key, value in run.model.state_dict().items():
            assert torch.equal(last["model"][key], value)
        assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []
