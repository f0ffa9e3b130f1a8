"""export_run: the published files, their model card, the served graph, and refusals."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from bnserve.repository.publish import list_versions
from bnserve.training.config import BatchNormOptions, ModelSpec, TrainConfig
from bnserve.training.datasets import load_dataset
from bnserve.training.errors import RunningStatisticsError, VerificationError, VersionExistsError
from bnserve.training.export import ExportResult, export_run, format_summary
from bnserve.training.models import MODELS, build_model, register_model
from bnserve.training.train import TrainResult, train

DRY = TrainConfig(dry_run=True)


def test_export_publishes_model_and_card(exported: ExportResult) -> None:
    assert exported.version == 1 and exported.path.name == "1"
    # Graphs and the card only: no checkpoint.pt, no training rows (--include-checkpoint).
    assert sorted(p.name for p in exported.path.iterdir()) == [
        "metadata.json", "model.onnx", "unfolded.onnx"
    ]
    assert sorted(p.name for p in exported.path.parent.iterdir()) == ["1"]  # no staging left
    card = json.loads((exported.path / "metadata.json").read_text())
    assert card == exported.card
    assert (card["name"], card["version"], card["dataset"]) == ("digits", 1, "digits")
    assert card["model"]["kind"] == "cnn"
    assert card["labels"] == [str(i) for i in range(10)]
    assert card["inputs"] == [{"name": "input", "shape": [-1, 1, 8, 8], "dtype": "float32",
                               "datatype": "FP32"}]
    assert card["outputs"] == [{"name": "probabilities", "shape": [-1, 10], "dtype": "float32",
                                "datatype": "FP32"}]
    assert card["metrics"]["final"]["val_accuracy"] >= 0.95
    assert card["input_statistics"]["shape"] == [1, 1, 1]
    bn = card["batchnorm"]
    assert (bn["torch_layers"], bn["onnx_nodes"], bn["folded"], bn["fold"]) == (7, 0, 7, True)
    assert (bn["folded_onnx_nodes"], bn["unfolded_onnx_nodes"]) == (0, 7)
    assert bn["folded_vs_unfolded_max_abs_diff"] <= 1e-5
    assert card["model"]["norm"] == "batch"
    assert "latency" not in card  # only with report=True
    assert card["opset"] >= 17
    assert card["onnx_version"] == onnx.__version__
    assert card["onnxruntime_version"] == ort.__version__
    digest = hashlib.sha256((exported.path / "model.onnx").read_bytes()).hexdigest()
    assert card["sha256"] == digest
    assert datetime.fromisoformat(card["created"]).tzinfo is not None
    assert card["verification"]["failures"] == []


def test_export_keeps_the_batchnorm_reference_and_a_calibrated_drift_threshold(
        exported: ExportResult) -> None:
    """Folding stays on for the served graph; the unfolded one travels beside it with the
    running statistics the drift monitor and recalibration compare live activations with."""
    bn, drift = exported.card["batchnorm"], exported.card["drift"]
    unfolded = onnx.load(str(exported.path / bn["reference_graph"]))
    assert bn["reference_graph"] == "unfolded.onnx"
    assert bn["reference_sha256"] == hashlib.sha256(
        (exported.path / "unfolded.onnx").read_bytes()).hexdigest()
    nodes = [n for n in unfolded.graph.node if n.op_type == "BatchNormalization"]
    assert [layer["node"] for layer in bn["layers"]] == [n.name for n in nodes]
    assert [layer["name"] for layer in bn["layers"]][:2] == ["stem.1", "stage1.conv1.1"]
    sizes = {t.name: t.dims[0] for t in unfolded.graph.initializer}
    assert [layer["channels"] for layer in bn["layers"]] == [sizes[n.input[3]] for n in nodes]
    assert drift["measure"] == "gaussian_kl" and drift["window_rows"] == 128
    assert drift["false_alarm_rate"] == 0.01
    assert 0 < drift["calibration"]["clean_median_score"] < drift["threshold"] < 0.05
    assert drift["calibration"]["held_out_rows"] >= 128


def test_exported_graph_is_clean_with_a_dynamic_batch_axis(exported: ExportResult) -> None:
    graph = onnx.load(str(exported.path / "model.onnx"))
    onnx.checker.check_model(graph, full_check=True)
    ops = {node.op_type for node in graph.graph.node}
    assert "BatchNormalization" not in ops  # folded into Conv and Gemm
    assert {"Conv", "Gemm", "Softmax", "Sub", "Div"} <= ops  # standardization is in the graph
    assert not any(node.metadata_props for node in graph.graph.node)  # no source paths
    (batch_dim, *_), = (i.type.tensor_type.shape.dim for i in graph.graph.input)
    assert batch_dim.dim_param and not batch_dim.HasField("dim_value")


def test_served_graph_takes_raw_digits_and_returns_probabilities(exported: ExportResult) -> None:
    session = ort.InferenceSession(str(exported.path / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    ds = load_dataset("digits")
    probs = session.run(["probabilities"], {"input": ds.x})[0]  # (1797, 10)
    assert probs.shape == (1797, 10) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (probs.argmax(axis=1) == ds.y).mean() >= 0.95


def test_export_report_meets_the_tolerances(exported: ExportResult) -> None:
    report = exported.report
    assert report.ok and report.checker_passed
    assert set(report.parity_max_abs_diff) == {1, 7, 64}
    assert max(report.parity_max_abs_diff.values()) <= 1e-5
    assert report.batch_independence_max_abs_diff is not None
    assert report.batch_independence_max_abs_diff <= 1e-6
    summary = format_summary(exported)
    assert "onnx.checker:        passed" in summary
    assert "7 layers in PyTorch, 0 BatchNormalization nodes left (7 folded)" in summary
    assert str(exported.path / "model.onnx") in summary
    assert "serving:             a server loads version 1 at its next poll" in summary


def test_versions_grow_and_existing_ones_are_kept(exported: ExportResult,
                                                 trained_run: TrainResult,
                                                 tmp_path: Path) -> None:
    repository = tmp_path / "models"
    shutil.copytree(exported.path, repository / "digits" / "1")
    before = (repository / "digits" / "1" / "model.onnx").read_bytes()
    with pytest.raises(VersionExistsError, match="digits version 1 already exists"):
        export_run(trained_run.run_dir, repository, "digits", version=1)
    second = export_run(trained_run.run_dir, repository, "digits")
    assert second.version == 2 and second.card["version"] == 2
    assert second.card["sha256"] == exported.card["sha256"]  # same weights, same bytes
    assert list_versions(repository, "digits") == [1, 2]
    assert (repository / "digits" / "1" / "model.onnx").read_bytes() == before


def test_model_without_running_statistics_is_refused(tmp_path: Path) -> None:
    no_stats = replace(DRY, batchnorm=BatchNormOptions(track_running_stats=False))
    train(no_stats, tmp_path / "run", progress=False)
    with pytest.raises(RunningStatisticsError, match="no running statistics"):
        export_run(tmp_path / "run", tmp_path / "models", "digits")
    assert not (tmp_path / "models").exists()


class BatchMeanCNN(nn.Module):
    """Has BatchNorm with running statistics, yet normalizes each batch by its own mean."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.cnn = build_model(replace(spec, kind="cnn"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        return self.cnn(x - x.mean(dim=0, keepdim=True))


@pytest.fixture
def batch_mean_model() -> Iterator[str]:
    register_model("test-batch-mean")(BatchMeanCNN)
    yield "test-batch-mean"
    MODELS.pop("test-batch-mean")


def test_export_that_fails_verification_writes_nothing(batch_mean_model: str,
                                                       tmp_path: Path) -> None:
    train(replace(DRY, model=batch_mean_model, width=8), tmp_path / "run", progress=False)
    with pytest.raises(VerificationError, match="depends on the batch") as info:
        export_run(tmp_path / "run", tmp_path / "models", "digits")
    assert not info.value.report.ok
    assert not (tmp_path / "models").exists()
