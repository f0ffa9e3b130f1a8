"""The model card: ``metadata.json`` beside each published ``model.onnx``.

It describes what a server and a person need without opening the graph: the model kind
and norm, dataset, tensors, labels, input statistics folded into the graph, training
metrics, what verification measured, how many BatchNorm layers were folded (and how far
the folded graph is from the unfolded one), measured latency when asked for, opset,
versions of the tools, and the file's sha256.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import onnx
import onnxruntime
import torch

from bnserve.training.checkpoint import Checkpoint
from bnserve.training.datasets import InputStatistics
from bnserve.training.verify import VerificationReport

SCHEMA_VERSION = 1
PLATFORM = "onnxruntime_onnx"  # the Open Inference Protocol platform string for ONNX models

# numpy dtype name -> Open Inference Protocol datatype
OIP_DATATYPES = {"float32": "FP32", "float64": "FP64", "float16": "FP16", "int64": "INT64",
                 "int32": "INT32", "int8": "INT8", "uint8": "UINT8", "bool": "BOOL"}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tensor_signature(value: onnx.ValueInfoProto) -> dict[str, Any]:
    """name, shape (-1 for a symbolic axis), dtype and OIP datatype of a graph input/output."""
    tensor_type = value.type.tensor_type
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name
    shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim]
    return {"name": value.name, "shape": shape, "dtype": dtype,
            "datatype": OIP_DATATYPES.get(dtype, dtype.upper())}


def build_model_card(*, name: str, version: int, onnx_path: Path, report: VerificationReport,
                     torch_batchnorm_layers: int, checkpoint: Checkpoint | None = None,
                     model: dict[str, Any] | None = None, dataset: str | None = None,
                     labels: tuple[str, ...] = (), statistics: InputStatistics | None = None,
                     metrics: dict[str, Any] | None = None,
                     extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The card of one published version.

    A zoo model's card comes from its ``checkpoint``; a user's own module (``export_module``)
    passes ``model`` ({"kind", "norm", "spec"}), ``dataset``, ``labels``, ``statistics`` and
    ``metrics`` instead. ``extra`` adds keys (folded-vs-unfolded figures, ``latency``).
    """
    if checkpoint is not None:
        model = {"kind": checkpoint.spec.kind, "norm": checkpoint.spec.norm,
                 "spec": checkpoint.spec.to_dict()}
        dataset, labels = checkpoint.dataset, checkpoint.labels
        statistics, metrics = checkpoint.statistics, checkpoint.metrics
    graph = onnx.load(str(onnx_path))
    opset = next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx"))
    standardized = statistics is not None and not statistics.is_identity
    return {
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "version": version,
        "platform": PLATFORM,
        "model": model or {"kind": "custom", "norm": "batch", "spec": None},
        "dataset": dataset,
        "labels": list(labels),
        "inputs": [tensor_signature(v) for v in graph.graph.input],
        "outputs": [tensor_signature(v) for v in graph.graph.output],
        # The graph computes (input - mean) / std itself: clients send raw inputs. Token ids
        # (and a custom module exported without statistics) go in unstandardized: null here.
        "input_statistics": statistics.to_dict() if standardized else None,
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
    }
