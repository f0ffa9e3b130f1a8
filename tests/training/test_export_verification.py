"""verify_onnx_export on any (module, ONNX file) pair: it passes good exports, catches bad ones.

These graphs come from the quick legacy exporter: the checks must not depend on how a graph
was made (BatchNorm is not folded there, so eval-mode BatchNormalization nodes remain).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bnserve.training.errors import VerificationError
from bnserve.training.verify import verify_onnx_export

INPUTS = np.random.default_rng(0).uniform(0, 16, size=(32, 1, 8, 8)).astype(np.float32)


def small_bn_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.Flatten(), nn.Linear(256, 10), nn.Softmax(dim=-1))
    bn = net[1]
    bn.running_mean.uniform_(-1, 1)  # non-trivial frozen statistics
    bn.running_var.uniform_(0.5, 2.0)
    return net.eval()


class BatchMeanNet(nn.Module):
    """Subtracts the batch mean at inference: the bug frozen statistics exist to prevent."""

    def __init__(self) -> None:
        super().__init__()
        self.net = small_bn_net()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, 8, 8)
        return self.net(x - x.mean(dim=0, keepdim=True))


def legacy_export(module: nn.Module, path: Path, *, training: bool = False) -> Path:
    mode = torch.onnx.TrainingMode.TRAINING if training else torch.onnx.TrainingMode.EVAL
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(2, 1, 8, 8),), str(path), dynamo=False,
                          training=mode, input_names=["input"], output_names=["probabilities"],
                          dynamic_axes={"input": {0: "batch"}, "probabilities": {0: "batch"}},
                          opset_version=18, do_constant_folding=False)
    return path


def test_good_export_passes(tmp_path: Path) -> None:
    net = small_bn_net()
    report = verify_onnx_export(net, legacy_export(net, tmp_path / "m.onnx"), INPUTS)
    assert report.ok, report.failures
    assert report.checker_passed
    assert set(report.parity_max_abs_diff) == {1, 7, 64}
    assert max(report.parity_max_abs_diff.values()) <= 1e-5
    assert report.batch_independence_max_abs_diff is not None
    assert report.batch_independence_max_abs_diff <= 1e-6
    assert (report.batchnorm_nodes, report.training_mode_batchnorm_nodes) == (1, 0)
    report.raise_for_failures()  # no-op


def test_batchnorm_in_training_mode_fails_loudly(tmp_path: Path) -> None:
    net = small_bn_net().train()
    path = legacy_export(net, tmp_path / "m.onnx", training=True)
    report = verify_onnx_export(net, path, INPUTS)
    assert not report.ok
    assert report.training_mode_batchnorm_nodes == 1
    assert any("training mode (training_mode=1)" in f for f in report.failures)
    assert any("depends on the batch" in f for f in report.failures)
    assert net.training  # the module's mode is restored after the eval-mode comparison
    with pytest.raises(VerificationError, match="failed verification") as info:
        report.raise_for_failures()
    assert info.value.report is report


def test_graph_that_mixes_rows_of_a_batch_fails(tmp_path: Path) -> None:
    net = BatchMeanNet().eval()
    report = verify_onnx_export(net, legacy_export(net, tmp_path / "m.onnx"), INPUTS)
    assert report.training_mode_batchnorm_nodes == 0
    assert max(report.parity_max_abs_diff.values()) <= 1e-5  # same bug on both sides...
    assert report.batch_independence_max_abs_diff > 1e-3  # ...but rows depend on the batch
    assert [f for f in report.failures if "differ from the same rows sent alone" in f]


def test_graph_that_differs_from_the_module_fails_parity(tmp_path: Path) -> None:
    path = legacy_export(small_bn_net(seed=0), tmp_path / "m.onnx")
    report = verify_onnx_export(small_bn_net(seed=1), path, INPUTS)
    assert len([f for f in report.failures if "differs from PyTorch eval" in f]) == 3
    assert min(report.parity_max_abs_diff.values()) > 1e-5


def test_unloadable_graph_is_reported_not_raised(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(b"")  # an empty model: the checker and onnxruntime both reject it
    report = verify_onnx_export(small_bn_net(), path, INPUTS)
    assert not report.checker_passed
    assert any("onnxruntime cannot load" in f for f in report.failures)
