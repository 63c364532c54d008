"""Checkpoint writes off the step loop: a host snapshot now, serialisation in a thread.

Serialising and fsyncing a checkpoint takes as long as the state is large and the disk is
slow; done in the training thread it stalls every step behind it. :class:`BackgroundWriter`
runs the write in one background thread instead, after :func:`host_snapshot` has copied the
state: a device-to-host copy on an accelerator, a clone on the CPU (training keeps updating
the weights in place while the copy is written).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from torch import Tensor

__all__ = ["BackgroundWriter", "host_snapshot"]

_T = TypeVar("_T")


def host_snapshot(obj: _T) -> _T:
    """A copy of a nested state whose tensors are fresh host (CPU) tensors.

    Dicts, lists and tuples are rebuilt; every tensor is copied to the CPU (``copy=True``, so
    a CPU tensor is cloned too); a tensor reached twice (tied weights) is copied once and
    shared, as :func:`torch.save` would have stored it. Other values (numbers, strings,
    ``None``) are immutable and kept.

    Args:
        obj: A ``state_dict``-like tree of containers, tensors and plain values.

    Returns:
        The copy, detached from anything training mutates afterwards.
    """
    memo: dict[int, Tensor] = {}

    def copy(value: object) -> object:
        if isinstance(value, Tensor):
            key = id(value)
            if key not in memo:
                memo[key] = value.detach().to("cpu", copy=True)
            return memo[key]
        if isinstance(value, dict):
            return {k: copy(v) for k, v in value.items()}
        if isinstance(value, list):
            return [copy(v) for v in value]
        if isinstance(value, tuple) and not hasattr(value, "_fields"):
            return tuple(copy(v) for v in value)
        return value

    result: _T = copy(obj)  # type: ignore[assignment]
    return result


class BackgroundWriter:
    """Runs one write job at a time in a background thread; re-raises its error here.

    :meth:`submit` first waits for the job in flight (at most one is ever running, so the
    writes reach the disk in submission order), :meth:`check` re-raises a finished job's
    error without waiting, :meth:`wait` joins the job in flight and re-raises its error. The
    error is the writer's own exception object (type, message and traceback intact).
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def busy(self) -> bool:
        """Whether a job is still running."""
        return self._thread is not None and self._thread.is_alive()

    def submit(self, job: Callable[[], None]) -> None:
        """Wait for the previous job (re-raising its error), then start ``job``."""
        self.wait()
        thread = threading.Thread(target=self._run, args=(job,), name="lumbarssl-checkpoint")
        self._thread = thread
        thread.start()

    def check(self) -> None:
        """Re-raise the error of a job that has finished; never waits."""
        if self._thread is not None and not self._thread.is_alive():
            self.wait()

    def wait(self) -> None:
        """Wait until no job is running; re-raise the error of the last one, if it failed."""
        thread = self._thread
        if thread is not None:
            thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is not None:
            raise error

    def wait_quietly(self) -> BaseException | None:
        """Wait like :meth:`wait` but return the job's error instead of raising it."""
        try:
            self.wait()
        except BaseException as error:  # handed to the caller, which re-raises
            return error
        return None

    def _run(self, job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException as error:  # re-raised in the training thread
            self._error = error
