"""The monitor's reference at load: from the card's unfolded graph, from a foreign graph's own
BatchNorm nodes, or none, with the reason; a broken reference never stops the model serving."""

from __future__ import annotations

import os
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from bnserve.server.loader import load_version
from bnserve.server.model_config import default_settings
from bnserve.server.repository import ModelRepository
from bnserve.server.settings import ServerSettings
from support import onnx_graphs


def load(root, name: str, **settings):
    server = ServerSettings(**{"repository": root, "drift_sample_rate": 1.0,
                               "drift_probe_budget": 1.0, **settings})
    entry = ModelRepository(root).snapshot(name).versions[1]
    return load_version(name, entry, default_settings(server), server)


@pytest.fixture
def digits_copy(digits_repository, tmp_path):
    shutil.copytree(digits_repository / "digits", tmp_path / "digits")
    return tmp_path


def test_an_exported_version_is_monitored_against_its_unfolded_graph(digits_copy, digits_data):
    model = load(digits_copy, "digits")
    monitor = model.monitoring.monitor
    assert monitor is not None and monitor.reference.source == "unfolded.onnx"
    assert monitor.policy.threshold_source == "calibrated at export"
    assert len(monitor.reference.layers) == 7 and monitor.reference.layers[0].name == "stem.1"
    images, _ = digits_data
    answer = model._run({"input": images[:32]})  # noqa: SLF001 - the hook under test
    assert answer["probabilities"].shape == (32, 10)
    assert monitor.wait_idle() and monitor.report().sampled_rows == 32


@pytest.mark.parametrize(("damage", "reason"), [
    ("garbage", "the reference graph unfolded.onnx is not a valid ONNX model"),
    ("symlink", "the reference graph unfolded.onnx is a symlink"),
    ("missing", "the reference graph unfolded.onnx is missing"),
    ("stale", "unfolded.onnx answers differently from model.onnx"),
])
def test_a_broken_reference_leaves_the_model_served_without_a_monitor(digits_copy, digits_data,
                                                                       damage, reason, caplog):
    reference = digits_copy / "digits" / "1" / "unfolded.onnx"
    if damage == "garbage":
        reference.write_bytes(b"not onnx at all")
    elif damage == "symlink":
        outside = digits_copy / "elsewhere.onnx"
        reference.rename(outside)
        os.symlink(outside, reference)
    elif damage == "missing":
        reference.unlink()
    else:  # another model's statistics: every score would be meaningless
        graph = onnx.load(str(reference))
        for tensor in graph.graph.initializer:
            if tensor.name.endswith("running_mean"):
                tensor.CopyFrom(numpy_helper.from_array(
                    numpy_helper.to_array(tensor) + 5.0, tensor.name))
        onnx.save(graph, str(reference))
    model = load(digits_copy, "digits")
    assert model.monitoring.monitor is None
    assert model.monitoring.drift_problem.startswith(reason)
    assert str(digits_copy) not in model.monitoring.drift_problem
    assert "serving without a drift monitor" in caplog.text
    images, _ = digits_data
    assert model._run({"input": images[:4]})["probabilities"].shape == (4, 10)  # noqa: SLF001


def test_a_foreign_graph_is_monitored_through_its_own_batchnorm_nodes(tmp_path):
    onnx_graphs.batchnorm(tmp_path / "bn" / "1" / "model.onnx", training_mode=False)
    model = load(tmp_path, "bn")
    monitor = model.monitoring.monitor
    assert monitor is not None and monitor.reference.source == "model.onnx"
    assert monitor.policy.threshold_source == "default" and monitor.policy.threshold == 0.05
    model._run({"x": np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)})  # noqa: SLF001
    assert monitor.wait_idle() and monitor.report().sampled_rows == 8


def test_a_model_without_batchnorm_has_no_monitor_and_says_why(tmp_path):
    onnx_graphs.linear_softmax(tmp_path / "linear" / "1" / "model.onnx")
    model = load(tmp_path, "linear", capture_rows=16)
    assert model.monitoring.monitor is None
    assert model.monitoring.drift_problem == ("the model has no BatchNormalization layers "
                                              "(model.onnx)")
    assert model.monitoring.capture is not None  # capture does not need BatchNorm


def test_the_monitor_is_off_when_nothing_is_sampled(digits_copy):
    model = load(digits_copy, "digits", drift_sample_rate=0.0)
    assert model.monitoring.sampler is None
    assert "--drift-sample-rate 0" in model.monitoring.drift_problem
