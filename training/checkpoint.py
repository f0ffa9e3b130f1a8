"""The run folder: a checkpoint that rebuilds the model, metrics JSON, training curves.

    RUN/checkpoint.pt   state_dict + ModelSpec + input statistics + labels + metrics
                        (+ a text model's tokenizer spec, as a dict)
                        (the weights that get exported: the best epoch's, lowest val loss)
                        + raw validation rows: 64 to verify the export, up to 1,024 to
                        calibrate the drift threshold. They stay in the run folder:
                        ``bnserve export --include-checkpoint`` publishes a copy without
                        them (``without_rows``), for ``recalibrate --engine torch``.
    RUN/last.pt         the training state after the last finished epoch, for --resume:
                        model, optimizer, scheduler, RNG states, history, best weights
    RUN/metrics.json    per-epoch train/val loss and accuracy, final figures
    RUN/curves.png      the same curves, drawn
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bnserve.proto.tokenizer import Tokenizer, TokenizerError
from bnserve.training.config import ModelSpec
from bnserve.training.datasets import InputStatistics
from bnserve.training.errors import CheckpointError
from bnserve.training.models import build_model

CHECKPOINT_FILE = "checkpoint.pt"
TRAINING_STATE_FILE = "last.pt"
METRICS_FILE = "metrics.json"
CURVES_FILE = "curves.png"
FORMAT = 1  # bump when the checkpoint layout changes
VERIFICATION_SAMPLES = 64  # raw validation inputs a run's checkpoint keeps for export checks
HELD_OUT_ROWS = 1024  # validation inputs kept for the drift threshold's calibration at export


@dataclass
class Checkpoint:
    spec: ModelSpec
    state_dict: dict[str, torch.Tensor]
    statistics: InputStatistics  # of the training split, raw inputs (identity for token ids)
    labels: tuple[str, ...]
    dataset: str
    config: dict[str, Any]  # the TrainConfig, as a dict
    metrics: dict[str, Any]  # final figures (metrics.json has the per-epoch history)
    samples: np.ndarray  # (K, *sample_shape) raw validation inputs (float32 or int64 tokens)
    # Up to HELD_OUT_ROWS clean validation inputs, never trained on: export calibrates
    # the drift alarm's threshold on them. None: a checkpoint from before, or a recalibrated
    # one (its clean distribution is the new data's, of which it holds no held-out rows).
    held_out: np.ndarray | None = None
    # Token-id models: the dataset's vocabulary and rules that turn text into its ids; export
    # writes it into the graph. None: float inputs, or token ids without a vocabulary.
    tokenizer: Tokenizer | None = None

    @property
    def has_rows(self) -> bool:
        """Whether it holds verification rows (a run folder's), not a published copy."""
        return len(self.samples) > 0

    def without_rows(self) -> Checkpoint:
        """A copy holding no data rows (no samples, no held-out rows): what may be published
        beside a served model; the weights, statistics and figures are all it keeps."""
        empty = self.samples[:0].copy()  # (0, *sample_shape), the dtype kept
        return replace(self, samples=empty, held_out=None)

    def build(self) -> nn.Module:
        """The trained model in eval mode (the state it is always exported in)."""
        model = build_model(self.spec)
        model.load_state_dict(self.state_dict)
        return model.eval()


def save_checkpoint(ckpt: Checkpoint, path: Path) -> None:
    torch.save(
        {
            "format": FORMAT,
            "spec": ckpt.spec.to_dict(),
            "state_dict": ckpt.state_dict,
            "statistics": ckpt.statistics.to_dict(),
            "labels": list(ckpt.labels),
            "dataset": ckpt.dataset,
            "config": ckpt.config,
            "metrics": ckpt.metrics,
            "samples": torch.from_numpy(ckpt.samples),
            "held_out": None if ckpt.held_out is None else torch.from_numpy(ckpt.held_out),
            "tokenizer": None if ckpt.tokenizer is None else ckpt.tokenizer.to_dict(),
        },
        path,
    )


def load_checkpoint(run_dir: Path) -> Checkpoint:
    path = Path(run_dir) / CHECKPOINT_FILE
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; train first (bnserve train --run-dir)")
    data = _read(path, "checkpoint")
    try:  # absent from checkpoints written before tokenizers were kept
        tokenizer = None if data.get("tokenizer") is None else Tokenizer.from_dict(data["tokenizer"])
    except TokenizerError as exc:
        raise CheckpointError(f"{path}: its tokenizer is not a tokenizer spec: {exc}") from None
    return Checkpoint(
        spec=ModelSpec.from_dict(data["spec"]),
        state_dict=data["state_dict"],
        statistics=InputStatistics.from_dict(data["statistics"]),
        labels=tuple(data["labels"]),
        dataset=data["dataset"],
        config=data["config"],
        metrics=data["metrics"],
        samples=data["samples"].numpy(),
        held_out=None if data.get("held_out") is None else data["held_out"].numpy(),
        tokenizer=tokenizer,
    )


def save_training_state(state: dict[str, Any], run_dir: Path) -> None:
    """Write RUN/last.pt atomically (a crash mid-write leaves the previous epoch's state)."""
    path = Path(run_dir) / TRAINING_STATE_FILE
    partial = path.with_name(path.name + ".partial")
    torch.save({"format": FORMAT, **state}, partial)
    partial.replace(path)


def load_training_state(run_dir: Path) -> dict[str, Any]:
    """The state ``save_training_state`` wrote, for resuming; ``CheckpointError`` if none."""
    path = Path(run_dir) / TRAINING_STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"nothing to resume: no {TRAINING_STATE_FILE} in {run_dir}")
    return _read(path, "training state")


def _read(path: Path, what: str) -> dict[str, Any]:
    """A bnserve torch file of this FORMAT, loaded without executing pickled code."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a corrupt or foreign file
        raise CheckpointError(f"cannot read {what} {path}: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a bnserve {what} of format {FORMAT}")
    return data
