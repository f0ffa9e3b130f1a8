"""The floor: a bare grpc.aio server with no model, that takes any ModelInfer call as bytes
and answers a few bytes, plus the gRPC health service. What a Python grpc.aio server costs
its event loop for a message (grpc copies each received message on the loop, holding the
GIL) is what bnserve is measured against. Prints its port, then serves until killed.
"""

from __future__ import annotations

import asyncio
import sys

import grpc
from grpc_health.v1 import health, health_pb2_grpc


async def main() -> None:
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 1 << 27),
                                      ("grpc.so_reuseport", 0)])

    async def infer(data: bytes, context) -> bytes:
        return b""  # an empty ModelInferResponse

    handler = grpc.unary_unary_rpc_method_handler(infer)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService", {"ModelInfer": handler}),))
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
