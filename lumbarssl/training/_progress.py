"""Progress display: a tqdm bar on a terminal, plain lines in logs and CI."""

from __future__ import annotations

import sys
from typing import Any, Literal, TextIO

from tqdm import tqdm

from lumbarssl.training.history import EpochRecord

ProgressMode = Literal["auto", "bar", "lines", "off"]


class ProgressReporter:
    """Reports steps and epoch summaries in one of three styles.

    ``"auto"`` draws a tqdm bar when the stream is a terminal and falls back to plain lines
    (every ``log_every`` steps, plus one line per epoch) otherwise, so that log files and CI
    output are not filled with carriage returns.
    """

    def __init__(
        self,
        mode: ProgressMode,
        *,
        epochs: int,
        log_every: int,
        stream: TextIO | None = None,
    ) -> None:
        self._requested = mode
        self._epochs = epochs
        self._log_every = log_every
        self._stream = stream
        self._bar: tqdm[Any] | None = None
        self._epoch = 0
        self._total: int | None = None

    @property
    def stream(self) -> TextIO:
        # Resolved late so that redirections made after construction are honoured.
        return self._stream if self._stream is not None else sys.stderr

    @property
    def mode(self) -> Literal["bar", "lines", "off"]:
        if self._requested != "auto":
            return self._requested
        isatty = getattr(self.stream, "isatty", None)
        return "bar" if callable(isatty) and isatty() else "lines"

    def start_epoch(self, epoch: int, total_steps: int | None) -> None:
        self._epoch = epoch
        self._total = total_steps
        if self.mode == "bar":
            self._bar = tqdm(
                total=total_steps,
                desc=f"epoch {epoch}/{self._epochs}",
                file=self.stream,
                leave=False,
                dynamic_ncols=True,
                unit="step",
            )

    def step(self, step: int, loss: float, lr: float) -> None:
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)
        elif self.mode == "lines" and (step % self._log_every == 0 or step == self._total):
            of_total = f"/{self._total}" if self._total is not None else ""
            self._write(
                f"epoch {self._epoch}/{self._epochs} step {step}{of_total} "
                f"loss {loss:.4f} lr {lr:.2e}"
            )

    def end_epoch(self, record: EpochRecord) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self.mode == "off":
            return
        parts = [f"epoch {record.epoch}/{self._epochs}", f"train_loss {record.train_loss:.4f}"]
        parts += [f"val_{name} {value:.4f}" for name, value in record.val.items()]
        parts.append("lr " + ",".join(f"{lr:.2e}" for lr in record.lr))
        parts.append(f"{record.seconds:.1f} s")
        parts.append(f"{record.images_per_s:.1f} images/s")
        if record.is_best:
            parts.append("(best)")
        self._write("  ".join(parts))

    def message(self, text: str) -> None:
        if self.mode != "off":
            self._write(text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _write(self, text: str) -> None:
        if self.mode == "bar":
            tqdm.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)
