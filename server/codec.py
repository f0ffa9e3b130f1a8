"""Request bytes to messages and answers to response bytes, with bounded event-loop time.

grpc.aio would parse each request and serialize each response on the event loop, where a
60 MiB message stalls every other call (health checks included) for the length of one C
call. The inference service is registered without (de)serializers (``transport``) and this
codec does the work instead:

- messages up to ``OFFLOAD_BYTES`` are parsed on the loop (a thread hop would cost more);
  larger ones, their tensor decoding and their answers' encoding run in a small pool of
  codec threads, in steps short enough to let the loop in between (``wire_format``);
- bytes that are not the expected message are a client error, ``request is not a valid
  ModelInferRequest``, never protobuf's exception text;
- an answer is checked against the send limit before it is handed to grpc, and the bytes
  of answers not yet taken by their clients are held against ``response_memory_bytes``:
  a client that never reads cannot make the server hold more than that.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from google.protobuf.message import DecodeError, Message

from bnserve.proto import open_inference_pb2 as pb
from bnserve.proto.tensors import datatype_of, encode_raw
from bnserve.server.errors import InvalidInputError, ResponseTooLargeError
from bnserve.server.wire_format import ResponseHeaders, join_infer_response, split_infer_request

OFFLOAD_BYTES = 1 << 20
CODEC_THREADS = 2  # as many large messages decode at once; more wait (memory, not CPU)

T = TypeVar("T")


class MalformedRequestError(InvalidInputError):
    """Bytes that do not parse as the RPC's request message."""


@dataclass(frozen=True)
class InferCall:
    """A parsed ModelInferRequest; ``raw`` holds its raw_input_contents (views of the
    received bytes when the message was large)."""

    request: pb.ModelInferRequest
    raw: Sequence[bytes | memoryview]
    large: bool


class ResponseMemory:
    """Bytes of answers handed to grpc and not yet delivered, against a fixed budget."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.held = 0

    def hold(self, size: int) -> bool:
        if self.held + size > self.budget and self.held:
            return False  # one answer alone may use the whole budget
        self.held += size
        return True

    def release(self, size: int) -> None:
        self.held -= size


class Codec:
    def __init__(self, *, max_send_bytes: int, response_memory_bytes: int) -> None:
        self.max_send_bytes = max_send_bytes
        self.memory = ResponseMemory(response_memory_bytes)
        self._executor = ThreadPoolExecutor(CODEC_THREADS, thread_name_prefix="codec")
        self._headers = ResponseHeaders()
        self._datatypes: dict[np.dtype, str] = {}  # numpy dtype -> protocol datatype

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def off_loop(self, work: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, work, *args)

    async def parse(self, message_class: type[Message], data: bytes) -> Message:
        if len(data) <= OFFLOAD_BYTES:
            return _parse(message_class, data)
        return await self.off_loop(_parse, message_class, data)

    async def parse_infer(self, data: bytes) -> InferCall:
        if len(data) <= OFFLOAD_BYTES:
            request = _parse(pb.ModelInferRequest, data)
            return InferCall(request, request.raw_input_contents, large=False)
        request, raw = await self.off_loop(_split, data)
        return InferCall(request, raw, large=True)

    def check_size(self, size: int, what: str = "response") -> None:
        if size > self.max_send_bytes:
            raise ResponseTooLargeError(
                f"the {what} would be {size} bytes, above the server's limit of "
                f"{self.max_send_bytes} bytes (max_message_bytes); ask for fewer rows or "
                "outputs")

    async def encode_infer(self, request_id: str, model: str, version: str,
                           outputs: dict[str, np.ndarray]) -> bytes:
        numeric = sum(a.nbytes for a in outputs.values() if a.dtype != object)
        self.check_size(numeric)  # before copying anything
        header = self._headers.header(model, version, tuple(
            (name, self._datatype(array.dtype), array.shape) for name, array in outputs.items()))
        arrays = list(outputs.values())
        if numeric > OFFLOAD_BYTES or any(a.dtype == object and a.size > 4096 for a in arrays):
            # The thread takes the only references: large arrays are freed there, not on
            # the event loop.
            del outputs
            handed = [arrays]
            del arrays
            data = await self.off_loop(_join_handed, header, request_id, handed)
        else:
            data = _join(header, request_id, arrays)
        self.check_size(len(data))
        return data

    def _datatype(self, dtype: np.dtype) -> str:
        found = self._datatypes.get(dtype)
        if found is None:
            found = self._datatypes[dtype] = datatype_of(dtype)  # a handful of dtypes
        return found

    def hold(self, data: bytes, on_done: Callable[[Callable[[Any], None]], None]) -> None:
        """Count ``data`` as held until ``on_done``'s callback runs (the call ended), or
        refuse it when unread answers already fill the budget."""
        size = len(data)
        if size <= OFFLOAD_BYTES:
            return  # small answers are not worth the bookkeeping
        if not self.memory.hold(size):
            raise ResponseTooLargeError(
                f"unread answers already hold {self.memory.held >> 20} MiB of the server's "
                f"{self.memory.budget >> 20} MiB response memory; retry later")
        on_done(lambda _context: self.memory.release(size))


def _parse(message_class: type[Message], data: bytes) -> Message:
    try:
        return message_class.FromString(data)
    except (DecodeError, RuntimeError, ValueError):
        raise MalformedRequestError(
            f"request is not a valid {message_class.DESCRIPTOR.name}") from None


def _split(data: bytes) -> tuple[pb.ModelInferRequest, list[memoryview]]:
    try:
        return split_infer_request(data)
    except (DecodeError, RuntimeError, ValueError):
        raise MalformedRequestError("request is not a valid ModelInferRequest") from None


def _join_handed(header: bytes, request_id: str, handed: list[list[np.ndarray]]) -> bytes:
    return _join(header, request_id, handed.pop())


def _join(header: bytes, request_id: str, arrays: list[np.ndarray]) -> bytes:
    return join_infer_response(header, request_id, [encode_raw(a) for a in arrays])
