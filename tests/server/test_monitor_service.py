"""bnserve.v1.BatchNormMonitor over a real server on port 0 with the exported digits CNN:
reflection, the drift report, the Prometheus gauges, the admin-only capture, the status of
each refusal, and the `bnserve drift` command (table and plot)."""

from __future__ import annotations

import shutil
import sys
import urllib.request

import grpc
import numpy as np
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from bnserve.cli import main as bnserve
from bnserve.client import (
    Client,
    FailedPreconditionError,
    InvalidRequestError,
    ModelNotFoundError,
    UnauthenticatedError,
)
from bnserve.proto import monitor_pb2 as mpb
from bnserve.proto import monitor_pb2_grpc as mpb_grpc
from bnserve.server.settings import ServerSettings
from support import onnx_graphs
from support.ports import free_port
from support.server_thread import ServerThread

ADMIN, INFERENCE = "admin-secret-1", "inference-secret-1"
CAPTURE_ROWS = 96


@pytest.fixture(scope="module")
def server(digits_repository, tmp_path_factory):
    root = tmp_path_factory.mktemp("monitored")
    shutil.copytree(digits_repository / "digits", root / "digits")
    onnx_graphs.linear_softmax(root / "linear" / "1" / "model.onnx")
    secrets = tmp_path_factory.mktemp("secrets")
    (secrets / "admin").write_text(ADMIN)
    (secrets / "tokens").write_text(INFERENCE + "\n")
    # Every sampled batch is measured (rate 1, no budget wait), one history point per probe.
    settings = ServerSettings(repository=root, drift_sample_rate=1.0, drift_probe_budget=1.0,
                              drift_history_interval_s=0.0, capture_rows=CAPTURE_ROWS,
                              admin_token_file=secrets / "admin",
                              auth_token_file=secrets / "tokens", metrics_port=free_port())
    with ServerThread(settings) as running:
        running.token_file = secrets / "tokens"
        yield running


def client(server, **tokens) -> Client:
    return Client(server.address, auth_token=INFERENCE, **tokens)


def send(server, images: np.ndarray, batch: int = 32) -> None:
    """One request per batch, each probe finished before the next: nothing is dropped."""
    monitor = server.server.models["digits"].monitoring.monitor
    with client(server) as c:
        for start in range(0, len(images), batch):
            c.predict("digits", images[start:start + batch])
            assert monitor.wait_idle()


def test_reflection_lists_the_monitor_service(server):
    with grpc.insecure_channel(server.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        answer = next(stub.ServerReflectionInfo(iter([request])))
    assert "bnserve.v1.BatchNormMonitor" in {s.name for s in answer.list_services_response.service}


def test_the_drift_report_rises_with_a_shift_and_falls_back(server, digits_data, capsys,
                                                            tmp_path):
    images, _ = digits_data
    with client(server) as c:
        before = c.drift_report("digits")
        assert before.rows_in_window == 0 and before.message.startswith("warming up")
        send(server, images[:256])
        clean = c.drift_report("digits", include_channels=True)
        assert (clean.model, clean.version, clean.measure) == ("digits", "1", "gaussian_kl")
        assert clean.threshold_source == "calibrated at export"
        assert clean.rows_in_window == clean.window_rows == 128
        assert clean.sampled_batches == 8 and clean.sampled_rows == 256
        assert clean.sample_rate == 1.0 and clean.dropped_samples == 0
        assert [layer.name for layer in clean.layers][:2] == ["stem.1", "stage1.conv1.1"]
        assert clean.score < clean.threshold and not clean.alarm
        stem = clean.layers[0]
        assert stem.channels == 16 and stem.live_mean.shape == stem.reference_mean.shape == (16,)
        send(server, images[256:512] + 3.0)  # brighter images: every activation moves
        shifted = c.drift_report("digits", 1)
        assert shifted.alarm and shifted.alarm_since > 0 and shifted.score > shifted.threshold
        assert shifted.layers[0].live_mean is None  # channels only when asked for
        assert len(shifted.history) == 16 and shifted.history[-1].score == pytest.approx(
            shifted.score)

    # The command a user runs: the table, exit status 3 while the alarm is up, and the plot.
    plot = tmp_path / "drift.png"
    common = ["drift", "--address", server.address, "--model", "digits",
              "--auth-token-file", str(server.token_file)]
    assert bnserve([*common, "--plot", str(plot)]) == 3
    out = capsys.readouterr().out
    assert "layer" in out.splitlines()[1] and "mean shift" in out
    assert "stem.1" in out and "ALARM (since" in out and "calibrated at export" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    send(server, images[512:768])  # clean again: the window slides back
    assert bnserve([*common, "--watch", "0.01", "--count", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("model score") == 2 and out.strip().endswith("ok")


def test_plot_without_matplotlib_says_how_to_get_it(server, monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    monkeypatch.delitem(sys.modules, "bnserve.client.drift_plot", raising=False)
    code = bnserve(["drift", "--address", server.address, "--model", "digits",
                    "--plot", str(tmp_path / "x.png")])
    assert code == 1
    assert "pip install matplotlib" in capsys.readouterr().err


def test_prometheus_shows_each_layers_drift(server, digits_data):
    send(server, digits_data[0][:64])
    url = f"http://127.0.0.1:{server.settings.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    assert 'bnserve_bn_drift{layer="stem.1",model="digits",version="1"}' in text
    assert 'bnserve_bn_drift_score{model="digits",version="1"}' in text
    assert 'bnserve_bn_drift_alarm{model="digits",version="1"}' in text
    assert 'bnserve_bn_drift_threshold{model="digits",version="1"}' in text
    assert 'bnserve_bn_drift_sampled_rows_total{model="digits",version="1"}' in text
    assert 'model="linear"' not in "\n".join(
        line for line in text.splitlines() if line.startswith("bnserve_bn_drift"))


def test_captured_inputs_need_the_admin_token(server, digits_data):
    images, _ = digits_data
    send(server, images[:128])
    with client(server) as c, pytest.raises(UnauthenticatedError) as refused:
        c.captured_inputs("digits")
    assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED  # an inference token
    with Client(server.address) as anonymous, pytest.raises(UnauthenticatedError) as refused:
        anonymous.captured_inputs("digits")
    assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert "CapturedInputs needs metadata 'authorization: Bearer <admin token>'" in str(
        refused.value)
    with client(server, admin_token=ADMIN) as admin:
        rows = admin.captured_inputs("digits")["input"]
        assert rows.shape == (CAPTURE_ROWS, 1, 8, 8) and rows.dtype == np.float32
        sent = {row.tobytes() for row in images[:128]}
        assert all(row.tobytes() in sent for row in rows)  # the most recent sampled rows
        assert admin.captured_inputs("digits", "1", max_rows=5)["input"].shape[0] == 5


def test_refusals_carry_the_right_status(server):
    with client(server, admin_token=ADMIN) as c:
        with pytest.raises(ModelNotFoundError, match="unknown model 'nope'"):
            c.drift_report("nope")
        with pytest.raises(ModelNotFoundError, match="has no version '7'"):
            c.drift_report("digits", 7)
        with pytest.raises(InvalidRequestError, match="model_version: expected a version"):
            c.drift_report("digits", "latest")
        with pytest.raises(InvalidRequestError, match="model_name: expected"):
            c.drift_report("")
        with pytest.raises(InvalidRequestError, match="model name '../x'"):
            c.drift_report("../x")
        with pytest.raises(FailedPreconditionError, match="no drift monitor: the model has no "
                           "BatchNormalization layers"):
            c.drift_report("linear")
        assert c.captured_inputs("linear") == {}  # nothing served yet
        c.infer("linear", {"input": np.ones((3, 4), np.float32)})
        assert c.captured_inputs("linear", max_rows=1)["input"].shape == (1, 4)
    with Client(server.address) as anonymous, pytest.raises(UnauthenticatedError):
        anonymous.drift_report("digits")  # the server has --auth-token-file
    with grpc.insecure_channel(server.address) as channel:
        stub = mpb_grpc.BatchNormMonitorStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Recalibrate(mpb.RecalibrateRequest(model_name="digits"))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as info:
            stub.Recalibrate(mpb.RecalibrateRequest(model_name="digits"),
                             metadata=(("authorization", f"Bearer {INFERENCE}"),))
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with client(server) as c:
        assert c.is_ready()  # every refusal left the server serving
