"""The gathered NT-Xent loss run for real: two gloo processes on CPU against one process.

Semantics under test (documented in :func:`lumbarssl.losses.multi_positive_ntxent`): each
rank's loss is the mean over its own anchors, scored against the keys of both ranks. With
equal anchor counts per rank, the mean of the two losses equals the single-process loss on
the concatenated batch, and each rank's local-row gradient is world_size (= 2) times the
single-process gradient of those rows, which DDP's 1/world_size averaging turns back into the
single-process gradient.
"""

from __future__ import annotations

import datetime
import multiprocessing as mp
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from lumbarssl.losses import multi_positive_ntxent
from lumbarssl.losses.ntxent import NTXentForm

WORLD = 2
TAU = 0.2

# Per-rank group ids. Ids 1 and 2 have one view on each rank (positives across ranks); 9 and
# 10 are singletons, so each rank has six anchors with a positive and one without.
EQUAL_IDS = ([0, 0, 1, 2, 3, 3, 9], [1, 2, 4, 4, 5, 5, 10])
# Unequal row counts (5 and 8) exercise the padded gather.
UNEQUAL_IDS = ([0, 0, 1, 2, 7], [1, 1, 2, 3, 3, 3, 7, 11])


def _rows(ids_per_rank: tuple[list[int], ...], dim: int, seed: int) -> Tensor:
    total = sum(len(ids) for ids in ids_per_rank)
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(total, dim, dtype=torch.float64, generator=generator)


def _stacked(seed: int) -> Tensor:
    return torch.randn(8, 3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _local_loss_and_grad(
    z: Tensor, ids: Tensor | None, form: NTXentForm, chunk_size: int | None
) -> tuple[Tensor, Tensor]:
    z = z.detach().clone().requires_grad_(True)
    loss = multi_positive_ntxent(
        z, ids, temperature=TAU, form=form, chunk_size=chunk_size, gather_distributed=True
    )
    torch.autograd.backward(loss)
    assert z.grad is not None
    return loss.detach(), z.grad


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        results: dict[str, tuple[Tensor, Tensor]] = {}
        start = sum(len(ids) for ids in EQUAL_IDS[:rank])
        rows = _rows(EQUAL_IDS, 6, seed=0)[start : start + len(EQUAL_IDS[rank])]
        ids = torch.tensor(EQUAL_IDS[rank])
        results["grouped-outside"] = _local_loss_and_grad(rows, ids, "outside", None)
        results["grouped-inside-chunked"] = _local_loss_and_grad(rows, ids, "inside", 3)

        discs = _stacked(seed=1)[4 * rank : 4 * rank + 4]
        results["stacked-outside-chunked"] = _local_loss_and_grad(discs, None, "outside", 5)
        results["stacked-inside"] = _local_loss_and_grad(discs, None, "inside", None)

        start = sum(len(ids) for ids in UNEQUAL_IDS[:rank])
        rows = _rows(UNEQUAL_IDS, 4, seed=2)[start : start + len(UNEQUAL_IDS[rank])]
        results["unequal"] = _local_loss_and_grad(
            rows, torch.tensor(UNEQUAL_IDS[rank]), "outside", None
        )
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def rank_results(
    tmp_path_factory: pytest.TempPathFactory,
) -> list[dict[str, tuple[Tensor, Tensor]]]:
    out_dir = tmp_path_factory.mktemp("ddp")
    context = mp.get_context("spawn")
    port = _free_port()
    procs = [context.Process(target=_worker, args=(r, port, str(out_dir))) for r in range(WORLD)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=10)
    codes = [proc.exitcode for proc in procs]
    assert codes == [0] * WORLD, f"worker exit codes {codes}"
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(WORLD)]


def _single_process(
    z: Tensor, ids: Tensor | None, form: NTXentForm, chunk_size: int | None = None
) -> tuple[Tensor, Tensor]:
    z = z.detach().clone().requires_grad_(True)
    loss = multi_positive_ntxent(z, ids, temperature=TAU, form=form, chunk_size=chunk_size)
    (grad,) = torch.autograd.grad(loss, z)
    return loss.detach(), grad


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("key", "form"),
    [("grouped-outside", "outside"), ("grouped-inside-chunked", "inside")],
)
def test_grouped_ids_match_single_process(
    rank_results: list[dict[str, tuple[Tensor, Tensor]]], key: str, form: NTXentForm
) -> None:
    rows = _rows(EQUAL_IDS, 6, seed=0)
    ids = torch.tensor(EQUAL_IDS[0] + EQUAL_IDS[1])
    loss, grad = _single_process(rows, ids, form)
    losses = [rank_results[r][key][0] for r in range(WORLD)]
    torch.testing.assert_close(sum(losses) / WORLD, loss)
    local_grads = torch.cat([rank_results[r][key][1] for r in range(WORLD)])
    torch.testing.assert_close(local_grads, WORLD * grad)


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("key", "form"),
    [("stacked-outside-chunked", "outside"), ("stacked-inside", "inside")],
)
def test_view_stacked_matches_single_process(
    rank_results: list[dict[str, tuple[Tensor, Tensor]]], key: str, form: NTXentForm
) -> None:
    loss, grad = _single_process(_stacked(seed=1), None, form)
    losses = [rank_results[r][key][0] for r in range(WORLD)]
    torch.testing.assert_close(sum(losses) / WORLD, loss)
    local_grads = torch.cat([rank_results[r][key][1] for r in range(WORLD)])
    torch.testing.assert_close(local_grads, WORLD * grad)


def _dense_per_anchor(z: Tensor, ids: Tensor) -> tuple[Tensor, Tensor]:
    """Eq. 3 per anchor from full masks and log_softmax, and which anchors have a positive."""
    u = F.normalize(z, dim=1)
    eye = torch.eye(len(ids), dtype=torch.bool)
    logits = (u @ u.T / TAU).masked_fill(eye, float("-inf"))
    log_prob = torch.log_softmax(logits, dim=1).masked_fill(eye, 0.0)
    positive = (ids[:, None] == ids[None, :]) & ~eye
    count = positive.sum(1)
    return -(log_prob * positive).sum(1) / count.clamp_min(1), count > 0


@pytest.mark.timeout(300)
def test_unequal_rank_sizes_give_each_rank_the_mean_over_its_own_anchors(
    rank_results: list[dict[str, tuple[Tensor, Tensor]]],
) -> None:
    z = _rows(UNEQUAL_IDS, 4, seed=2).requires_grad_(True)
    ids = torch.tensor(UNEQUAL_IDS[0] + UNEQUAL_IDS[1])
    per_anchor, has_positive = _dense_per_anchor(z, ids)
    split = len(UNEQUAL_IDS[0])
    expected = [
        per_anchor[rank][has_positive[rank]].mean()
        for rank in (slice(0, split), slice(split, None))
    ]
    for r in range(WORLD):
        torch.testing.assert_close(rank_results[r]["unequal"][0], expected[r].detach())
    # Every rank's rows get the gradient of the sum of both ranks' losses.
    (grad,) = torch.autograd.grad(expected[0] + expected[1], z)
    local_grads = torch.cat([rank_results[r]["unequal"][1] for r in range(WORLD)])
    torch.testing.assert_close(local_grads, grad)
