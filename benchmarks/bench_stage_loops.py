r"""The first steps of each stage's step loop, run through the stage's own command-line code.

Each stage runs in this process as ``lumbarssl <stage> ... --epochs 1`` would, with
``Trainer._train_epoch`` wrapped: it takes the first K batches of epoch 1, times them (loader
start included) and stops the stage there (no validation, checkpoint or export). Only
``lumbarssl.cli.main`` and ``Trainer._train_epoch`` are used, so the same script times an
older checkout: put that checkout first on ``PYTHONPATH`` and alternate the two, e.g.::

    for tree in old new old new; do
        PYTHONPATH=/path/to/$tree OMP_NUM_THREADS=1 python benchmarks/bench_stage_loops.py \\
            --tag $tree --out loops.jsonl --cache-dir RUN/cache --encoder RUN/pretrain/model.pt
    done

Each stage appends one JSON line ``{"tree", "stage", "loop_s", "first_batch_s", "per_step_s",
"steps"}`` to ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from lumbarssl.cli import main as cli_main
from lumbarssl.training import trainer as trainer_module

STAGES = ("pretrain", "scratch", "linear_probe", "finetune", "localizer")
#: Timed steps per stage (a pretraining step is about ten fine-tuning steps on the CPU).
STEPS = {"pretrain": 3, "scratch": 4, "linear_probe": 4, "finetune": 4, "localizer": 4}


class _Done(BaseException):
    """Ends the stage once its first steps are timed (not an Exception: nothing catches it)."""


def _stage_args(stage: str, encoder: str) -> list[str]:
    if stage == "pretrain":
        return ["pretrain"]
    if stage == "localizer":
        return ["train-localizer"]
    args = ["finetune", "--mode", stage]
    return args if stage == "scratch" else [*args, "--encoder", encoder]


def main() -> None:
    """Time the stages and append their lines to ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tag", required=True, help="name of the checkout, e.g. old or new")
    parser.add_argument("--out", required=True, help="JSON-lines file to append to")
    parser.add_argument("--cache-dir", required=True, help="a prepared cache")
    parser.add_argument("--encoder", required=True, help="a pretrained model.pt")
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated")
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--work-dir", default=None, help="where the stages' out dirs go")
    args = parser.parse_args()
    torch.set_num_threads(1)
    original = trainer_module.Trainer._train_epoch
    result: dict[str, float] = {}
    steps = [0]

    def timed_epoch(self: Any, epoch: int, loader: Iterable[Any]) -> tuple[float, int]:
        arrivals: list[float] = []
        count = steps[0]

        class Take:
            def __iter__(self) -> Iterator[Any]:
                for batch in itertools.islice(iter(loader), count):
                    arrivals.append(time.perf_counter())
                    yield batch

            def __len__(self) -> int:
                return count

        start = time.perf_counter()
        original(self, epoch, Take())
        end = time.perf_counter()
        result.update(
            loop_s=end - start,
            first_batch_s=arrivals[0] - start,
            per_step_s=(end - arrivals[0]) / count,
            steps=count,
        )
        raise _Done

    trainer_module.Trainer._train_epoch = timed_epoch  # type: ignore[method-assign]
    work = Path(args.work_dir or "/tmp")
    for stage in args.stages.split(","):
        steps[0] = STEPS[stage]
        result.clear()
        out_dir = work / f"stage-loops-{args.tag}-{stage}-{time.time_ns()}"
        with contextlib.suppress(_Done):
            cli_main(
                [
                    *_stage_args(stage, args.encoder),
                    *("--cache-dir", args.cache_dir, "--out-dir", str(out_dir)),
                    *("--profile", args.profile, "--device", "cpu", "--progress", "off"),
                    *("--seed", "0", "--epochs", "1"),
                ]
            )
        line = json.dumps({"tree": args.tag, "stage": stage, **result})
        print(line, flush=True)
        with open(args.out, "a") as handle:
            handle.write(line + "\n")


if __name__ == "__main__":
    main()
