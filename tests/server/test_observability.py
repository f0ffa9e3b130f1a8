"""Health checks, reflection and Prometheus metrics: what operators and Kubernetes look at."""

from __future__ import annotations

import asyncio
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from bnserve.client import Client, InvalidRequestError, ServerUnavailableError
from bnserve.server.app import SERVICE_NAME
from bnserve.server.settings import ServerSettings
from support import onnx_graphs
from support.ports import free_port
from support.server_thread import ServerThread
from support.waiting import wait_for


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
    url = f"http://127.0.0.1:{server.settings.metrics_port}/metrics"

    def scrape() -> dict[str, float]:
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        return {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")
        }

    # Counters are process-wide (other tests' servers share them): compare before and after.
    before = scrape()
    with Client(server.address) as client:
        for _ in range(3):
            client.infer("linear", {"input": np.ones((2, 4), np.float32)})
        with pytest.raises(InvalidRequestError):
            client.infer("linear", {"input": np.ones((2, 5), np.float32)})
    after = scrape()

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    assert delta('bnserve_infer_requests_total{code="OK",model="linear"}') == 3
    assert delta('bnserve_infer_requests_total{code="INVALID_ARGUMENT",model="linear"}') == 1
    assert delta('bnserve_batch_rows_count{model="linear"}') == 3
    assert delta('bnserve_batch_rows_sum{model="linear"}') == 6


def test_draining_server_says_not_serving_but_still_answers(tmp_path):
    onnx_graphs.linear_softmax(tmp_path / "linear" / "1" / "model.onnx")
    serving = health_pb2.HealthCheckResponse.SERVING
    with ServerThread(ServerSettings(repository=tmp_path)) as running:
        with grpc.insecure_channel(running.address) as channel, Client(running.address) as client:
            stub = health_pb2_grpc.HealthStub(channel)
            services = ("", SERVICE_NAME, "linear")
            assert [stub.Check(health_pb2.HealthCheckRequest(service=s)).status
                    for s in services] == [serving] * 3
            stopping = asyncio.run_coroutine_threadsafe(
                running.server.stop(grace=5, drain_window=30), running._loop)  # noqa: SLF001
            wait_for(lambda: all(
                stub.Check(health_pb2.HealthCheckRequest(service=s)).status != serving
                for s in services), timeout=5, what="every health status NOT_SERVING")
            assert not client.is_ready() and not client.is_live()
            x = np.ones((1, 4), np.float32)
            assert client.infer("linear", {"input": x})["probabilities"].shape == (1, 3)
            running._loop.call_soon_threadsafe(running.server.end_drain_window)  # noqa: SLF001
            stopping.result(timeout=20)


def test_strict_readiness_reports_a_refused_model(tmp_path):
    onnx_graphs.linear_softmax(tmp_path / "linear" / "1" / "model.onnx")
    onnx_graphs.batchnorm(tmp_path / "bad" / "1" / "model.onnx", training_mode=True)
    with ServerThread(ServerSettings(repository=tmp_path)) as running:
        with grpc.insecure_channel(running.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            live = stub.Check(health_pb2.HealthCheckRequest(service=""))
            ready = stub.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
        assert live.status == health_pb2.HealthCheckResponse.SERVING  # no restart loop
        assert ready.status == health_pb2.HealthCheckResponse.NOT_SERVING
        with Client(running.address) as client:
            assert not client.is_ready()
            assert client.is_model_ready("linear")  # what loaded is still served
            assert client.infer("linear", {"input": np.ones((1, 4), np.float32)})


def test_stop_lets_in_flight_calls_finish_and_refuses_new_ones(tmp_path):
    onnx_graphs.linear_softmax(tmp_path / "linear" / "1" / "model.onnx")
    with ServerThread(ServerSettings(repository=tmp_path)) as running:
        batcher = running.server.models["linear"].batcher
        entered, gate = threading.Event(), threading.Event()
        real_run = batcher._run_batch  # noqa: SLF001 - hold one run open to observe the drain

        def held_run(feeds):
            entered.set()
            gate.wait(10)
            return real_run(feeds)

        batcher._run_batch = held_run  # noqa: SLF001
        x = np.ones((1, 4), np.float32)
        with Client(running.address, timeout=20) as client, ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(client.infer, "linear", {"input": x})
            assert entered.wait(10)
            stopping = asyncio.run_coroutine_threadsafe(running.server.stop(grace=15, drain_window=0),
                                                        running._loop)  # noqa: SLF001
            wait_for(lambda: running.server.refusing, timeout=10, what="new calls refused")
            with Client(running.address, timeout=5) as late, pytest.raises(ServerUnavailableError):
                late.infer("linear", {"input": x})
            gate.set()
            assert in_flight.result(timeout=20)["probabilities"].shape == (1, 3)
            stopping.result(timeout=20)
