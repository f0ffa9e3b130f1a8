"""Provider selection, repository scanning and the load-time guards, without a server."""

from __future__ import annotations

import logging

import pytest
from onnx import TensorProto

from bnserve.server.errors import ModelLoadError
from bnserve.server.repository import ModelRepository
from bnserve.server.runtime import CPU, CUDA, OnnxRuntimeSession, select_providers
from bnserve.server.settings import ServerSettings
from support import onnx_graphs
from support.lifecycle import lifecycle


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


def test_snapshot_lists_complete_versions_and_skips_odd_folders_with_one_log_line(tmp_path, caplog):
    for version in ("1", "10", "2", "007", "²", "latest"):
        onnx_graphs.linear_softmax(tmp_path / "a" / version / "model.onnx")
    (tmp_path / "a" / "11").mkdir()  # no model.onnx yet: not a version
    onnx_graphs.linear_softmax(tmp_path / "a" / ".staging-12" / "model.onnx")  # a writer's
    (tmp_path / "empty").mkdir()
    repository = ModelRepository(tmp_path)
    assert repository.models() == ["a", "empty"]
    with caplog.at_level(logging.WARNING):
        snapshot = repository.snapshot("a")
        repository.snapshot("a")  # a second look logs nothing new
    assert sorted(snapshot.versions) == [1, 2, 10]
    ignored = [r.getMessage() for r in caplog.records if "ignoring folder" in r.getMessage()]
    assert len(ignored) == 3 and not any("staging" in line for line in ignored)
    assert repository.snapshot("empty").versions == {}


async def test_odd_version_folders_never_stop_the_start(tmp_path):
    onnx_graphs.linear_softmax(tmp_path / "odd" / "²" / "model.onnx")
    onnx_graphs.linear_softmax(tmp_path / "odd" / "007" / "model.onnx")
    onnx_graphs.linear_softmax(tmp_path / "odd" / "3" / "model.onnx")
    async with lifecycle(tmp_path) as (_, registry):
        assert registry.ready_versions("odd") == [3] and registry.ready


async def test_training_mode_batchnorm_is_refused_with_a_log_line(tmp_path, caplog):
    onnx_graphs.batchnorm(tmp_path / "bad" / "1" / "model.onnx", training_mode=True)
    onnx_graphs.identity(tmp_path / "good" / "1" / "model.onnx", TensorProto.FLOAT)
    with caplog.at_level(logging.ERROR):
        async with lifecycle(tmp_path) as (_, registry):
            assert registry.ready_versions("good") == [1] and registry.ready_versions("bad") == []
    assert "model 'bad' version 1 failed to load" in caplog.text
    assert "training_mode=1" in caplog.text
    assert "depend on the other requests in a batch" in caplog.text


def test_settings_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("BNSERVE_MAX_BATCH_SIZE", "7")
    monkeypatch.setenv("BNSERVE_REPOSITORY", str(tmp_path))
    settings = ServerSettings()
    assert settings.max_batch_size == 7 and settings.repository == tmp_path
    assert ServerSettings(max_batch_size=3).max_batch_size == 3


async def test_unreadable_model_files_do_not_stop_the_others(tmp_path, caplog):
    (tmp_path / "corrupt" / "1").mkdir(parents=True)
    (tmp_path / "corrupt" / "1" / "model.onnx").write_bytes(b"not a protobuf at all")
    onnx_graphs.identity(tmp_path / "good" / "1" / "model.onnx", TensorProto.FLOAT)
    with caplog.at_level(logging.ERROR):
        async with lifecycle(tmp_path) as (_, registry):
            assert registry.ready_versions("good") == [1]
            assert registry.version_entry("corrupt", 1).reason == (
                "failed to load: model.onnx is not a valid ONNX model")
    assert "model 'corrupt' version 1 failed to load" in caplog.text


async def test_readiness_is_strict_about_refused_models(tmp_path):
    onnx_graphs.batchnorm(tmp_path / "bad" / "1" / "model.onnx", training_mode=True)
    onnx_graphs.identity(tmp_path / "good" / "1" / "model.onnx", TensorProto.FLOAT)
    async with lifecycle(tmp_path) as (_, strict):
        assert not strict.ready
    async with lifecycle(tmp_path, strict_readiness=False) as (_, lenient):
        assert lenient.ready
    async with lifecycle(tmp_path / "good" / "1") as (_, empty):  # no model folders
        assert not empty.ready


async def test_training_mode_batchnorm_inside_a_local_function_is_refused_too(tmp_path, caplog):
    onnx_graphs.batchnorm_in_local_function(tmp_path / "hidden" / "1" / "model.onnx")
    with caplog.at_level(logging.ERROR):
        async with lifecycle(tmp_path) as (_, registry):
            assert registry.ready_versions("hidden") == []
    assert "BatchNormalization node hidden_bn has training_mode=1" in caplog.text
