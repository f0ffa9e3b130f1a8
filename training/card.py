"""The model card: ``metadata.json`` beside each published ``model.onnx``.

It describes what a server and a person need without opening the graph: the model kind
and norm, dataset, tensors, labels, input statistics folded into the graph, training
metrics, what verification measured, how many BatchNorm layers were folded (and how far
the folded graph is from the unfolded one), measured latency when asked for, opset,
versions of the tools, and the file's sha256.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import onnx
import onnxruntime
import torch

from bnserve.repository.card import ModelCard, StoredStatistics
from bnserve.repository.graph import index_input_bounds, tensor_signature
from bnserve.training.checkpoint import Checkpoint
from bnserve.training.datasets import InputStatistics
from bnserve.training.verify import VerificationReport


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build_model_card(*, name: str, version: int, onnx_path: Path, report: VerificationReport,
                     torch_batchnorm_layers: int, checkpoint: Checkpoint | None = None,
                     model: dict[str, Any] | None = None, dataset: str | None = None,
                     labels: tuple[str, ...] = (), statistics: InputStatistics | None = None,
                     metrics: dict[str, Any] | None = None,
                     input_range: tuple[int, int] | None = None,
                     extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The card of one published version, as ``metadata.json`` holds it.

    A zoo model's card comes from its ``checkpoint``; a user's own module (``export_module``)
    passes ``model`` ({"kind", "norm", "spec"}), ``dataset``, ``labels``, ``statistics`` and
    ``metrics`` instead. ``input_range``: the valid values of an integer input (token ids);
    by default those of the table it indexes in the graph (an embedding's rows), if any.
    ``extra`` adds keys (folded-vs-unfolded figures, ``latency``). The schema is
    ``bnserve.repository.card.ModelCard``; this fills it.
    """
    if checkpoint is not None:
        model = {"kind": checkpoint.spec.kind, "norm": checkpoint.spec.norm,
                 "spec": checkpoint.spec.to_dict()}
        dataset, labels = checkpoint.dataset, checkpoint.labels
        statistics, metrics = checkpoint.statistics, checkpoint.metrics
        if checkpoint.spec.vocab_size:
            input_range = (0, checkpoint.spec.vocab_size - 1)
    graph = onnx.load(str(onnx_path))
    opset = next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx"))
    standardized = statistics is not None and not statistics.is_identity
    inputs = [tensor_signature(v) for v in graph.graph.input]
    tables = index_input_bounds(graph)  # integer input -> rows of the table it indexes
    for index, tensor in enumerate(inputs):
        if not tensor.datatype.startswith(("INT", "UINT")):
            continue
        if input_range is not None:
            inputs[index] = replace(tensor, value_range=input_range)
        elif tensor.name in tables:
            inputs[index] = replace(tensor, value_range=(0, tables[tensor.name] - 1))
    card = ModelCard(
        name=name,
        version=version,
        labels=tuple(labels),
        inputs=tuple(inputs),
        outputs=tuple(tensor_signature(v) for v in graph.graph.output),
        # The graph computes (input - mean) / std itself: clients send raw inputs. Token ids
        # (and a custom module exported without statistics) go in unstandardized: null here.
        input_statistics=StoredStatistics(**statistics.to_dict()) if standardized else None,
        extra={
            "model": model or {"kind": "custom", "norm": "batch", "spec": None},
            "dataset": dataset,
            "metrics": metrics or {},
            "batchnorm": {
                "torch_layers": torch_batchnorm_layers,
                "onnx_nodes": report.batchnorm_nodes,
                "folded": torch_batchnorm_layers - report.batchnorm_nodes,
            },
            "verification": report.to_dict(),
            "opset": opset,
            "torch_version": torch.__version__,
            "onnx_version": onnx.__version__,
            "onnxruntime_version": onnxruntime.__version__,
            "sha256": sha256_of(onnx_path),
            "size_bytes": onnx_path.stat().st_size,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **(extra or {}),
        },
    )
    return card.to_dict()
