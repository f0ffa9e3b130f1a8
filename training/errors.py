"""Errors raised while training, exporting and publishing models.

    TrainingError                      base of everything below
     ├── ConfigError                   a hyperparameter out of range, or too few rows to split
     ├── RegistryError                 unknown --model or --dataset
     ├── DatasetError                  a --data file that cannot be used (shape, NaN/Inf rows)
     ├── CheckpointError               a run folder without a usable checkpoint
     │    └── RunExistsError           the run folder holds a run: --resume or --overwrite
     ├── DivergenceError               a NaN/Inf loss: training stopped, no checkpoint written
     ├── RecalibrationError            new data or a model that BatchNorm recalibration refuses
     ├── DistributedError              not launched by torchrun, or a batch the ranks cannot share
     ├── ExportError
     │    ├── RunningStatisticsError   BatchNorm layers without running statistics
     │    └── VerificationError        the exported graph failed a check (carries the report)
     (RepositoryError = bnserve.repository.publish.PublishError, not a TrainingError)
          ├── InvalidVersionError      a version that is not a positive integer, a bad name
          └── VersionExistsError       the version is already published: never overwritten
    (TrainingInterrupted is a KeyboardInterrupt: Ctrl-C during training, with what to resume)

The CLI turns any ``TrainingError`` into a one-line message and exit status 1, and a
``TrainingInterrupted`` into one line saying how to resume and exit status 130; anything
else is a bug, reported as one "internal error" line with its traceback under
``--log-level DEBUG`` (``bnserve.cli.errors``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bnserve.repository.publish import InvalidVersionError, PublishError, VersionExistsError

__all__ = ["InvalidVersionError", "VersionExistsError", "RepositoryError"]


class TrainingError(Exception):
    """Base class of the errors of ``bnserve.training``."""


class ConfigError(TrainingError, ValueError):
    """A hyperparameter out of its range (``TrainConfig`` checks them all when built), or a
    dataset too small for the validation split the configuration asks for."""


class RegistryError(TrainingError, KeyError):
    """No model builder or dataset is registered under the requested name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DatasetError(TrainingError):
    """A --data file that cannot be read, or a dataset the chosen model cannot take."""


class CheckpointError(TrainingError):
    """A run folder has no checkpoint, or one this version cannot read."""


class RunExistsError(CheckpointError):
    """``train`` was pointed at a folder that already holds a run (finished or interrupted):
    it is never replaced unless asked (``overwrite``), and ``resume`` continues it."""


class DivergenceError(TrainingError):
    """The loss became NaN or infinite: training stopped at that epoch and batch, and no
    checkpoint claims a finished run (RUN/last.pt still holds the last good epoch)."""

    def __init__(self, message: str, *, epoch: int, batch: int | None) -> None:
        super().__init__(message)
        self.epoch = epoch
        self.batch = batch  # None: the validation loss


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) during training. ``epoch`` is the last finished epoch, whose state
    RUN/last.pt holds for ``resume`` (None: interrupted before one finished, nothing to
    resume). A KeyboardInterrupt, so code that stops on Ctrl-C still stops."""

    def __init__(self, run_dir: Path, epoch: int | None, epochs: int) -> None:
        super().__init__(run_dir, epoch, epochs)
        self.run_dir = run_dir
        self.epoch = epoch
        self.epochs = epochs

    def hint(self, command: str = "bnserve train") -> str:
        """One line: where the run stopped and how to continue it."""
        if self.epoch is None:
            return (f"interrupted before the first epoch finished; nothing saved in "
                    f"{self.run_dir} to resume: start again")
        return (f"interrupted; {self.run_dir}/last.pt holds epoch {self.epoch} of "
                f"{self.epochs}: resume with `{command} --run-dir {self.run_dir} --resume`")


class RecalibrationError(TrainingError):
    """Recalibration data that cannot be used (shape, size, values), or a model without
    BatchNorm statistics to re-estimate, or weights that changed when only statistics should."""


class DistributedError(TrainingError):
    """A distributed run without torchrun's environment, or a global batch size that the
    ranks cannot split evenly."""


class ExportError(TrainingError):
    """A model could not be exported, or its export did not verify."""


class RunningStatisticsError(ExportError):
    """A BatchNorm layer has no running statistics to freeze into the graph."""


class TrainingModeError(ExportError):
    """The module to export is in training mode: BatchNorm would use each batch's statistics."""


class VerificationError(ExportError):
    """The exported ONNX graph failed one or more verification checks."""

    def __init__(self, message: str, report: Any) -> None:
        super().__init__(message)
        self.report = report


# Publishing is shared with the server (bnserve.repository.publish); its errors are not
# TrainingErrors, so the CLI catches both (``bnserve.training.cli.USER_ERRORS``).
RepositoryError = PublishError
