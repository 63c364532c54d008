"""The exceptions lumbarssl raises on purpose, and the exit code each maps to.

Every error the library raises deliberately derives from :class:`LumbarsslError`; its class
attribute :attr:`~LumbarsslError.exit_code` is what the ``lumbarssl`` command line returns
after printing the message on one line. Anything else that escapes is a bug: the command line
lets it propagate with its traceback (Python's exit status 1).

========  =====================================================================
code      meaning
========  =====================================================================
0         success
1         a bug: an unexpected exception, printed with its traceback
2         usage or bad input (a flag, a config file, a CSV, a DICOM, a checkpoint)
3         the environment: disk full, a lock held by another run, a missing decoder
4         training diverged (the last good checkpoint is kept)
========  =====================================================================

The classes also derive from the built-in exception a caller would have caught before this
module existed (:class:`ValueError`, :class:`OSError`, :class:`RuntimeError`), so existing
``except`` clauses keep working.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "EXIT_BUG",
    "EXIT_DIVERGED",
    "EXIT_ENVIRONMENT",
    "EXIT_INPUT",
    "EXIT_OK",
    "ConfigError",
    "DataError",
    "DiskFullError",
    "EnvironmentProblem",
    "InputError",
    "LockHeldError",
    "LumbarsslError",
    "MissingDependencyError",
    "MissingFileError",
    "OutputExistsError",
    "TrainingDivergedError",
    "WrongKindError",
]

EXIT_OK = 0
EXIT_BUG = 1
EXIT_INPUT = 2
EXIT_ENVIRONMENT = 3
EXIT_DIVERGED = 4


class LumbarsslError(Exception):
    """Base of every exception lumbarssl raises on purpose.

    The message is one line that names the file, line, field or value at fault and says what
    to do about it.
    """

    exit_code: int = EXIT_INPUT


class InputError(LumbarsslError, ValueError):
    """Usage or input the run cannot use: a flag, a config, a CSV, a DICOM or a checkpoint."""

    exit_code = EXIT_INPUT


class ConfigError(InputError):
    """A configuration value or file that is invalid (unknown key, out-of-range value)."""


class DataError(InputError):
    """Data that stops the run (as opposed to a single study, which is skipped and recorded)."""


class EnvironmentProblem(LumbarsslError, OSError):
    """The machine, not the input, stops the run: disk full, a held lock, a missing package."""

    exit_code = EXIT_ENVIRONMENT


class DiskFullError(EnvironmentProblem):
    """A write failed for lack of space; nothing half-written is left behind."""


class LockHeldError(EnvironmentProblem):
    """Another run holds the output directory's lock."""


class MissingDependencyError(EnvironmentProblem):
    """An optional package (a DICOM decoder, matplotlib) is needed but not installed."""


class TrainingDivergedError(LumbarsslError, RuntimeError):
    """The training loss became NaN, infinite or absurd; the last good checkpoint was kept.

    Attributes:
        epoch: 1-based epoch of the bad step (or epoch).
        step: 1-based step within that epoch.
        loss: The bad loss value.
        checkpoint: The last good ``last.pt``, left untouched, or ``None`` if the run had not
            completed an epoch yet.
        detail: What was wrong, when not a non-finite loss (e.g. the loss guard's finding).
        resume_command: The command line that continues the run with a lower learning rate,
            when the command line knows it (:meth:`with_resume_command`).
    """

    exit_code = EXIT_DIVERGED

    def __init__(
        self,
        *,
        epoch: int,
        step: int,
        loss: float,
        checkpoint: Path | None,
        detail: str | None = None,
        resume_command: str | None = None,
    ) -> None:
        self.epoch = epoch
        self.step = step
        self.loss = loss
        self.checkpoint = checkpoint
        self.detail = detail
        self.resume_command = resume_command
        what = detail if detail is not None else f"loss is {loss} at epoch {epoch}, step {step}"
        if checkpoint is not None:
            kept = (
                f"the last good checkpoint {checkpoint} (after epoch {epoch - 1}) was left "
                "untouched"
            )
            advice = (
                f"to continue from it with a lower learning rate run: {resume_command}"
                if resume_command
                else "lower the learning rate (or set max_grad_norm to clip gradients) and "
                "resume, allowing the change (Trainer: TrainerConfig(allow_change=('lr',)) "
                "with fit(resume=True); command line: --resume --allow-change lr)"
            )
        else:
            kept = "no checkpoint had been written yet"
            advice = (
                f"start again with a lower learning rate: {resume_command}"
                if resume_command
                else "start again with a lower learning rate or with max_grad_norm set"
            )
        super().__init__(f"training diverged: {what}; {kept}; {advice}")

    def with_resume_command(self, command: str) -> TrainingDivergedError:
        """The same error, its advice naming the exact command line to continue.

        Args:
            command: The command line.

        Returns:
            A new error with the same facts.
        """
        return TrainingDivergedError(
            epoch=self.epoch,
            step=self.step,
            loss=self.loss,
            checkpoint=self.checkpoint,
            detail=self.detail,
            resume_command=command,
        )


class MissingFileError(InputError, FileNotFoundError):
    """An input file or directory the run needs does not exist."""


class OutputExistsError(InputError, FileExistsError):
    """The output directory already holds a result the run would overwrite."""


class WrongKindError(InputError, TypeError):
    """An input of the wrong kind, e.g. a checkpoint holding another model than expected."""
