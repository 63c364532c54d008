"""Forward+backward time and peak extra memory of the multi-positive NT-Xent loss.

Compares :class:`lumbarssl.losses.MultiPositiveNTXent` (Eq. 3; unchunked, and with
``chunk_size`` anchors per block, ``chunk=...`` in the table) with
``pytorch_metric_learning.losses.SupConLoss`` (the same loss, checked equal in value and
gradient before timing) and with a floor: the similarity matmul alone,
``(normalize(z) @ normalize(z).T).sum()`` and its backward, which any implementation of the
loss has to pay for. Inputs are N discs x V views of D-dimensional random embeddings on CPU.

Timing: every repetition runs each implementation once, in an order rotated from one
repetition to the next (interleaved, so drifts in machine load hit all of them alike), after
warm-up runs; the table reports the median wall time of one forward+backward and ratios of
medians.

Memory: one extra forward+backward per implementation runs under
``torch.profiler.profile(profile_memory=True)``; every CPU allocation and free made by
PyTorch's allocator is recorded with the allocator's running total, and the peak of that total
minus its value before the step is the peak extra memory (inputs excluded, everything the step
allocates included: saved activations, temporaries, gradients). It is reported in MiB and in
units of one (N*V) x (N*V) float32 matrix.

Run (the numbers in docs/benchmarks.rst come from this command)::

    OMP_NUM_THREADS=1 python benchmarks/bench_losses.py
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import SupConLoss
from torch import Tensor
from torch.profiler import ProfilerActivity, profile

from lumbarssl.losses import MultiPositiveNTXent

Step = Callable[[Tensor], Tensor]
TARGET_DISCS = 1024  # the size at which the performance targets of the loss are stated


def make_steps(views: int, dim: int, temperature: float, chunk_size: int) -> dict[str, Step]:
    ours = MultiPositiveNTXent(temperature=temperature)
    chunked = MultiPositiveNTXent(temperature=temperature, chunk_size=chunk_size)
    supcon = SupConLoss(temperature=temperature)

    def lumbarssl_step(z: Tensor) -> Tensor:
        loss: Tensor = ours(z)
        return loss

    def chunked_step(z: Tensor) -> Tensor:
        loss: Tensor = chunked(z)
        return loss

    def supcon_step(z: Tensor) -> Tensor:
        n = z.shape[0]
        labels = torch.arange(n).repeat_interleave(views)
        loss: Tensor = supcon(z.reshape(n * views, dim), labels)
        return loss

    def floor_step(z: Tensor) -> Tensor:
        u = F.normalize(z.reshape(-1, dim), dim=1)
        return (u @ u.T).sum()

    return {
        "lumbarssl": lumbarssl_step,
        f"chunk={chunk_size}": chunked_step,
        "pml SupConLoss": supcon_step,
        "floor": floor_step,
    }


def run_once(step: Step, base: Tensor) -> float:
    z = base.detach().requires_grad_(True)
    start = time.perf_counter()
    torch.autograd.backward(step(z))
    return time.perf_counter() - start


def peak_extra_bytes(step: Step, base: Tensor) -> int:
    z = base.detach().requires_grad_(True)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        torch.autograd.backward(step(z))
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    memory = [e["args"] for e in events if e.get("name") == "[memory]"]
    memory = [a for a in memory if a.get("Device Type", 0) == 0]  # CPU only
    if not memory:
        return 0
    before = memory[0]["Total Allocated"] - memory[0]["Bytes"]
    return int(max(a["Total Allocated"] for a in memory) - before)


def check_equal(steps: dict[str, Step], base: Tensor) -> None:
    """Every loss implementation gives SupConLoss's value and gradient."""
    results = {}
    for name in steps:
        if name == "floor":
            continue
        z = base.detach().requires_grad_(True)
        loss = steps[name](z)
        torch.autograd.backward(loss)
        results[name] = (loss.detach(), z.grad)
    expected_value, expected_grad = results.pop("pml SupConLoss")
    for value, grad in results.values():
        torch.testing.assert_close(value, expected_value, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-7)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--discs", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--views", type=int, default=3)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--chunk-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"threads={torch.get_num_threads()}, V={args.views}, D={args.dim}, "
        f"tau={args.temperature}, repeats={args.repeats} (interleaved), seed={args.seed}"
    )
    steps = make_steps(args.views, args.dim, args.temperature, args.chunk_size)
    names = list(steps)
    header = (
        f"{'N':>5} {'M=N*V':>6} {'implementation':<15} {'median ms':>10} {'/ ours':>7} "
        f"{'/ floor':>8} {'peak MiB':>9} {'peak / M^2 f32':>15}"
    )
    print(header)
    print("-" * len(header))
    summaries: dict[int, dict[str, float]] = {}
    for n in args.discs:
        summary = summaries.setdefault(n, {})
        generator = torch.Generator().manual_seed(args.seed)
        base = torch.randn(n, args.views, args.dim, generator=generator)
        check_equal(steps, base)
        for name in names:
            for _ in range(args.warmup):
                run_once(steps[name], base)
        times: dict[str, list[float]] = {name: [] for name in names}
        for rep in range(args.repeats):
            shift = rep % len(names)
            for name in names[shift:] + names[:shift]:
                times[name].append(run_once(steps[name], base))
        medians = {name: statistics.median(t) for name, t in times.items()}
        m = n * args.views
        matrix_bytes = m * m * 4
        for name in names:
            peak = peak_extra_bytes(steps[name], base)
            print(
                f"{n:>5} {m:>6} {name:<15} {medians[name] * 1e3:>10.2f} "
                f"{medians[name] / medians['lumbarssl']:>7.2f} "
                f"{medians[name] / medians['floor']:>8.2f} {peak / 2**20:>9.1f} "
                f"{peak / matrix_bytes:>15.2f}"
            )
            if name == "lumbarssl":
                summary["memory"] = peak / matrix_bytes
        summary["speedup"] = medians["pml SupConLoss"] / medians["lumbarssl"]
        summary["floor"] = medians["lumbarssl"] / medians["floor"]
    print("/ ours, / floor: ratio of median times at the same N.")
    if TARGET_DISCS not in summaries:
        return
    summary = summaries[TARGET_DISCS]
    print(f"Targets at N={TARGET_DISCS}, V={args.views}:")
    targets = [
        ("SupConLoss time / lumbarssl time", summary["speedup"], ">=", 2.5),
        ("lumbarssl time / floor time", summary["floor"], "<=", 1.6),
        ("lumbarssl peak extra memory / M^2 f32", summary["memory"], "<=", 3.0),
    ]
    for label, value, op, bound in targets:
        met = value >= bound if op == ">=" else value <= bound
        print(f"  {label}: {value:.2f} (target {op} {bound}): {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
