"""Health checks, reflection and Prometheus metrics: what operators and Kubernetes look at."""

from __future__ import annotations

import socket
import urllib.request

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from bnserve.client import Client, InvalidRequestError
from bnserve.server.settings import ServerSettings
from support import onnx_graphs
from support.server_thread import ServerThread


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("repo")
    onnx_graphs.linear_softmax(root / "linear" / "1" / "model.onnx")
    settings = ServerSettings(repository=root, metrics_port=free_port())
    with ServerThread(settings) as running:
        yield running


def test_grpc_health_service_reports_serving(server):
    with grpc.insecure_channel(server.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            answer = stub.Check(health_pb2.HealthCheckRequest(service=service))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as info:
            stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_services(server):
    with grpc.insecure_channel(server.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        answer = next(stub.ServerReflectionInfo(iter([request])))
        names = {s.name for s in answer.list_services_response.service}
    assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names


def test_prometheus_metrics_count_requests_and_batches(server):
    with Client(server.address) as client:
        for _ in range(3):
            client.infer("linear", {"input": np.ones((2, 4), np.float32)})
        with pytest.raises(InvalidRequestError):
            client.infer("linear", {"input": np.ones((2, 5), np.float32)})
    url = f"http://127.0.0.1:{server.settings.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines() if line and not line.startswith("#")
    }
    assert samples['bnserve_infer_requests_total{code="OK",model="linear"}'] >= 3
    assert samples['bnserve_infer_requests_total{code="INVALID_ARGUMENT",model="linear"}'] >= 1
    assert samples['bnserve_batch_rows_count{model="linear"}'] >= 3
    assert samples['bnserve_batch_rows_sum{model="linear"}'] >= 6


def test_draining_server_is_not_ready(tmp_path):
    onnx_graphs.linear_softmax(tmp_path / "linear" / "1" / "model.onnx")
    with ServerThread(ServerSettings(repository=tmp_path)) as running:
        with grpc.insecure_channel(running.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            assert stub.Check(health_pb2.HealthCheckRequest()).status == (
                health_pb2.HealthCheckResponse.SERVING
            )
            running.call(running.server.health.enter_graceful_shutdown())
            assert stub.Check(health_pb2.HealthCheckRequest()).status == (
                health_pb2.HealthCheckResponse.NOT_SERVING
            )
