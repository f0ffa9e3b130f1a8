"""The client SDK against a real server serving a real exported BatchNorm CNN."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from bnserve.client import (
    AsyncClient,
    Client,
    DeadlineExceededError,
    InvalidRequestError,
    ModelNotFoundError,
    ServerUnavailableError,
)
from bnserve.server.settings import ServerSettings
from support.server_thread import ServerThread

UNUSED_ADDRESS = "127.0.0.1:1"  # nothing listens on port 1 here


@pytest.fixture(scope="module")
def server(digits_repository):
    # A generous queue delay makes the batching test independent of scheduling noise.
    settings = ServerSettings(repository=digits_repository, max_queue_delay_ms=50)
    with ServerThread(settings) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    with Client(server.address) as c:
        yield c


def test_predict_returns_probabilities_that_classify_digits(client, digits_data):
    images, labels = digits_data
    probabilities = client.predict("digits", images[:256], batch_size=64)
    assert probabilities.shape == (256, 10) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    accuracy = (probabilities.argmax(axis=1) == labels[:256]).mean()
    assert accuracy > 0.9, f"accuracy {accuracy:.3f} through the server"


def test_predict_casts_to_the_model_dtype(client, digits_data):
    images, _ = digits_data
    as_float64 = client.predict("digits", images[:3].astype(np.float64))
    np.testing.assert_array_equal(as_float64, client.predict("digits", images[:3]))


def test_infer_names_inputs_and_outputs(client, digits_data):
    images, _ = digits_data
    result = client.infer("digits", {"input": images[:4]})
    assert list(result) == ["probabilities"] and result["probabilities"].shape == (4, 10)


def test_metadata_and_readiness(client):
    meta = client.metadata("digits")
    assert meta.name == "digits" and meta.versions == ("1",)
    assert [(t.name, t.datatype, t.shape) for t in meta.inputs] == [("input", "FP32", (-1, 1, 8, 8))]
    assert [(t.name, t.datatype, t.shape) for t in meta.outputs] == [
        ("probabilities", "FP32", (-1, 10))
    ]
    assert client.is_live() and client.is_ready()
    assert client.is_model_ready("digits") and not client.is_model_ready("nope")
    assert client.server_metadata()["name"] == "bnserve"


def test_errors_keep_the_status_code_and_the_cause(client, digits_data):
    images, _ = digits_data
    with pytest.raises(ModelNotFoundError) as info:
        client.predict("nope", images[:1])
    assert info.value.code == grpc.StatusCode.NOT_FOUND
    assert isinstance(info.value.__cause__, grpc.RpcError)
    with pytest.raises(InvalidRequestError, match=r"shape \[1, 1, 4, 4\] does not fit"):
        client.infer("digits", {"input": np.zeros((1, 1, 4, 4), np.float32)})


def test_per_call_timeout(client, digits_data):
    """A server that does not answer in time: DeadlineExceededError at the caller's deadline.
    (A server that answers in about a millisecond cannot be outrun reliably: grpc's timers
    are coarser than that, and the batcher no longer makes a lone request wait.)"""
    images, _ = digits_data
    import threading
    import time
    from concurrent import futures

    released = threading.Event()

    def never_in_time(request: bytes, context: grpc.ServicerContext) -> bytes:
        released.wait(5)
        return b""

    handler = grpc.method_handlers_generic_handler("inference.GRPCInferenceService", {
        "ModelInfer": grpc.unary_unary_rpc_method_handler(never_in_time)})
    slow = grpc.server(futures.ThreadPoolExecutor(max_workers=2), handlers=(handler,))
    port = slow.add_insecure_port("127.0.0.1:0")
    slow.start()
    try:
        with Client(f"127.0.0.1:{port}") as patient:
            started = time.monotonic()
            with pytest.raises(DeadlineExceededError) as info:
                patient.infer("digits", {"input": images[:1]}, timeout=0.3)
            assert time.monotonic() - started < 3.0
        assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        released.set()
        slow.stop(0)
    assert client.predict("digits", images[:1], timeout=30).shape == (1, 10)


def test_unreachable_server():
    with Client(UNUSED_ADDRESS, timeout=2) as c:
        assert not c.is_ready()
        with pytest.raises(ServerUnavailableError):
            c.infer("digits", {"input": np.zeros((1, 1, 8, 8), np.float32)})


def test_several_addresses_round_robin_and_fail_over(server, digits_repository, digits_data):
    images, _ = digits_data
    with ServerThread(ServerSettings(repository=digits_repository)) as second:
        first_model = server.server.models["digits"]
        second_model = second.server.models["digits"]
        before = (first_model.batcher.runs, second_model.batcher.runs)
        with Client([server.address, UNUSED_ADDRESS, second.address], timeout=5) as c:
            for _ in range(6):
                assert c.predict("digits", images[:2]).shape == (2, 10)
        assert first_model.batcher.runs > before[0]
        assert second_model.batcher.runs > before[1]


def test_tls(digits_repository, digits_data, tmp_path):
    trustme = pytest.importorskip("trustme")
    authority = trustme.CA()
    certificate = authority.issue_cert("localhost", "127.0.0.1")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(b"".join(blob.bytes() for blob in certificate.cert_chain_pems))
    key_file.write_bytes(certificate.private_key_pem.bytes())
    settings = ServerSettings(
        repository=digits_repository, tls_certificate=cert_file, tls_private_key=key_file
    )
    images, _ = digits_data
    with ServerThread(settings) as secure:
        address = f"localhost:{secure.server.port}"
        with Client(address, root_certificates=authority.cert_pem.bytes()) as c:
            assert c.predict("digits", images[:2]).shape == (2, 10)
        with Client(address, timeout=3) as plaintext:  # a plaintext client is not let in
            assert not plaintext.is_ready()


async def test_async_client_32_concurrent_rows_are_batched_and_equal_rows_sent_alone(
    server, digits_data
):
    images, _ = digits_data
    rows = images[:32]
    batcher = server.server.models["digits"].batcher
    async with AsyncClient(server.address) as c:
        await c.metadata("digits")  # warm the metadata cache and the channel
        runs_before = batcher.runs
        together = await asyncio.gather(*(c.predict("digits", row[None]) for row in rows))
        runs = batcher.runs - runs_before
        alone = [await c.predict("digits", row[None]) for row in rows]
    assert runs < 32, f"32 concurrent requests took {runs} onnxruntime runs"
    for index, (merged, single) in enumerate(zip(together, alone, strict=True)):
        np.testing.assert_allclose(merged, single, rtol=0, atol=1e-6, err_msg=f"row {index}")
        assert merged.argmax() == single.argmax()


async def test_async_client_errors_and_readiness(server):
    async with AsyncClient(server.address) as c:
        assert await c.is_ready() and await c.is_model_ready("digits")
        with pytest.raises(ModelNotFoundError):
            await c.metadata("nope")
    async with AsyncClient(UNUSED_ADDRESS, timeout=2) as dead:
        assert not await dead.is_ready()


def test_predict_timeout_bounds_the_whole_call(client, digits_data):
    images, _ = digits_data
    # 64 one-row requests cannot all fit in 5 ms, although each alone might.
    with pytest.raises(DeadlineExceededError):
        client.predict("digits", images[:64], batch_size=1, timeout=0.005)
    chunked = client.predict("digits", images[:10], batch_size=3)
    np.testing.assert_allclose(chunked, client.predict("digits", images[:10]), atol=1e-6)
