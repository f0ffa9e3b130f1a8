"""Publish a recalibrated copy of a published version (``bnserve recalibrate``).

    REPOSITORY/NAME/<source>/checkpoint.pt --recalibrate_checkpoint(new x)--> temp run folder
        --export_run (parity and batch independence verified as always)--> NAME/<next version>

This is the torch engine: it needs the source version's checkpoint.pt, which ``bnserve
export --include-checkpoint`` publishes (weights and statistics, no data rows); the new
version carries one too. Without it, ``--engine onnxruntime`` works from the graphs alone.

The source version is never touched. The new version's model card (``metadata.json``)
records what was done under ``metrics.recalibration``: source version and its sha256, the
data's sha256, sample count, and accuracy before and after when labels came with the data.
It travels there inside the checkpoint's metrics, which the card copies, so the record is
published atomically with the model.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bnserve.repository.layout import MODEL_FILE
from bnserve.repository.publish import list_versions
from bnserve.training.card import sha256_of
from bnserve.training.checkpoint import CHECKPOINT_FILE, Checkpoint, load_checkpoint, save_checkpoint
from bnserve.training.errors import RecalibrationError
from bnserve.training.export import ExportResult, InferenceModel, export_run
from bnserve.training.recalibrate import (
    BATCH_SIZE,
    RecalibrationReport,
    as_model_inputs,
    recalibrate_checkpoint,
)


@dataclass(frozen=True)
class RecalibrationData:
    x: np.ndarray  # (N, *sample_shape) raw inputs
    y: np.ndarray | None  # (N,) class ids, only to report accuracy
    sha256: str  # of the file they came from


def load_recalibration_data(path: Path | str, *, labels_key: str = "y") -> RecalibrationData:
    """``x`` from an ``.npz`` file, and ``labels_key`` when the file has it."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "x" not in npz.files:
                raise RecalibrationError(f"{path} has no array 'x' (it has: "
                                         f"{', '.join(npz.files) or 'nothing'})")
            x = npz["x"]
            y = npz[labels_key] if labels_key in npz.files else None
    except (OSError, ValueError) as exc:  # missing file, not an npz, pickled objects
        raise RecalibrationError(f"cannot read {path} as .npz: {exc}") from exc
    return RecalibrationData(x=x, y=y, sha256=sha256_of(path))


@dataclass(frozen=True)
class RecalibrationResult:
    source_version: int
    report: RecalibrationReport
    accuracy_before: float | None  # on the given labels; None without them
    accuracy_after: float | None
    record: dict[str, Any]  # what the card holds under metrics.recalibration
    export: ExportResult


def recalibrate_version(repository: Path | str, name: str, x: np.ndarray, *,
                        y: np.ndarray | None = None, version: int | None = None,
                        keep_input_statistics: bool = False, batch_size: int = BATCH_SIZE,
                        seed: int = 0, data_sha256: str | None = None) -> RecalibrationResult:
    """Recalibrate ``name``/``version`` (default: the latest) on raw ``x``; publish the next version.

    ``y`` never reaches the recalibration; with it, accuracy on ``x`` is measured before and
    after. ``data_sha256`` identifies the file ``x`` came from in the card; without it the
    card holds the sha256 of ``x``'s bytes as the model takes them (float32 or int64).
    """
    versions = list_versions(repository, name)
    if not versions:
        raise RecalibrationError(f"no published version of {name!r} in {repository}")
    source = versions[-1] if version is None else version
    if source not in versions:
        raise RecalibrationError(f"{name} has no version {source} in {repository} "
                                 f"(published: {', '.join(map(str, versions))})")
    source_dir = Path(repository) / name / str(source)
    if not (source_dir / CHECKPOINT_FILE).is_file():
        raise RecalibrationError(
            f"{name} version {source} has no {CHECKPOINT_FILE}, which the torch engine "
            "rebuilds the model from (export publishes it only with --include-checkpoint): "
            "use --engine onnxruntime, or export the run again with --include-checkpoint")
    ckpt = load_checkpoint(source_dir)
    x = as_model_inputs(ckpt, x)
    y = None if y is None else _as_labels(y, len(x), len(ckpt.labels))  # refuse before work
    new, report = recalibrate_checkpoint(ckpt, x, keep_input_statistics=keep_input_statistics,
                                         batch_size=batch_size, seed=seed)
    before = after = None
    if y is not None:
        before, after = accuracy(ckpt, x, y), accuracy(new, x, y)

    record = {
        "source_version": source,
        "source_sha256": sha256_of(source_dir / MODEL_FILE),
        "data_sha256": data_sha256 or hashlib.sha256(x.tobytes()).hexdigest(),  # x as served
        "num_samples": report.num_samples,
        "num_batches": report.num_batches,
        "input_statistics": ("none (token ids)" if ckpt.statistics.is_identity
                             else "kept from training" if keep_input_statistics
                             else "re-estimated"),
        "accuracy_before": before,
        "accuracy_after": after,
        "layers": report.to_dict()["layers"],
    }
    # The training figures stay (they describe how the weights were learned); this says
    # which statistics the published graph holds instead.
    new = replace(new, metrics={**ckpt.metrics, "recalibration": record})
    with tempfile.TemporaryDirectory(prefix="bnserve-recalibrate-") as run_dir:
        save_checkpoint(new, Path(run_dir) / CHECKPOINT_FILE)
        exported = export_run(run_dir, repository, name, include_checkpoint=True)
    return RecalibrationResult(source_version=source, report=report, accuracy_before=before,
                               accuracy_after=after, record=record, export=exported)


def _as_labels(y: np.ndarray, num_samples: int, num_classes: int) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (num_samples,) or y.dtype.kind not in "iu":
        raise RecalibrationError(f"labels must be {num_samples} integer class ids, got "
                                 f"{y.dtype} {y.shape}")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise RecalibrationError(f"labels outside [0, {num_classes})")
    return y


def accuracy(ckpt: Checkpoint, x: np.ndarray, y: np.ndarray, *, batch_size: int = 1024) -> float:
    """Accuracy of the model as it is served: raw x, frozen statistics, eval mode."""
    model = InferenceModel(ckpt.build(), ckpt.statistics).eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            probs = model(torch.from_numpy(x[start:start + batch_size]))  # (B, num_classes)
            correct += int((probs.argmax(dim=1).numpy() == y[start:start + batch_size]).sum())
    return correct / len(x)


def format_recalibration(result: RecalibrationResult, data_name: str) -> str:
    """Lines for the terminal: what was re-estimated, how far it moved, what it gained."""
    r, rec = result.report, result.record
    lines = [
        f"recalibrated {result.export.name} version {result.source_version} on "
        f"{r.num_samples} samples of {data_name} (sha256 {rec['data_sha256'][:12]}...) in "
        f"{r.num_batches} batches; input statistics {rec['input_statistics']}",
        "  BatchNorm running statistics, new vs old:",
        *(f"    {layer.name:<22} mean moved {layer.mean_shift:5.2f} old std, "
          f"std x{layer.std_ratio:.2f}" for layer in r.layers),
    ]
    if result.accuracy_before is not None and result.accuracy_after is not None:
        lines.append(f"  accuracy on the given labels: {result.accuracy_before:.2%} -> "
                     f"{result.accuracy_after:.2%} (labels are only used for this line)")
    return "\n".join(lines)
