"""The transport around any servicer: a server bug is answered INTERNAL with a request id
that finds its log line; bytes that are not the message are the client's error, also in a
stream, where the stream goes on."""

from __future__ import annotations

import asyncio
import logging
import re

import grpc
import numpy as np
import pytest

from bnserve.proto import open_inference_pb2 as pb
from bnserve.server.codec import Codec
from bnserve.server.transport import SERVICE, InferenceTransport


class BuggyServicer:
    async def ServerMetadata(self, request, context):
        raise RuntimeError("/srv/secret/path: a bug")

    async def ModelStreamInfer(self, calls, context):
        async for item in calls:  # answers each item with what it was
            text = type(item).__name__ if not isinstance(item, Exception) else str(item)
            await context.write(pb.ModelStreamInferResponse(error_message=text)
                                .SerializeToString())


async def _serve(rejected):
    server = grpc.aio.server()
    codec = Codec(max_send_bytes=1 << 20, response_memory_bytes=1 << 24)
    transport = InferenceTransport(BuggyServicer(), codec,
                                   on_rejected=lambda m, r: rejected.append((m, r)))
    server.add_generic_rpc_handlers((transport.generic_handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def test_a_server_bug_is_internal_with_a_request_id_found_in_the_log(caplog):
    server, address = await _serve([])
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            call = channel.unary_unary(f"/{SERVICE.full_name}/ServerMetadata")
            with caplog.at_level(logging.ERROR, logger="bnserve.server.transport"), \
                    pytest.raises(grpc.aio.AioRpcError) as caught:
                await call(pb.ServerMetadataRequest().SerializeToString())
    finally:
        await server.stop(0)
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    found = re.fullmatch(r"internal error \(request id ([0-9a-f]{16})\)", caught.value.details())
    assert found, caught.value.details()
    [record] = caplog.records
    assert found.group(1) in record.getMessage() and record.exc_info[0] is RuntimeError
    assert "/srv" not in caught.value.details()


async def test_a_malformed_item_in_a_stream_is_answered_in_its_place(caplog):
    rejected = []
    server, address = await _serve(rejected)
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            call = channel.stream_stream(f"/{SERVICE.full_name}/ModelStreamInfer")
            good = pb.ModelInferRequest(model_name="m").SerializeToString()
            stream = call(iter([good, b"\xff\xff\xff", good]))
            answers = [pb.ModelStreamInferResponse.FromString(r).error_message
                       async for r in stream]
    finally:
        await server.stop(0)
    assert answers == ["InferCall", "request is not a valid ModelInferRequest", "InferCall"]
    assert rejected == [("ModelStreamInfer", "malformed")]


async def test_malformed_calls_log_once_per_interval(caplog):
    rejected = []
    server, address = await _serve(rejected)
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            call = channel.unary_unary(f"/{SERVICE.full_name}/ServerMetadata")
            with caplog.at_level(logging.WARNING, logger="bnserve.server.transport"):
                for _ in range(5):
                    with pytest.raises(grpc.aio.AioRpcError) as caught:
                        await call(b"\x0a\xff\xff\xff\xff\x0f")
                    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                    await asyncio.sleep(0)
    finally:
        await server.stop(0)
    assert rejected == [("ServerMetadata", "malformed")] * 5
    assert len(caplog.records) == 1
    assert "not a valid ServerMetadataRequest" in caplog.records[0].getMessage()


def test_an_answer_assembled_from_a_cached_header_is_the_message_protobuf_would_build():
    from bnserve.server.wire_format import ResponseHeaders, join_infer_response

    headers = ResponseHeaders(limit=2)
    outputs = (("probabilities", "FP32", (3, 10)), ("label", "INT64", (3,)))
    raw = [np.arange(30, dtype=np.float32).tobytes(), np.arange(3).tobytes()]
    for request_id in ("", "req-7", "ü" * 200):  # a multi-byte id, longer than 127 bytes
        data = join_infer_response(headers.header("mlp", "2", outputs), request_id, raw)
        built = pb.ModelInferResponse(model_name="mlp", model_version="2", id=request_id,
                                      raw_output_contents=raw)
        for name, datatype, shape in outputs:
            built.outputs.add(name=name, datatype=datatype, shape=shape)
        assert pb.ModelInferResponse.FromString(data) == built
    # The same header is served from the cache, and the cache stays within its limit.
    assert headers.header("mlp", "2", outputs) is headers.header("mlp", "2", outputs)
    for rows in range(5):
        headers.header("mlp", "2", (("label", "INT64", (rows,)),))
    assert len(headers) <= 2
