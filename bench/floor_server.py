"""The transport floor: a bare grpc.aio server with no model and no decoding.

    python bench/floor_server.py ANSWERS_DIR      # prints its port, serves until killed

ANSWERS_DIR holds ``<n>.bin`` files: a request of n bytes is answered with that file's
bytes (a pre-serialised ModelInferResponse of the model's output shape), any other request
with an empty response. ModelInfer and ModelStreamInfer are served (a stream's answers
wrapped once, at start, in ModelStreamInferResponse), so what the load generator measures
here is a Python grpc.aio server's own cost per message: the floor under bnserve.
Like tests/support/bare_server.py, with answers as large as bnserve's.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import grpc

from bnserve.proto import open_inference_pb2 as pb

OPTIONS = [("grpc.max_receive_message_length", 1 << 27),
           ("grpc.max_send_message_length", 1 << 27), ("grpc.so_reuseport", 0)]


def load_answers(folder: Path) -> tuple[dict[int, bytes], dict[int, bytes]]:
    unary = {int(f.stem): f.read_bytes() for f in folder.glob("*.bin")}
    streamed = {n: pb.ModelStreamInferResponse(
        infer_response=pb.ModelInferResponse.FromString(b)).SerializeToString()
        for n, b in unary.items()}
    return unary, streamed


async def main(folder: Path) -> None:
    unary, streamed = load_answers(folder)
    server = grpc.aio.server(options=OPTIONS)

    async def infer(data: bytes, context) -> bytes:
        return unary.get(len(data), b"")

    async def stream_infer(requests, context):
        async for data in requests:
            yield streamed.get(len(data), b"")

    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService", {
            "ModelInfer": grpc.unary_unary_rpc_method_handler(infer),
            "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(stream_infer),
        }),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    sys.exit(asyncio.run(main(Path(sys.argv[1]))))
