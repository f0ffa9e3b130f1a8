"""Provider selection, repository scanning and the BatchNorm guard, without a server."""

from __future__ import annotations

import logging

import pytest
from onnx import TensorProto

from bnserve.server.core import ModelManager
from bnserve.server.errors import ModelLoadError
from bnserve.server.repository import latest_versions
from bnserve.server.runtime import CPU, CUDA, OnnxRuntimeSession, select_providers
from bnserve.server.settings import ServerSettings
from support import onnx_graphs


def test_cpu_is_the_default_and_auto_prefers_cuda_only_when_present():
    assert select_providers("cpu", [CUDA, CPU]) == [CPU]
    assert select_providers("auto", [CUDA, CPU]) == [CUDA, CPU]
    assert select_providers("auto", [CPU]) == [CPU]
    assert select_providers("cuda", [CUDA, CPU]) == [CUDA, CPU]


def test_asking_for_cuda_without_it_fails_with_a_clear_message():
    with pytest.raises(ModelLoadError, match="no CUDAExecutionProvider.*onnxruntime-gpu"):
        select_providers("cuda", [CPU])


def test_session_runs_on_the_selected_provider(tmp_path):
    path = onnx_graphs.linear_softmax(tmp_path / "m.onnx")
    session = OnnxRuntimeSession(path, device="auto")
    assert session.providers[-1] == CPU
    assert [(s.name, s.datatype, s.shape) for s in session.inputs] == [("input", "FP32", (-1, 4))]


def test_repository_serves_the_highest_complete_version(tmp_path):
    onnx_graphs.linear_softmax(tmp_path / "a" / "1" / "model.onnx")
    onnx_graphs.linear_softmax(tmp_path / "a" / "10" / "model.onnx")
    onnx_graphs.linear_softmax(tmp_path / "a" / "2" / "model.onnx")
    (tmp_path / "a" / "11").mkdir()  # no model.onnx yet: not a version
    onnx_graphs.linear_softmax(tmp_path / "a" / ".staging-12" / "model.onnx")  # a writer's
    (tmp_path / "a" / "10" / "metadata.json").write_text('{"labels": ["x", "y", "z"]}')
    (tmp_path / "empty").mkdir()
    found = latest_versions(tmp_path)
    assert [(m.name, m.version) for m in found] == [("a", 10)]
    assert found[0].metadata == {"labels": ["x", "y", "z"]}


def test_training_mode_batchnorm_is_refused_with_a_log_line(tmp_path, caplog):
    onnx_graphs.batchnorm(tmp_path / "bad" / "1" / "model.onnx", training_mode=True)
    onnx_graphs.identity(tmp_path / "good" / "1" / "model.onnx", TensorProto.FLOAT)
    manager = ModelManager(ServerSettings(repository=tmp_path))
    with caplog.at_level(logging.ERROR):
        manager.load_all()
    assert list(manager.models) == ["good"]
    assert "refusing to load model 'bad' version 1" in caplog.text
    assert "training_mode=1" in caplog.text
    assert "depend on the other requests in a batch" in caplog.text


def test_settings_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("BNSERVE_MAX_BATCH_SIZE", "7")
    monkeypatch.setenv("BNSERVE_REPOSITORY", str(tmp_path))
    settings = ServerSettings()
    assert settings.max_batch_size == 7 and settings.repository == tmp_path
    assert ServerSettings(max_batch_size=3).max_batch_size == 3


def test_unreadable_or_odd_model_folders_do_not_stop_the_others(tmp_path, caplog):
    onnx_graphs.linear_softmax(tmp_path / "padded" / "007" / "model.onnx")  # version 7
    (tmp_path / "corrupt" / "1").mkdir(parents=True)
    (tmp_path / "corrupt" / "1" / "model.onnx").write_bytes(b"not a protobuf at all")
    onnx_graphs.identity(tmp_path / "good" / "1" / "model.onnx", TensorProto.FLOAT)
    manager = ModelManager(ServerSettings(repository=tmp_path))
    with caplog.at_level(logging.ERROR):
        manager.load_all()
    assert sorted(manager.models) == ["good", "padded"]
    assert manager.models["padded"].version == "7"
    assert "refusing to load model 'corrupt' version 1" in caplog.text
    assert "not a readable ONNX model" in caplog.text


def test_readiness_is_strict_about_refused_models(tmp_path):
    onnx_graphs.batchnorm(tmp_path / "bad" / "1" / "model.onnx", training_mode=True)
    onnx_graphs.identity(tmp_path / "good" / "1" / "model.onnx", TensorProto.FLOAT)
    strict = ModelManager(ServerSettings(repository=tmp_path))
    lenient = ModelManager(ServerSettings(repository=tmp_path, strict_readiness=False))
    for manager in (strict, lenient):
        manager.load_all()
        assert not manager.ready  # not started yet
        manager.accepting = True
    assert not strict.ready and lenient.ready
    empty = ModelManager(ServerSettings(repository=tmp_path / "good" / "1"))  # no model folders
    empty.load_all()
    empty.accepting = True
    assert not empty.ready


def test_training_mode_batchnorm_inside_a_local_function_is_refused_too(tmp_path, caplog):
    onnx_graphs.batchnorm_in_local_function(tmp_path / "hidden" / "1" / "model.onnx")
    manager = ModelManager(ServerSettings(repository=tmp_path))
    with caplog.at_level(logging.ERROR):
        manager.load_all()
    assert manager.models == {}
    assert "BatchNormalization node hidden_bn has training_mode=1" in caplog.text
