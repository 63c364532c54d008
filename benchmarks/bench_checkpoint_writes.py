"""What does a best epoch's checkpoint cost: ``best.pt`` and ``last.pt`` serialised, or linked?

The trainer writes ``best.pt`` and ``last.pt`` at the end of an epoch that improves the
monitored metric. Serialising the same state twice (before) is timed against serialising it
once and giving ``last.pt`` a second name of the same file (``atomic_duplicate``, now), with
the paper's model: a 1-channel ResNet-18 with its AdamW state, about 134 MB. Both variants
fsync and rename atomically; they alternate, and the medians and their ratio are printed.

    python benchmarks/bench_checkpoint_writes.py --repeats 7 --dir /tmp/ckpt-bench
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from lumbarssl._core.atomic import atomic_duplicate
from lumbarssl.models import resnet18_encoder
from lumbarssl.training import atomic_save


def _state() -> dict[str, object]:
    """A training state of the paper's encoder after one AdamW step."""
    torch.manual_seed(0)
    model = resnet18_encoder(in_chans=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 1, 64, 64)).sum().backward()
    optimizer.step()
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict()}


def main() -> None:
    """Print the median seconds of each variant and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (a temp dir)")
    args = parser.parse_args()
    state = _state()
    times: dict[str, list[float]] = {"serialise twice": [], "serialise once + link": []}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        best, last = Path(tmp) / "best.pt", Path(tmp) / "last.pt"
        atomic_save(state, last)  # a previous epoch's files, as in a run
        atomic_save(state, best)
        for _ in range(args.repeats):
            start = time.perf_counter()
            atomic_save(state, best)
            atomic_save(state, last)
            times["serialise twice"].append(time.perf_counter() - start)
            start = time.perf_counter()
            atomic_save(state, best)
            atomic_duplicate(best, last)
            times["serialise once + link"].append(time.perf_counter() - start)
        size = best.stat().st_size / 1e6
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"best epoch's checkpoint writes, {size:.0f} MB state, {args.repeats} repeats")
    for name, value in medians.items():
        print(f"  {name:24s} median {value * 1000:8.1f} ms")
    ratio = medians["serialise once + link"] / medians["serialise twice"]
    print(f"  ratio once+link / twice: {ratio:.2f}")


if __name__ == "__main__":
    main()
