"""Bit-exact resume with DataLoader workers (issue 11, item 4), in-process and after kill -9.

The reference is always an uninterrupted run built the same way: a resumed run must end with
equal weights (``torch.equal``) and equal per-epoch metrics (timing fields excluded).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from _rsna_factory import make_rsna_dir
from torch import Tensor, nn
from torch.utils.data import DataLoader

from lumbarssl.cli import main as cli_main
from lumbarssl.data.datasets import (
    TRAIN_STREAM,
    VALIDATION_STREAM,
    DiscDatasetConfig,
    DiscROIDataset,
)
from lumbarssl.data.prepare import PrepareConfig, prepare_cache
from lumbarssl.losses import MultiPositiveNTXent
from lumbarssl.models import read_checkpoint
from lumbarssl.training import (
    EpochRecord,
    RuntimeConfig,
    Trainer,
    TrainerConfig,
    load_training_state,
    read_history,
    seeded_generator,
)

ROOT = Path(__file__).resolve().parent.parent
EPOCHS = 3
BATCH = 4
DATA = DiscDatasetConfig(input_size=32, n_views=2)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    fixture = make_rsna_dir(tmp_path_factory.mktemp("rsna"), n_plain=4)
    out = tmp_path_factory.mktemp("cache")
    prepare_cache(fixture.root, out, PrepareConfig(roi_size=32, localizer_size=64), progress=False)
    return out


class _Interrupted(Exception):
    pass


def _run(cache_dir: Path, out: Path, *, persistent: bool, crash_at: int | None) -> Trainer[Any]:
    """Contrastive training of a tiny encoder, 2 workers; raise at step call ``crash_at``."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 5, stride=4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 7 * 7, 8)
    )
    rows = torch.arange(20)
    train = DiscROIDataset(
        cache_dir, "contrastive", config=DATA, indices=rows[:12], seed=7, stream=TRAIN_STREAM
    )
    val = DiscROIDataset(
        cache_dir, "contrastive", config=DATA, indices=rows[12:], seed=7, stream=VALIDATION_STREAM
    )

    def loader(dataset: DiscROIDataset, shuffle: bool) -> DataLoader[Any]:
        return DataLoader(
            dataset,
            batch_size=BATCH,
            shuffle=shuffle,
            num_workers=2,
            persistent_workers=persistent,
            generator=seeded_generator(11 if shuffle else 12),
        )

    loss_fn = MultiPositiveNTXent(temperature=0.5)
    calls = [0]

    def step(net: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        calls[0] += 1
        if calls[0] == crash_at:
            raise _Interrupted
        images = batch["image"]
        n, v = images.shape[:2]
        loss: Tensor = loss_fn(net(images.flatten(0, 1)).view(n, v, -1))
        return loss

    trainer: Trainer[Any] = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
        train_step=step,
        config=TrainerConfig(
            epochs=EPOCHS,
            out_dir=str(out),
            runtime=RuntimeConfig(device="cpu", progress="off"),
            monitor="val_loss",
        ),
    )
    trainer._train_loader = loader(train, True)  # type: ignore[attr-defined]
    trainer._val_loader = loader(val, False)  # type: ignore[attr-defined]
    return trainer


def _fit(trainer: Trainer[Any], *, resume: bool = False) -> list[EpochRecord]:
    return trainer.fit(
        trainer._train_loader,  # type: ignore[attr-defined]
        trainer._val_loader,  # type: ignore[attr-defined]
        resume=resume,
    )


def _metrics(records: list[EpochRecord]) -> list[tuple[object, ...]]:
    """Everything a record holds but its timing fields."""
    return [(r.epoch, r.train_loss, r.lr, dict(r.val), r.is_best) for r in records]


def _assert_same_weights(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("persistent", [False, True])
def test_resume_with_two_workers_is_bit_exact(
    cache_dir: Path, tmp_path: Path, persistent: bool
) -> None:
    reference = _run(cache_dir, tmp_path / "ref", persistent=persistent, crash_at=None)
    expected = _fit(reference)
    calls_per_epoch = 12 // BATCH + 8 // BATCH  # training steps, then validation batches
    first = _run(
        cache_dir, tmp_path / "run", persistent=persistent, crash_at=2 * calls_per_epoch + 1
    )
    with pytest.raises(_Interrupted):
        _fit(first)
    assert load_training_state(tmp_path / "run" / "last.pt")["epoch"] == 2
    second = _run(cache_dir, tmp_path / "run", persistent=persistent, crash_at=None)
    history = _fit(second, resume=True)

    _assert_same_weights(second.model.state_dict(), reference.model.state_dict())
    assert _metrics(history) == _metrics(expected)
    assert _metrics(read_history(tmp_path / "run" / "history.jsonl")) == _metrics(expected)
    # The views did change from epoch to epoch (a fixed epoch would also "resume" exactly).
    assert len({r.train_loss for r in expected}) == EPOCHS


def _pretrain_args(cache_dir: Path, out: Path) -> list[str]:
    return [
        "pretrain",
        "--cache-dir",
        str(cache_dir),
        "--out-dir",
        str(out),
        "--epochs",
        "2",
        "--batch-size",
        str(BATCH),
        "--views",
        "2",
        "--input-size",
        "32",
        "--val-size",
        "0.3",
        "--num-workers",
        "2",
        "--device",
        "cpu",
        "--progress",
        "off",
        "--data-source",
        "synthetic",
        "--seed",
        "3",
    ]


@pytest.fixture
def one_thread() -> Iterator[None]:
    # The killed run is a subprocess with one thread; in-process runs match it.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
def test_pretrain_killed_after_an_epoch_resumes_to_the_same_bytes(
    cache_dir: Path, tmp_path: Path
) -> None:
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert cli_main(_pretrain_args(cache_dir, reference)) == 0

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "lumbarssl", *_pretrain_args(cache_dir, killed)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its loader workers are killed with it below
    )
    try:
        deadline = time.monotonic() + 240
        while not (killed / "last.pt").exists():
            assert process.poll() is None, "pretrain ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.01)
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert load_training_state(killed / "last.pt")["epoch"] == 1
    assert not (killed / "model.pt").exists()

    assert cli_main([*_pretrain_args(cache_dir, killed), "--resume"]) == 0
    ours, theirs = read_checkpoint(killed / "model.pt"), read_checkpoint(reference / "model.pt")
    _assert_same_weights(ours.state_dict, theirs.state_dict)
    assert ours.metadata == theirs.metadata
    assert (killed / "model.pt").read_bytes() == (reference / "model.pt").read_bytes()
    assert _metrics(read_history(killed / "history.jsonl")) == _metrics(
        read_history(reference / "history.jsonl")
    )
    assert (killed / "splits.json").read_bytes() == (reference / "splits.json").read_bytes()
    # Every output, model.pt included, is created with the umask's permissions (0644 under
    # the usual 022), none with mkstemp's 0600.
    umask = os.umask(0)
    os.umask(umask)
    for run in (reference, killed):
        modes = {path.name: path.stat().st_mode & 0o777 for path in run.iterdir()}
        assert modes == dict.fromkeys(modes, 0o666 & ~umask), modes
