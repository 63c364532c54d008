"""Distributed training through torchrun (2 processes, gloo, CPU) and the single-process API."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _ddp_pretrain import main as reference_main
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lumbarssl.training import (
    barrier,
    cleanup,
    get_rank,
    get_world_size,
    init_distributed,
    is_distributed,
    is_main_process,
    load_training_state,
    read_history,
    unwrap_model,
)

SCRIPT = Path(__file__).with_name("_ddp_pretrain.py")
ROOT = Path(__file__).resolve().parent.parent
TORCHRUN_TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.slow
def test_two_process_torchrun_matches_one_process_with_double_batch(tmp_path: Path) -> None:
    per_process_batch = 4
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        str(SCRIPT),
        "--out",
        str(tmp_path / "ddp"),
        "--batch-size",
        str(per_process_batch),
    ]
    result = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=TORCHRUN_TIMEOUT_S, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr

    reference_main(["--out", str(tmp_path / "single"), "--batch-size", str(2 * per_process_batch)])

    ddp = read_history(tmp_path / "ddp" / "history.jsonl")
    single = read_history(tmp_path / "single" / "history.jsonl")
    assert [r.epoch for r in ddp] == [1, 2, 3]
    for a, b in zip(ddp, single, strict=True):
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-5, abs=1e-7)
        assert a.val["loss"] == pytest.approx(b.val["loss"], rel=1e-5, abs=1e-7)
    assert single[-1].train_loss < single[0].train_loss  # it did learn something

    ddp_weights = load_training_state(tmp_path / "ddp" / "last.pt")["model"]
    single_weights = load_training_state(tmp_path / "single" / "last.pt")["model"]
    assert ddp_weights.keys() == single_weights.keys()  # no "module." prefix from DDP
    for key, value in single_weights.items():
        torch.testing.assert_close(ddp_weights[key], value, rtol=1e-5, atol=1e-6)

    # Only rank 0 logs: each epoch's summary line appears once.
    output = result.stdout + result.stderr
    for epoch in (1, 2, 3):
        assert output.count(f"epoch {epoch}/3  train_loss") == 1, output


def test_without_torchrun_everything_is_single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    info = init_distributed(device="cpu")
    assert (info.rank, info.world_size, info.backend) == (0, 1, None)
    assert info.is_main_process
    assert not info.is_distributed
    assert not is_distributed()
    assert (get_rank(), get_world_size(), is_main_process()) == (0, 1, True)
    barrier()  # a no-op
    cleanup()  # a no-op


def test_partial_torchrun_environment_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(RuntimeError, match=r"WORLD_SIZE=2 but RANK, LOCAL_RANK, .* not set"):
        init_distributed()


def test_unwrap_model_strips_ddp_and_compile(tmp_path: Path) -> None:
    inner = nn.Linear(2, 2)
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        wrapped = DistributedDataParallel(inner)
        assert unwrap_model(wrapped) is inner
        assert unwrap_model(inner) is inner
        compiled = torch.compile(wrapped)
        assert isinstance(compiled, nn.Module)
        assert unwrap_model(compiled) is inner
        assert not is_distributed()  # a world of one is not distributed
    finally:
        cleanup()
