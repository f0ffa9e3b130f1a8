"""Errors raised while training, exporting and publishing models.

    TrainingError                      base of everything below
     ├── RegistryError                 unknown --model or --dataset
     ├── CheckpointError               a run folder without a usable checkpoint
     ├── RecalibrationError            new data or a model that BatchNorm recalibration refuses
     ├── DistributedError              not launched by torchrun, or a batch the ranks cannot share
     ├── ExportError
     │    ├── RunningStatisticsError   BatchNorm layers without running statistics
     │    └── VerificationError        the exported graph failed a check (carries the report)
     (RepositoryError = bnserve.repository.publish.PublishError, not a TrainingError)
          ├── InvalidVersionError      a version that is not a positive integer, a bad name
          └── VersionExistsError       the version is already published: never overwritten

The CLI turns any ``TrainingError`` into a one-line message and exit status 1; anything
else is a bug, reported as one "internal error" line with its traceback under
``--log-level DEBUG`` (``bnserve.cli.errors``).
"""

from __future__ import annotations

from typing import Any

from bnserve.repository.publish import InvalidVersionError, PublishError, VersionExistsError

__all__ = ["InvalidVersionError", "VersionExistsError", "RepositoryError"]


class TrainingError(Exception):
    """Base class of the errors of ``bnserve.training``."""


class RegistryError(TrainingError, KeyError):
    """No model builder or dataset is registered under the requested name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DatasetError(TrainingError):
    """A --data file that cannot be read, or a dataset the chosen model cannot take."""


class CheckpointError(TrainingError):
    """A run folder has no checkpoint, or one this version cannot read."""


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
