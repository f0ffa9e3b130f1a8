"""ModelStreamInfer: the pipeline on its own (plain asyncio), then over gRPC against one real
TLS server with the client's ``stream()``, sync and async."""

from __future__ import annotations

import asyncio
import logging
import threading

import grpc
import numpy as np
import pytest
from prometheus_client import REGISTRY

from bnserve.client import (
    AsyncClient,
    Client,
    DeadlineExceededError,
    InvalidRequestError,
    ModelNotFoundError,
    ServerUnavailableError,
)
from bnserve.proto import open_inference_pb2 as pb
from bnserve.proto import open_inference_pb2_grpc as pb_grpc
from bnserve.server.codec import InferCall
from bnserve.server.errors import MAX_STATUS_CHARS, QueueFullError
from bnserve.server.settings import ServerSettings
from bnserve.server.streaming import FINAL, STATUS, TASK_NAME, answer_stream
from support import onnx_graphs
from support.server_thread import ServerThread
from support.waiting import wait_for

UNUSED_ADDRESS = "127.0.0.1:1"  # nothing listens on port 1 here


# -- the pipeline, without gRPC -----------------------------------------------------------------

def call(**fields) -> InferCall:
    return InferCall(pb.ModelInferRequest(**fields), raw=(), large=False)


def numbered(count: int) -> list[InferCall]:
    return [call(model_name="m", id=str(i)) for i in range(count)]


def answer(request_id: str) -> bytes:
    return pb.ModelInferResponse(id=request_id).SerializeToString()


async def feed(requests):
    for request in requests:
        yield request


def ids(responses) -> list[str]:
    return [r.infer_response.id for r in responses]


async def test_answers_in_request_order_with_a_bounded_number_in_flight():
    gates: dict[str, asyncio.Event] = {}
    in_flight, most = 0, 0

    async def infer(item):
        request = item.request
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        gates[request.id] = gate = asyncio.Event()
        await gate.wait()
        in_flight -= 1
        return answer(request.id)

    written = []

    async def write(response):
        written.append(pb.ModelStreamInferResponse.FromString(response))

    stream = asyncio.ensure_future(answer_stream(feed(numbered(20)), infer, write, max_in_flight=8))
    for _ in range(50):
        await asyncio.sleep(0)
    assert sorted(gates, key=int) == [str(i) for i in range(8)]  # 8 started, none written
    assert written == []
    while len(gates) < 20 or not all(g.is_set() for g in gates.values()):
        for key in sorted(gates, key=int, reverse=True):  # finish the youngest first
            gates[key].set()
        await asyncio.sleep(0)
    await asyncio.wait_for(stream, 5)
    assert ids(written) == [str(i) for i in range(20)]
    assert most == 8
    assert all(r.infer_response.parameters[FINAL].bool_param and not r.error_message
               for r in written)


async def test_a_failed_request_is_answered_in_its_place_and_the_stream_goes_on(caplog):
    async def infer(item):
        request = item.request
        if request.id == "1":
            raise QueueFullError("model 'm' has 1024 requests waiting; retry later " + "x" * 5000)
        if request.id == "2":
            raise RuntimeError("/secret/path exploded")
        return answer(request.id)

    written = []

    async def write(response):
        written.append(pb.ModelStreamInferResponse.FromString(response))

    with caplog.at_level(logging.ERROR, logger="bnserve.server.streaming"):
        await answer_stream(feed(numbered(4)), infer, write)
    assert ids(written) == ["0", "1", "2", "3"]
    busy, bug = written[1], written[2]
    assert busy.error_message.startswith("model 'm' has 1024 requests waiting; retry later")
    assert len(busy.error_message) == MAX_STATUS_CHARS + 3
    assert busy.infer_response.parameters[STATUS].string_param == "RESOURCE_EXHAUSTED"
    assert bug.error_message == "internal error"
    assert bug.infer_response.parameters[STATUS].string_param == "INTERNAL"
    assert not bug.infer_response.outputs
    assert [r.exc_info[0] for r in caplog.records] == [RuntimeError]  # logged, with traceback
    assert not written[3].error_message


async def test_a_cancelled_stream_cancels_its_requests_and_leaves_no_task():
    started = asyncio.Event()
    cancelled = 0

    async def infer(item):
        nonlocal cancelled
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled += 1
            raise

    async def endless():
        while True:
            yield call(model_name="m")
            await asyncio.sleep(0)

    async def write(response):
        raise AssertionError("nothing is answered")

    stream = asyncio.ensure_future(answer_stream(endless(), infer, write, max_in_flight=5))
    await started.wait()
    for _ in range(20):
        await asyncio.sleep(0)
    stream.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(stream, 5)  # a TimeoutError if a request was left running
    assert cancelled == 5  # the bound held, and every one of them was cancelled
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith(TASK_NAME)]


async def test_an_error_reading_the_requests_comes_after_the_answers_before_it():
    async def broken():
        yield call(id="0")
        raise ValueError("the request stream broke")

    async def infer(item):
        request = item.request
        return answer(request.id)

    written = []

    async def write(response):
        written.append(pb.ModelStreamInferResponse.FromString(response))

    with pytest.raises(ValueError, match="broke"):
        await answer_stream(broken(), infer, write)
    assert ids(written) == ["0"]


# -- over gRPC: one TLS server ------------------------------------------------------------------

@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    trustme = pytest.importorskip("trustme")
    folder = tmp_path_factory.mktemp("tls")
    authority = trustme.CA()
    certificate = authority.issue_cert("localhost", "127.0.0.1")
    (folder / "cert.pem").write_bytes(b"".join(b.bytes() for b in certificate.cert_chain_pems))
    (folder / "key.pem").write_bytes(certificate.private_key_pem.bytes())
    return folder / "cert.pem", folder / "key.pem", authority.cert_pem.bytes()


@pytest.fixture(scope="module")
def server(tmp_path_factory, certificates):
    root = tmp_path_factory.mktemp("repo")
    onnx_graphs.linear_softmax(root / "classes" / "1" / "model.onnx")
    # A run goes as soon as 6 rows are queued, and not before (a delay of 5 s): how many
    # requests share a run says who batched with whom.
    onnx_graphs.linear_softmax(root / "pooled" / "1" / "model.onnx")
    (root / "pooled" / "config.pbtxt").write_text(
        "max_batch_size: 64\ndynamic_batching { preferred_batch_size: [6] "
        "max_queue_delay_microseconds: 5000000 }\n")
    # Requests wait 5 s for company: long enough to be cancelled in flight.
    onnx_graphs.scaled(root / "slow" / "1" / "model.onnx", 3.0)
    (root / "slow" / "config.pbtxt").write_text(
        "max_batch_size: 64\ndynamic_batching { max_queue_delay_microseconds: 5000000 }\n")
    cert, key, _ = certificates
    settings = ServerSettings(repository=root, tls_certificate=cert, tls_private_key=key)
    with ServerThread(settings) as running:
        yield running


@pytest.fixture(scope="module")
def address(server):
    return f"localhost:{server.server.port}"


@pytest.fixture(scope="module")
def client(address, certificates):
    with Client(address, root_certificates=certificates[2], timeout=60) as c:
        yield c


@pytest.fixture
def stub(address, certificates):
    credentials = grpc.ssl_channel_credentials(root_certificates=certificates[2])
    with grpc.secure_channel(address, credentials) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def rows(count: int, seed: int = 0) -> list[np.ndarray]:
    """``count`` float64 inputs of 1 to 3 rows (the client casts them to FP32)."""
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(1 + i % 3, 4)) for i in range(count)]


def request(model: str, x: np.ndarray, request_id: str) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name=model, id=request_id)
    message.inputs.add(name="input" if model != "slow" else "x", datatype="FP32", shape=x.shape)
    message.raw_input_contents.append(np.asarray(x, np.float32).tobytes())
    return message


def requests_counted(model: str, code: str) -> float:
    return REGISTRY.get_sample_value("bnserve_infer_requests_total",
                                     {"model": model, "code": code}) or 0.0


def stream_tasks(server) -> int:
    async def count() -> int:
        return sum(t.get_name().startswith(TASK_NAME) for t in asyncio.all_tasks())

    return server.call(count())


def test_a_stream_answers_like_unary_predict_in_order(client):
    inputs = rows(50)
    expected = [client.predict("classes", x) for x in inputs]
    ok_before = requests_counted("classes", "OK")
    results = list(client.stream("classes", inputs))
    assert len(results) == 50
    for index, (result, want) in enumerate(zip(results, expected, strict=True)):
        assert list(result) == ["probabilities"]
        np.testing.assert_allclose(result["probabilities"], want, rtol=0, atol=1e-6,
                                   err_msg=f"item {index}")
    assert requests_counted("classes", "OK") - ok_before == 50  # counted like unary calls


async def test_the_async_stream_answers_like_unary_predict_in_order(address, certificates):
    inputs = [x.astype(np.float32) for x in rows(50, seed=1)]

    async def items():
        for x in inputs:
            yield {"input": x}
            await asyncio.sleep(0)

    async with AsyncClient(address, root_certificates=certificates[2], timeout=60) as c:
        expected = [await c.predict("classes", x) for x in inputs]
        results = [r["probabilities"] async for r in c.stream("classes", items(),
                                                               outputs=["probabilities"])]
        plain = [r async for r in c.stream("classes", inputs[:3])]  # a plain iterable in
    assert len(results) == 50
    for index, (result, want) in enumerate(zip(results, expected, strict=True)):
        np.testing.assert_allclose(result, want, rtol=0, atol=1e-6, err_msg=f"item {index}")
    for result, want in zip(plain, expected, strict=False):
        np.testing.assert_allclose(result["probabilities"], want, rtol=0, atol=1e-6)


def test_a_bad_item_gets_its_error_and_later_items_still_answer(stub):
    inputs = rows(10, seed=2)
    messages = [request("classes", x, f"r{i}") for i, x in enumerate(inputs)]
    messages[4] = request("classes", np.ones((1, 5)), "r4")
    messages[7].model_name = "nope"
    bad_before = requests_counted("classes", "INVALID_ARGUMENT")
    responses = list(stub.ModelStreamInfer(iter(messages), timeout=30))
    assert [r.infer_response.id for r in responses] == [f"r{i}" for i in range(10)]
    for index, response in enumerate(responses):
        assert response.infer_response.parameters[FINAL].bool_param
        if index in (4, 7):
            continue
        assert not response.error_message
        assert response.infer_response.model_name == "classes"
        assert list(response.infer_response.outputs[0].shape) == [inputs[index].shape[0], 3]
    bad, unknown = responses[4], responses[7]
    assert bad.error_message == ("input 'input': shape [1, 5] does not fit the model's "
                                 "[-1, 4] (-1 = any size)")
    assert bad.infer_response.parameters[STATUS].string_param == "INVALID_ARGUMENT"
    assert not bad.infer_response.outputs and not bad.infer_response.raw_output_contents
    assert unknown.error_message.startswith("unknown model 'nope'")
    assert unknown.infer_response.parameters[STATUS].string_param == "NOT_FOUND"
    assert requests_counted("classes", "INVALID_ARGUMENT") - bad_before == 1


def test_the_client_raises_for_the_first_bad_item_with_its_index(client):
    inputs = rows(8, seed=3)
    inputs[5] = np.ones((1, 5))
    seen = []
    with pytest.raises(InvalidRequestError) as info:
        for result in client.stream("classes", inputs):
            seen.append(result)
    assert len(seen) == 5 and info.value.index == 5
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "shape [1, 5] does not fit" in info.value.details
    assert "(stream item 5)" in str(info.value)
    with pytest.raises(ModelNotFoundError) as info:
        list(client.stream("nope", [{"input": np.ones((1, 4), np.float32)}]))
    assert info.value.index == 0
    items = [{"input": np.ones((1, 4), np.float32)}] * 3 + [{"input": np.ones((1, 4), complex)}]
    seen = []
    with pytest.raises(ValueError, match="complex128 has no Open Inference Protocol datatype"):
        for result in client.stream("classes", items):  # an item that cannot be sent
            seen.append(result)
    assert len(seen) == 3


def test_a_stream_batches_with_concurrent_unary_calls(server, client):
    batcher = server.server.models["pooled"].batcher
    client.metadata("pooled")  # warm
    runs_before = batcher.runs
    unary: dict[str, np.ndarray] = {}
    caller = threading.Thread(target=lambda: unary.update(
        client.infer("pooled", {"input": np.ones((1, 4), np.float32)})))
    caller.start()  # waits in the queue: a run goes only once 6 rows are in
    results = list(client.stream("pooled", [np.full((1, 4), i) for i in range(5)]))
    caller.join(30)
    assert len(results) == 5 and "probabilities" in unary
    # 1 unary request and 5 stream requests, one onnxruntime run: the stream's requests were
    # in flight together (not one at a time) and in the same batch as the unary call.
    assert batcher.runs - runs_before == 1
    stats = {s["version"]: s for s in client.statistics("pooled")}["1"]
    assert [b["batch_size"] for b in stats["batch_stats"]] == ["6"]


def test_a_cancelled_stream_leaves_no_work_in_flight(server, client, stub, caplog):
    def failures() -> int:
        stats = client.statistics("slow")[0]["inference_stats"]
        return int(stats.get("fail", {}).get("count", 0))

    fail_before, cancelled_before = failures(), requests_counted("slow", "CANCELLED")
    x = np.ones((1, 2), np.float32)
    with caplog.at_level(logging.WARNING):
        call = stub.ModelStreamInfer(iter([request("slow", x, str(i)) for i in range(3)]))
        wait_for(lambda: stream_tasks(server) == 3, what="3 stream requests in flight")
        call.cancel()
        # Well before the 5 s queue delay would have answered them: cancelled, not answered.
        wait_for(lambda: stream_tasks(server) == 0, timeout=2, what="the stream's tasks to end")
        wait_for(lambda: failures() - fail_before == 3, what="3 requests ended as failed")
    assert requests_counted("slow", "CANCELLED") - cancelled_before == 3
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert client.is_ready()
    assert client.infer("classes", {"input": np.ones((1, 4), np.float32)})["probabilities"].shape \
        == (1, 3)


def test_a_stream_past_its_deadline_raises_and_leaves_no_task(server, client):
    with pytest.raises(DeadlineExceededError):
        list(client.stream("slow", [{"x": np.ones((1, 2), np.float32)}] * 2, timeout=0.5))
    wait_for(lambda: stream_tasks(server) == 0, what="the stream's tasks to finish")


def test_each_stream_takes_one_address_in_turn(address, certificates):
    x = np.ones((1, 4), np.float32)
    with Client([UNUSED_ADDRESS, address], root_certificates=certificates[2], timeout=10) as c:
        with pytest.raises(ServerUnavailableError):  # no fail-over within a stream
            list(c.stream("classes", [{"input": x}]))
        assert len(list(c.stream("classes", [{"input": x}] * 3))) == 3


def test_leaving_an_endless_stream_early_cancels_it(server, client):
    def endless():
        while True:
            yield np.ones((1, 4))

    results = client.stream("classes", endless())
    for count, result in enumerate(results, 1):
        assert result["probabilities"].shape == (1, 3)
        if count == 3:
            break
    results.close()  # what leaving the loop does once nothing refers to the generator
    wait_for(lambda: stream_tasks(server) == 0, what="the stream's tasks to end")
