"""Triton's extensions over gRPC: versions, ModelConfig, ModelStatistics, classification, the
repository API and its admin token, health per model. One explicit-mode server."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bnserve.client import (
    Client,
    FailedPreconditionError,
    InvalidRequestError,
    ModelNotFoundError,
    ServerUnavailableError,
    UnauthenticatedError,
)
from bnserve.proto import open_inference_pb2 as pb
from bnserve.proto import open_inference_pb2_grpc as pb_grpc
from bnserve.server.settings import ServerSettings
from support import onnx_graphs
from support.server_thread import ServerThread

TOKEN = "s3cret-token"
X = np.ones((2, 2), np.float32)


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    root = tmp_path_factory.mktemp("repo")
    onnx_graphs.scaled(root / "scaled" / "1" / "model.onnx", 1.0)
    onnx_graphs.scaled(root / "scaled" / "2" / "model.onnx", 2.0)
    (root / "scaled" / "config.pbtxt").write_text(
        "max_batch_size: 8\ndynamic_batching { }\nversion_policy { all { } }\n")
    onnx_graphs.linear_softmax(root / "classes" / "1" / "model.onnx", classes=3)
    (root / "classes" / "1" / "metadata.json").write_text('{"labels": ["cat", "dog", "bird"]}')
    onnx_graphs.scaled(root / "later" / "1" / "model.onnx", 5.0)
    (root / "broken" / "1").mkdir(parents=True)
    (root / "broken" / "1" / "model.onnx").write_bytes(b"junk")
    (root / "token").write_text(TOKEN + "\n")
    return root


@pytest.fixture(scope="module")
def server(repository):
    settings = ServerSettings(repository=repository, model_control_mode="explicit",
                              load_model=["scaled", "classes"],
                              admin_token_file=repository / "token")
    with ServerThread(settings) as running:
        yield running


@pytest.fixture(scope="module")
def admin(server):
    with Client(server.address, admin_token=TOKEN, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def anonymous(server):
    with Client(server.address, timeout=60) as client:
        yield client


def test_every_selected_version_serves_and_is_addressed_by_number(anonymous):
    assert anonymous.metadata("scaled").versions == ("1", "2")
    assert anonymous.is_model_ready("scaled", version="1")
    assert not anonymous.is_model_ready("scaled", version="3")
    for version, factor in (("1", 1.0), ("2", 2.0), ("", 2.0)):
        y = anonymous.infer("scaled", {"x": X}, version=version)["y"]
        np.testing.assert_array_equal(y, X * factor)
    with pytest.raises(ModelNotFoundError, match="has no version '3'; ready versions: 1, 2"):
        anonymous.infer("scaled", {"x": X}, version="3")


def test_model_config_is_the_effective_one_in_tritons_convention(anonymous):
    config = anonymous.model_config("scaled")
    assert config["name"] == "scaled" and config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] == 8
    assert config["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": ["2"]}]
    assert config["version_policy"] == {"all": {}}
    assert config["instance_group"][0]["count"] == 1
    defaults = anonymous.model_config("classes")  # no config.pbtxt: the server's settings
    assert defaults["max_batch_size"] == 64
    assert defaults["dynamic_batching"]["max_queue_delay_microseconds"] == "1000"


def test_statistics_count_requests_rows_and_runs_per_version(anonymous):
    before = {s["version"]: s for s in anonymous.statistics("scaled")}
    for _ in range(3):
        anonymous.infer("scaled", {"x": X}, version="1")
    after = {s["version"]: s for s in anonymous.statistics("scaled")}
    assert sorted(after) == ["1", "2"]

    def count(stats, *path):
        for key in path:
            stats = stats.get(key, {})
        return int(stats or 0)

    assert count(after["1"], "inference_count") - count(before["1"], "inference_count") == 6
    assert count(after["1"], "inference_stats", "success", "count") - count(
        before["1"], "inference_stats", "success", "count") == 3
    assert count(after["1"], "execution_count") >= count(before["1"], "execution_count") + 1
    assert count(after["1"], "inference_stats", "compute_infer", "ns") > 0
    assert int(after["1"]["last_inference"]) > 0
    assert any(b["batch_size"] == "2" for b in after["1"]["batch_stats"])
    every = anonymous.statistics()
    assert {(s["name"], s["version"]) for s in every} >= {("scaled", "1"), ("classes", "1")}
    with pytest.raises(ModelNotFoundError):
        anonymous.statistics("nope")


def test_classification_returns_the_top_k_with_labels(server):
    x = np.array([[3.0, 0.0, -1.0, 2.0]], np.float32)
    request = pb.ModelInferRequest(model_name="classes")
    request.inputs.add(name="input", datatype="FP32", shape=x.shape)
    request.raw_input_contents.append(x.tobytes())
    wanted = request.outputs.add(name="probabilities")
    wanted.parameters["classification"].int64_param = 2
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        response = stub.ModelInfer(request)
        plain = stub.ModelInfer(pb.ModelInferRequest(
            model_name="classes", inputs=request.inputs, raw_input_contents=[x.tobytes()]))
        wanted.parameters["classification"].int64_param = 0
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "classification" in info.value.details()
    assert (response.outputs[0].datatype, list(response.outputs[0].shape)) == ("BYTES", [1, 2])
    from bnserve.proto.tensors import decode_raw

    top = decode_raw(response.raw_output_contents[0], "BYTES", [1, 2], name="top")[0]
    scores = decode_raw(plain.raw_output_contents[0], "FP32", [1, 3], name="p")[0]
    order = np.argsort(-scores)[:2]
    labels = ["cat", "dog", "bird"]
    assert [t.decode() for t in top] == [f"{scores[i]:f}:{i}:{labels[i]}" for i in order]


def test_server_metadata_lists_the_extensions(anonymous):
    assert set(anonymous.server_metadata()["extensions"]) == {
        "classification", "model_configuration", "model_repository", "statistics"}


def test_the_repository_api_needs_the_admin_token(server, anonymous):
    with pytest.raises(UnauthenticatedError, match="authorization: Bearer"):
        anonymous.repository_index()
    with Client(server.address, admin_token="wrong") as wrong:
        for call in (wrong.repository_index, lambda: wrong.load_model("later"),
                     lambda: wrong.unload_model("scaled")):
            with pytest.raises(UnauthenticatedError):
                call()


def test_the_index_lists_every_model_and_version_with_its_state(admin):
    rows = {(r.name, r.version): (r.state, r.reason) for r in admin.repository_index()}
    assert rows[("scaled", "1")] == ("READY", "") and rows[("scaled", "2")] == ("READY", "")
    assert rows[("later", "")] == ("UNAVAILABLE", "not loaded (load it with RepositoryModelLoad)")
    assert {r.name for r in admin.repository_index(ready=True)} == {"scaled", "classes"}


def test_load_and_unload_in_explicit_mode(server, admin, anonymous):
    with pytest.raises(ModelNotFoundError):  # on disk but never loaded: not served
        anonymous.infer("later", {"x": X})
    admin.load_model("later")
    np.testing.assert_array_equal(anonymous.infer("later", {"x": X})["y"], X * 5)
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        status = health.Check(health_pb2.HealthCheckRequest(service="later")).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        admin.unload_model("later")
        assert not anonymous.is_model_ready("later")
        with pytest.raises(ServerUnavailableError, match="version 1 was unloaded"):
            anonymous.infer("later", {"x": X})
        status = health.Check(health_pb2.HealthCheckRequest(service="later")).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    admin.load_model("later", config={"max_batch_size": 2, "dynamic_batching": {}})
    assert anonymous.model_config("later")["max_batch_size"] == 2
    with pytest.raises(InvalidRequestError, match="max_batch_sizes"):
        admin.load_model("later", config={"max_batch_sizes": 2})


def test_a_model_that_fails_to_load_says_why_without_host_paths(server, admin, anonymous):
    with pytest.raises(FailedPreconditionError) as info:
        admin.load_model("broken")
    assert info.value.details == ("model 'broken' failed to load: version 1 failed to load: "
                                    "model.onnx is not a valid ONNX model")
    with pytest.raises(ServerUnavailableError) as info:
        anonymous.infer("broken", {"x": X})
    assert info.value.details == ("model 'broken' is not ready: version 1 failed to load: "
                                    "model.onnx is not a valid ONNX model")
    assert str(server.settings.repository) not in info.value.details
    assert not anonymous.is_ready()  # strict readiness: a model asked for does not serve
    admin.unload_model("broken")
    assert anonymous.is_ready()


@pytest.mark.parametrize("name", ["../scaled", "/etc/passwd", "a/b", "..", ".", "x\x00y",
                                  "bell\x07", "n" * 256, "", ".staging-1"])
def test_model_names_are_checked_before_the_filesystem(admin, repository, name):
    before = sorted(p.name for p in repository.iterdir())
    for call in (lambda: admin.load_model(name), lambda: admin.unload_model(name)):
        with pytest.raises(InvalidRequestError, match="model name"):
            call()
    assert sorted(p.name for p in repository.iterdir()) == before


def test_load_parameters_other_than_config_are_refused(admin):
    request = pb.RepositoryModelLoadRequest(model_name="later")
    request.parameters["file:1/model.onnx"].bytes_param = b"\x08\x07"
    with pytest.raises(InvalidRequestError, match="cannot be uploaded"):
        admin._call("RepositoryModelLoad", request, 10, admin._admin)  # noqa: SLF001
    with pytest.raises(InvalidRequestError, match="one repository"):
        admin._call("RepositoryIndex", pb.RepositoryIndexRequest(repository_name="other"), 10,  # noqa: SLF001
                    admin._admin)  # noqa: SLF001


def test_without_a_token_file_the_repository_api_is_off_unless_opened(tmp_path):
    onnx_graphs.scaled(tmp_path / "m" / "1" / "model.onnx", 1.0)
    with ServerThread(ServerSettings(repository=tmp_path)) as closed, \
            Client(closed.address) as client:
        with pytest.raises(FailedPreconditionError, match="disabled.*--admin-token-file"):
            client.repository_index()
    with ServerThread(ServerSettings(repository=tmp_path, allow_unauthenticated_admin=True)) as opened, \
            Client(opened.address) as client:
        assert [r.name for r in client.repository_index()] == ["m"]
        with pytest.raises(FailedPreconditionError, match="needs --model-control-mode explicit"):
            client.load_model("m")
