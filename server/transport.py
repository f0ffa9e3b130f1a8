"""A service on the wire (the inference service, and bnserve.v1.BatchNormMonitor): bytes
in, bytes out, one status mapping.

The service is registered with grpc without (de)serializers, so that ``Codec`` parses and
encodes (off the event loop when large) and so that a message that does not parse is a
client's error: INVALID_ARGUMENT ``request is not a valid <Message>``, counted, and logged
at most once per ``LOG_EVERY_S`` (a client sending garbage must not flood the log).

Every handler goes through ``_answer``, the one place where errors become statuses:
a ``ServingError`` is answered with its status and its message (bounded: every name a
client sent is already cut by ``quoted()``, and the whole message is cut again here); any
other exception is a server bug, logged with its traceback and a request id, and answered
INTERNAL ``internal error (request id ...)`` so that the log line can be found.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable

import grpc
from google.protobuf import symbol_database
from google.protobuf.descriptor import ServiceDescriptor

from bnserve.proto import open_inference_pb2 as pb
from bnserve.server.codec import Codec, MalformedRequestError
from bnserve.server.errors import ServingError, client_message

log = logging.getLogger(__name__)

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
LOG_EVERY_S = 10.0


class RateLimitedLog:
    """One WARNING per ``every_s`` for a recurring client error, with the count in between."""

    def __init__(self, every_s: float = LOG_EVERY_S) -> None:
        self.every_s = every_s
        self._last = -float("inf")
        self._suppressed = 0

    def warning(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last < self.every_s:
            self._suppressed += 1
            return
        suffix = f" ({self._suppressed} more since the last report)" if self._suppressed else ""
        self._last, self._suppressed = now, 0
        log.warning(message + suffix, *args)


def request_id() -> str:
    return uuid.uuid4().hex[:16]


def _status(method: str, exc: Exception) -> tuple[grpc.StatusCode, str]:
    """What a call that raised ``exc`` is answered: a ServingError's own status, or for a
    server bug INTERNAL with a request id that is also in the log line (with the traceback)."""
    if isinstance(exc, ServingError):
        return exc.status_code, client_message(exc)
    rid = request_id()
    log.error("%s failed (request id %s)", method, rid, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error (request id {rid})"


class InferenceTransport:
    """Builds grpc's handlers for ``service`` (by default the inference service) around a
    servicer's methods; a method the servicer lacks is answered UNIMPLEMENTED by grpc."""

    def __init__(self, servicer: object, codec: Codec, *,
                 on_rejected: Callable[[str, str], None],
                 service: ServiceDescriptor = SERVICE) -> None:
        self._service = service
        self._servicer = servicer
        self._codec = codec
        self._on_rejected = on_rejected
        self._malformed_log = RateLimitedLog()

    def generic_handler(self) -> grpc.GenericRpcHandler:
        handlers = {}
        for method in self._service.methods:
            implementation = getattr(self._servicer, method.name, None)
            if implementation is None:
                continue  # grpc answers UNIMPLEMENTED
            request_class = symbol_database.Default().GetSymbol(method.input_type.full_name)
            if method.client_streaming and method.server_streaming:
                handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                    self._streaming(method.name, implementation))
            else:
                handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                    self._unary(method.name, request_class, implementation))
        return grpc.method_handlers_generic_handler(self._service.full_name, handlers)

    def _malformed(self, method: str, exc: MalformedRequestError) -> None:
        self._on_rejected(method, "malformed")
        self._malformed_log.warning("%s: %s", method, exc)

    def _unary(self, method: str, request_class, implementation):
        codec = self._codec
        is_infer = method == "ModelInfer"

        async def handler(data: bytes, context: grpc.aio.ServicerContext) -> bytes:
            try:
                try:
                    request = await (codec.parse_infer(data) if is_infer
                                     else codec.parse(request_class, data))
                except MalformedRequestError as exc:
                    self._malformed(method, exc)
                    raise
                response = await implementation(request, context)
                if not isinstance(response, bytes):  # ModelInfer encodes its own
                    response = response.SerializeToString()
                    codec.check_size(len(response))
                return response
            except grpc.aio.AbortError:
                raise
            except Exception as exc:  # noqa: BLE001 - _status tells client errors from bugs
                status = _status(method, exc)
            # Outside the except block: aborting inside it would chain the exception, whose
            # traceback keeps the frames alive (with the encoded answer a refused call held)
            # until the garbage collector finds the cycle.
            await context.abort(*status)

        return handler

    def _streaming(self, method: str, implementation):
        codec = self._codec

        async def requests(iterator):
            async for data in iterator:
                try:
                    yield await codec.parse_infer(data)
                except MalformedRequestError as exc:
                    self._malformed(method, exc)
                    yield exc  # the stream answers this one request with its message

        async def handler(iterator, context: grpc.aio.ServicerContext) -> None:
            try:
                return await implementation(requests(iterator), context)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:  # noqa: BLE001 - _status tells client errors from bugs
                status = _status(method, exc)
            await context.abort(*status)  # outside the except block: see _unary

        return handler
