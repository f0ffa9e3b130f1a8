"""A hostile or unlucky client against the real server (a `bnserve serve` subprocess).

Every case checks the answer a client gets, then that the server is still live and ready
and that exactly the expected request counters moved (``bnserve_infer_requests_total`` and
``bnserve_rejected_calls_total``, read from the Prometheus endpoint): an attack that is
answered but not counted is invisible to an operator.
"""

from __future__ import annotations

import threading
import urllib.request

import grpc
import numpy as np
import onnx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from onnx import TensorProto, helper, numpy_helper
from prometheus_client.parser import text_string_to_metric_families

from bnserve.proto import open_inference_pb2 as pb
from bnserve.proto.tensors import encode_raw
from support import onnx_graphs
from support.ports import free_port
from support.subprocess_server import SubprocessServer
from support.waiting import wait_for

SERVICE = "inference.GRPCInferenceService"
MAX_MESSAGE = 4 << 20
COUNTERS = ("bnserve_infer_requests_total", "bnserve_rejected_calls_total")
SLOW_WIDTH = 1024


def _slow_matmul(path, width: int = SLOW_WIDTH, depth: int = 384) -> None:
    """x [N, width] -> y [N, width] through `depth` MatMuls with one shared weight: a run
    that takes long enough (tens to hundreds of ms) to keep the model busy."""
    weight = (np.eye(width) * 0.5 + 0.5 / width).astype(np.float32)
    nodes, previous = [], "x"
    for i in range(depth):
        out = "y" if i == depth - 1 else f"t{i}"
        nodes.append(helper.make_node("MatMul", [previous, "W"], [f"h{i}"]))
        nodes.append(helper.make_node("Tanh", [f"h{i}"], [out]))  # nothing to fold away
        previous = out
    graph = helper.make_graph(
        nodes, "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        [numpy_helper.from_array(weight, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def _doubled(path, width: int) -> None:
    """x [N, width] -> y [N, 2 * width] = [x, x]: an answer twice the request's size."""
    graph = helper.make_graph(
        [helper.make_node("Concat", ["x", "x"], ["y"], axis=1)], "doubled",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2 * width])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))



@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("adversarial")
    onnx_graphs.linear_softmax(root / "linear" / "1" / "model.onnx")
    _doubled(root / "doubled" / "1" / "model.onnx", width=1 << 16)
    _slow_matmul(root / "slow" / "1" / "model.onnx")
    (root / "slow" / "config.pbtxt").write_text(
        "max_batch_size: 64\n"
        "dynamic_batching { max_queue_delay_microseconds: 0\n"
        "  default_queue_policy { max_queue_size: 2 allow_timeout_override: true } }\n")
    metrics_port = free_port()
    with SubprocessServer(root, "--metrics-port", str(metrics_port),
                          env={"BNSERVE_MAX_MESSAGE_BYTES": str(MAX_MESSAGE),
                               "BNSERVE_DRAIN_WINDOW_S": "0"}) as running:
        running.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        yield running


@pytest.fixture(scope="module")
def channel(server):
    options = [("grpc.max_send_message_length", 1 << 26),
               ("grpc.max_receive_message_length", 1 << 26)]
    with grpc.insecure_channel(server.address, options=options) as channel:
        yield channel


def scrape(server) -> dict[tuple, float]:
    text = urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def counters_moved(before: dict, after: dict) -> dict[tuple, float]:
    moved = {}
    for key in set(before) | set(after):
        if key[0] in COUNTERS and after.get(key, 0) != before.get(key, 0):
            moved[key] = after.get(key, 0) - before.get(key, 0)
    return moved


def requests(model: str, code: str) -> tuple:
    return ("bnserve_infer_requests_total", (("code", code), ("model", model)))


def rejected(method: str, reason: str) -> tuple:
    return ("bnserve_rejected_calls_total", (("method", method), ("reason", reason)))


def assert_live_and_ready(channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE):
        status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING, service


def call_raw(channel, method: str, data: bytes, timeout: float = 10):
    return channel.unary_unary(f"/{SERVICE}/{method}")(data, timeout=timeout)


def infer_request(model: str, array: np.ndarray, **fields) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, **fields)
    request.inputs.add(name="x" if model != "linear" else "input", datatype="FP32",
                       shape=array.shape)
    request.raw_input_contents.append(encode_raw(array))
    return request


def refused(channel, method: str, data: bytes, code: grpc.StatusCode, timeout: float = 10) -> str:
    with pytest.raises(grpc.RpcError) as caught:
        call_raw(channel, method, data, timeout)
    assert caught.value.code() == code, caught.value.details()
    details = caught.value.details()
    assert len(details) < 2048
    assert "Traceback" not in details and "<class" not in details and "/tmp" not in details
    return details


X = np.ones((2, 4), np.float32)
HUGE = "n" * (1 << 20)


def _unknown_output_request(copies: int) -> bytes:
    request = infer_request("linear", X)
    request.outputs.extend(
        [pb.ModelInferRequest.InferRequestedOutputTensor(name="probabilities")] * copies)
    return request.SerializeToString()


def _shaped(shape, raw=b"") -> bytes:
    request = pb.ModelInferRequest(model_name="linear")
    request.inputs.add(name="input", datatype="FP32", shape=shape)
    request.raw_input_contents.append(raw)
    return request.SerializeToString()


def _with_name(name: str) -> bytes:
    request = pb.ModelInferRequest(model_name="linear")
    request.inputs.add(name=name, datatype="FP32", shape=[2, 4])
    request.raw_input_contents.append(encode_raw(X))
    return request.SerializeToString()


def _timeout(value) -> bytes:
    request = infer_request("linear", X)
    request.parameters["timeout"].string_param = value
    return request.SerializeToString()


# name: (method, request bytes, expected status, text in the message, counters that move)
CASES = {
    "garbage to ModelInfer": (
        "ModelInfer", b"\xff\xff\xff\xff garbage", grpc.StatusCode.INVALID_ARGUMENT,
        "request is not a valid ModelInferRequest", {rejected("ModelInfer", "malformed"): 1}),
    "garbage to ModelMetadata": (
        "ModelMetadata", b"\x0a\xff\xff\xff\xff\x0f", grpc.StatusCode.INVALID_ARGUMENT,
        "request is not a valid ModelMetadataRequest",
        {rejected("ModelMetadata", "malformed"): 1}),
    "a 1 MB model name": (
        "ModelInfer", pb.ModelInferRequest(model_name=HUGE).SerializeToString(),
        grpc.StatusCode.NOT_FOUND, "unknown model 'nnnn", {requests("_unknown", "NOT_FOUND"): 1}),
    "a 1 MB model name to ModelMetadata": (
        "ModelMetadata", pb.ModelMetadataRequest(name=HUGE).SerializeToString(),
        grpc.StatusCode.NOT_FOUND, "unknown model", {}),
    "a 1 MB input name": (
        "ModelInfer", _with_name(HUGE), grpc.StatusCode.INVALID_ARGUMENT, "has no input 'nnn",
        {requests("linear", "INVALID_ARGUMENT"): 1}),
    "10,000 copies of an output name": (
        "ModelInfer", _unknown_output_request(10_000), grpc.StatusCode.INVALID_ARGUMENT,
        "outputs name 'probabilities' twice", {requests("linear", "INVALID_ARGUMENT"): 1}),
    "rank 65": (
        "ModelInfer", _shaped([1] * 65), grpc.StatusCode.INVALID_ARGUMENT, "rank 65; at most 16",
        {requests("linear", "INVALID_ARGUMENT"): 1}),
    "[0, 2**63-1]": (
        "ModelInfer", _shaped([0, 2**63 - 1]), grpc.StatusCode.INVALID_ARGUMENT,
        "has a dimension above", {requests("linear", "INVALID_ARGUMENT"): 1}),
    "a timeout that is not a number": (
        "ModelInfer", _timeout("soon"), grpc.StatusCode.INVALID_ARGUMENT,
        "parameters['timeout'] must be an integer number of microseconds",
        {requests("linear", "INVALID_ARGUMENT"): 1}),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_call_is_refused_counted_and_harmless(server, channel, case):
    method, data, code, text, moves = CASES[case]
    before = scrape(server)
    details = refused(channel, method, data, code)
    assert text in details
    assert_live_and_ready(channel)
    assert counters_moved(before, scrape(server)) == moves


def test_malformed_calls_are_logged_at_most_once_per_interval(server, channel):
    for _ in range(20):
        refused(channel, "ModelInfer", b"\xff" * 8, grpc.StatusCode.INVALID_ARGUMENT)
    lines = [line for line in server.lines if "not a valid ModelInferRequest" in line]
    assert len(lines) <= 2, lines  # the first case's line and at most one more
    assert not any("Traceback" in line for line in server.lines)


def test_a_zero_row_batch_answers_zero_rows(server, channel):
    before = scrape(server)
    response = pb.ModelInferResponse.FromString(
        call_raw(channel, "ModelInfer", _shaped([0, 4])))
    assert [list(o.shape) for o in response.outputs] == [[0, 3]]
    assert response.raw_output_contents[0] == b""
    assert counters_moved(before, scrape(server)) == {requests("linear", "OK"): 1}
    assert_live_and_ready(channel)


def test_an_answer_over_the_send_limit_is_refused_before_sending(server, channel):
    rows = 6  # 6 x 64k floats = 1.5 MiB in, 3 MiB out: fits; 12 rows = 6 MiB out: does not
    fits = infer_request("doubled", np.ones((rows, 1 << 16), np.float32))
    assert len(call_raw(channel, "ModelInfer", fits.SerializeToString())) > 3 << 20
    before = scrape(server)
    too_big = infer_request("doubled", np.ones((2 * rows, 1 << 16), np.float32))
    details = refused(channel, "ModelInfer", too_big.SerializeToString(),
                      grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert f"above the server's limit of {MAX_MESSAGE} bytes" in details
    assert counters_moved(before, scrape(server)) == {requests("doubled", "RESOURCE_EXHAUSTED"): 1}
    assert not any("Traceback" in line for line in server.lines)
    assert_live_and_ready(channel)


def _gauge(server, name: str, model: str) -> float:
    return scrape(server).get((name, (("model", model), ("version", "1"))), 0.0)


class _BusySlowModel:
    """Keeps the slow model's one instance running a 64-row batch in the background."""

    def __init__(self, server, channel) -> None:
        self.server, self.channel = server, channel
        self.request = infer_request("slow", np.ones((64, SLOW_WIDTH), np.float32))

    def __enter__(self):
        self.done = threading.Event()

        def keep_busy():
            while not self.done.is_set():
                call_raw(self.channel, "ModelInfer", self.request.SerializeToString(), 60)

        self.thread = threading.Thread(target=keep_busy, daemon=True)
        self.thread.start()
        wait_for(lambda: _gauge(self.server, "bnserve_inflight_requests", "slow") >= 1
                 and _gauge(self.server, "bnserve_queue_depth", "slow") == 0,
                 timeout=20, what="the slow model to be running")
        return self

    def __exit__(self, *exc_info):
        self.done.set()
        self.thread.join(timeout=60)


def test_a_request_past_its_queue_timeout_gets_deadline_exceeded(server, channel):
    single = np.ones((1, SLOW_WIDTH), np.float32)
    request = infer_request("slow", single)
    request.parameters["timeout"].int64_param = 1000  # microseconds in the queue
    with _BusySlowModel(server, channel):  # a run in flight, the queue empty
        before = scrape(server)
        details = refused(channel, "ModelInfer", request.SerializeToString(),
                          grpc.StatusCode.DEADLINE_EXCEEDED)
        after = scrape(server)
    assert "queue timeout of 1 ms" in details
    moved = counters_moved(before, after)
    assert moved.pop(requests("slow", "DEADLINE_EXCEEDED")) == 1
    assert set(moved) <= {requests("slow", "OK")}  # the busy loop's own calls
    assert_live_and_ready(channel)


def test_callers_that_give_up_leave_the_queue_at_once(server, channel):
    single = infer_request("slow", np.ones((1, SLOW_WIDTH), np.float32)).SerializeToString()
    with _BusySlowModel(server, channel):
        before = scrape(server)
        # The queue holds 2 (config.pbtxt): fill it with callers whose deadline passes.
        for _ in range(2):
            with pytest.raises(grpc.RpcError) as caught:
                call_raw(channel, "ModelInfer", single, timeout=0.05)
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # Their places are free again although the run they waited for has not ended.
        wait_for(lambda: _gauge(server, "bnserve_queue_depth", "slow") == 0, timeout=2,
                 what="the expired requests to leave the queue")
        accepted = [call_raw(channel, "ModelInfer", single, timeout=30) for _ in range(2)]
        after = scrape(server)
    assert all(pb.ModelInferResponse.FromString(a).outputs for a in accepted)
    moved = counters_moved(before, after)
    assert moved.pop(requests("slow", "DEADLINE_EXCEEDED")) == 2  # not CANCELLED
    assert set(moved) <= {requests("slow", "OK")}
    assert_live_and_ready(channel)
