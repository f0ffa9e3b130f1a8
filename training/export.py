"""Export a trained run to ONNX, verify it, and publish it into a model repository.

    checkpoint --build, eval()--> InferenceModel: raw x -> (x - mean) / std -> net -> softmax
               --torch.onnx.export (dynamo, opset 18, BatchNorm folded)--> temp model.onnx
               --verify_onnx_export--> fails loudly, nothing published
               --stage_version--> REPOSITORY/NAME/<version>/{model.onnx, metadata.json}
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from bnserve.training.card import build_model_card
from bnserve.training.checkpoint import CHECKPOINT_FILE, load_checkpoint
from bnserve.training.datasets import InputStatistics
from bnserve.training.errors import ExportError
from bnserve.training.models import batchnorm_layers, require_running_statistics
from bnserve.training.repository import check_model_name, check_new_version, stage_version
from bnserve.training.verify import VerificationReport, verify_onnx_export

logger = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = "probabilities"
OPSET = 18  # the dynamo exporter's native opset; the server's onnxruntime must support it
MODEL_FILE = "model.onnx"
METADATA_FILE = "metadata.json"


class InferenceModel(nn.Module):
    """What is served: raw inputs in, class probabilities out, statistics frozen inside."""

    def __init__(self, net: nn.Module, statistics: InputStatistics) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.from_numpy(statistics.mean.copy()))
        self.register_buffer("std", torch.from_numpy(statistics.std.copy()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, *sample_shape) raw
        logits = self.net((x - self.mean) / self.std)  # (B, num_classes)
        return torch.softmax(logits, dim=-1)


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's chatter (missing torchvision ops, optimizer passes, deprecations)."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=FutureWarning)
            warnings.simplefilter("ignore", category=DeprecationWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def export_onnx(model: nn.Module, path: Path, sample_shape: tuple[int, ...],
                *, opset: int = OPSET) -> None:
    """Export ``model`` in eval mode with a dynamic batch axis to one self-contained file.

    Raises ``RunningStatisticsError`` when a BatchNorm layer has nothing to freeze.
    """
    require_running_statistics(model)
    model.eval()
    # Batch 2: torch.export specializes sizes 0 and 1, which would pin the batch axis.
    example = torch.zeros(2, *sample_shape)  # (2, *sample_shape)
    batch = torch.export.Dim("batch")
    try:
        with _quiet_exporter():
            torch.onnx.export(
                model, (example,), str(path), dynamo=True, external_data=False,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},), opset_version=opset, optimize=True,
                verbose=False,
            )
    except Exception as exc:  # the exporter raises many types; all mean "no graph"
        raise ExportError(f"torch.onnx.export failed: {exc}") from exc
    _strip_node_metadata(path)


def _strip_node_metadata(path: Path) -> None:
    """Drop the exporter's per-node debug metadata (FX nodes, source paths and line numbers).

    It would publish this machine's file paths, and make the sha256 of the same weights
    change whenever a line of the model code moves.
    """
    model = onnx.load(str(path))
    for nodes in [model.graph.node, *(f.node for f in model.functions)]:
        for node in nodes:
            del node.metadata_props[:]
    onnx.save(model, str(path))


@dataclass(frozen=True)
class ExportResult:
    name: str
    version: int
    path: Path  # REPOSITORY/NAME/<version>
    report: VerificationReport
    card: dict[str, Any]  # the content of metadata.json
    seconds: float


def export_run(run_dir: Path | str, repository: Path | str, name: str,
               version: int | None = None) -> ExportResult:
    """Export the run's model into ``repository`` as ``name``/``version`` (default: next).

    Fails loudly (``ExportError`` or ``RepositoryError``) with nothing written to the
    repository when the model has no running statistics, the export does not verify, or
    the version exists.
    """
    start = time.perf_counter()
    check_model_name(name)
    if version is not None:
        check_new_version(repository, name, version)  # fail before the slow part
    ckpt = load_checkpoint(Path(run_dir))
    model = InferenceModel(ckpt.build(), ckpt.statistics).eval()
    require_running_statistics(model)
    num_bn = len(batchnorm_layers(model))

    with tempfile.TemporaryDirectory(prefix="bnserve-export-") as tmp:
        onnx_path = Path(tmp) / MODEL_FILE
        export_onnx(model, onnx_path, ckpt.spec.sample_shape)
        report = verify_onnx_export(model, onnx_path, ckpt.samples)
        report.raise_for_failures()
        with stage_version(repository, name, version) as staged:
            staged_onnx = staged.path / MODEL_FILE
            shutil.copyfile(onnx_path, staged_onnx)
            # The PyTorch source travels with the version, so `recalibrate` (and any later
            # re-export) works from the repository alone; the server ignores it.
            shutil.copyfile(Path(run_dir) / CHECKPOINT_FILE, staged.path / CHECKPOINT_FILE)
            card = build_model_card(name=name, version=staged.version, onnx_path=staged_onnx,
                                    checkpoint=ckpt, report=report,
                                    torch_batchnorm_layers=num_bn)
            _check_signature(card, ckpt.spec.sample_shape, ckpt.spec.num_classes)
            text = json.dumps(card, indent=2) + "\n"
            (staged.path / METADATA_FILE).write_text(text)
            card = json.loads(text)  # exactly what readers of metadata.json get
    seconds = time.perf_counter() - start
    logger.info("exported %s version %d to %s in %.1f s", name, staged.version,
                staged.final_path, seconds)
    return ExportResult(name=name, version=staged.version, path=staged.final_path,
                        report=report, card=card, seconds=seconds)


def _check_signature(card: dict[str, Any], sample_shape: tuple[int, ...],
                     num_classes: int) -> None:
    want_in = {"name": INPUT_NAME, "shape": [-1, *sample_shape], "dtype": "float32"}
    want_out = {"name": OUTPUT_NAME, "shape": [-1, num_classes], "dtype": "float32"}
    for kind, got, want in (("input", card["inputs"], want_in),
                            ("output", card["outputs"], want_out)):
        if len(got) != 1 or any(got[0][k] != v for k, v in want.items()):
            raise ExportError(f"exported graph has {kind}s {got}, expected one like {want}")


def format_summary(result: ExportResult) -> str:
    """A few lines for the terminal: what was verified, what was folded, what was written."""
    r, bn = result.report, result.card["batchnorm"]
    parity = ", ".join(f"{d:.1e} (batch {b})" for b, d in r.parity_max_abs_diff.items())
    return "\n".join([
        f"exported {result.name} version {result.version} in {result.seconds:.1f} s",
        "  onnx.checker:        " + ("passed" if r.checker_passed else "FAILED"),
        f"  parity vs PyTorch:   max |diff| {parity}; limit {r.parity_atol:g}",
        f"  batch independence:  max |diff| {r.batch_independence_max_abs_diff:.1e} "
        f"over 64 rows alone vs batched; limit {r.independence_atol:g}",
        f"  BatchNorm:           {bn['torch_layers']} layers in PyTorch, {bn['onnx_nodes']} "
        f"BatchNormalization nodes left ({bn['folded']} folded), "
        f"{r.training_mode_batchnorm_nodes} in training mode",
        f"  wrote:               {result.path / MODEL_FILE} "
        f"({result.card['size_bytes'] / 1024:.0f} KiB, sha256 {result.card['sha256'][:12]}...) "
        f"and {METADATA_FILE}",
    ])
