"""export_module: a user's own nn.Module goes through the same verification and writer."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from bnserve.repository.graph_metadata import graph_labels
from bnserve.training.datasets import InputStatistics
from bnserve.training.errors import RunningStatisticsError, TrainingModeError
from bnserve.training.export import export_module, format_summary
from support.topics_model import TOPICS, TOPICS_VOCAB


class TinyTabularNet(nn.Module):
    """A user's model: Linear -> BatchNorm1d -> ReLU -> Linear, 6 features, 3 classes."""

    def __init__(self, track_running_stats: bool = True) -> None:
        super().__init__()
        self.hidden = nn.Linear(6, 16, bias=False)
        self.bn = nn.BatchNorm1d(16, track_running_stats=track_running_stats)
        self.out = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 6)
        return self.out(torch.relu(self.bn(self.hidden(x))))  # (B, 3) logits


def trained_net(x: np.ndarray) -> TinyTabularNet:
    torch.manual_seed(0)
    net = TinyTabularNet()
    net.train()
    with torch.no_grad():  # a few forward passes give BatchNorm real running statistics
        for _ in range(20):
            net(torch.from_numpy(x[np.random.default_rng(_).choice(len(x), 32)]))
    return net


RAW = (np.random.default_rng(0).normal(size=(200, 6)) * [1, 10, 100, 1, 1, 5] + 50).astype(
    np.float32)


def test_custom_module_is_exported_verified_and_published(tmp_path: Path) -> None:
    stats = InputStatistics.from_data(RAW)
    net = trained_net(stats.standardize(RAW)).eval()
    result = export_module(net, RAW[:64], tmp_path / "models", "mine", input_statistics=stats,
                           labels=["low", "mid", "high"])
    assert result.report.ok and max(result.report.parity_max_abs_diff.values()) <= 1e-5
    assert result.report.batch_independence_max_abs_diff <= 1e-6
    card = result.card
    assert card["model"]["kind"] == "custom:TinyTabularNet" and card["labels"] == [
        "low", "mid", "high"]
    assert card["batchnorm"]["torch_layers"] == 1 and card["batchnorm"]["folded"] == 1
    assert card["input_statistics"]["shape"] == [6]
    assert not (result.path / "checkpoint.pt").exists()  # no zoo checkpoint to carry

    # The graph takes raw features: the standardization is inside it.
    session = ort.InferenceSession(str(result.path / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": RAW})[0]
    with torch.no_grad():
        want = torch.softmax(net(torch.from_numpy(stats.standardize(RAW))), dim=-1).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert "1 layers in PyTorch, 0 BatchNormalization nodes left (1 folded)" in format_summary(
        result)
    # No held-out rows were given: no threshold is claimed; the server's default applies.
    assert "drift" not in card and card["batchnorm"]["layers"][0]["name"] == "bn"
    assert "the server's default applies" in format_summary(result)


def test_held_out_rows_calibrate_the_drift_threshold_of_a_custom_module(tmp_path: Path) -> None:
    stats = InputStatistics.from_data(RAW)
    net = trained_net(stats.standardize(RAW)).eval()
    held_out = (np.random.default_rng(9).normal(size=(300, 6)) * [1, 10, 100, 1, 1, 5]
                + 50).astype(np.float32)
    result = export_module(net, RAW[:64], tmp_path / "models", "mine", input_statistics=stats,
                           calibration_input=held_out)
    drift = result.card["drift"]
    assert drift["calibration"]["held_out_rows"] == 300 and drift["window_rows"] == 128
    assert drift["threshold"] > drift["calibration"]["clean_median_score"] > 0
    assert "alarm above" in format_summary(result)


def test_module_in_training_mode_is_refused(tmp_path: Path) -> None:
    net = trained_net(RAW)  # still in train mode
    with pytest.raises(TrainingModeError, match=r"training mode .*call module\.eval\(\)"):
        export_module(net, RAW[:64], tmp_path / "models", "mine")
    assert net.training  # the caller's module is left as it was
    assert not (tmp_path / "models").exists()


def test_module_without_running_statistics_is_refused(tmp_path: Path) -> None:
    net = TinyTabularNet(track_running_stats=False).eval()
    with pytest.raises(RunningStatisticsError, match="no running statistics"):
        export_module(net, RAW[:64], tmp_path / "models", "mine")
    assert not (tmp_path / "models").exists()



def test_a_token_id_input_gets_the_range_of_its_embedding_in_the_card(topics_export) -> None:
    assert topics_export.card["inputs"] == [{"name": "input", "shape": [-1, 6],
                                             "dtype": "int64", "datatype": "INT64",
                                             "range": [0, TOPICS_VOCAB - 1]}]


def test_the_labels_are_written_into_the_graph_metadata_too(topics_export) -> None:
    path = topics_export.path / "model.onnx"
    assert graph_labels(onnx.load(str(path))) == TOPICS
    props = ort.InferenceSession(str(path)).get_modelmeta().custom_metadata_map
    assert json.loads(props["bnserve.labels"]) == list(TOPICS)
    assert topics_export.card["labels"] == list(TOPICS)
    # The card's digest is the digest of the graph as published, metadata included.
    assert topics_export.card["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
