"""ModelStreamInfer: a bidirectional stream of ModelInferRequest -> ModelStreamInferResponse.

    requests --reader: take a slot, start infer(request) as a task--> FIFO of tasks
                                                                          |
    write(response) <--writer: await the oldest task, free its slot-------+

Each request is answered by ``infer``, the unary ModelInfer path (registry look-up, decode,
``model.infer``, the model's dynamic batcher), so a stream's requests batch with unary calls
and with each other. Up to ``max_in_flight`` of them run at once; the responses are written
in request order. When every slot is taken the reader stops reading, and gRPC's flow control
holds the client back.

A request that fails is answered, in its place, with Triton's error shape: ``error_message``
(the message unary would give, or "internal error" for a server bug, which is logged) and
``infer_response`` holding only the request's ``id`` (Triton repopulates it "so that client
knows which request failed") and two parameters: ``triton_final_response`` (every response
carries it, as Triton's do) and ``bnserve_status``, the gRPC status name unary would have
answered (NOT_FOUND, RESOURCE_EXHAUSTED, ...). The stream stays open. A cancelled stream (the
client went away, its deadline passed, the server stopped) cancels its in-flight requests and
returns once every task it started has finished. Plain asyncio: no gRPC in here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, Awaitable, Callable

from bnserve.proto import open_inference_pb2 as pb
from bnserve.server.codec import InferCall
from bnserve.server.errors import ServingError, client_message
from bnserve.server.wire_format import encode_varint

log = logging.getLogger(__name__)

# One stream's requests in flight at once (read and not yet written back). Enough to fill the
# default run of 64 rows with single-row requests, so a lone stream batches as well as 64
# concurrent unary callers; small enough that one stream cannot take more than a sixteenth of
# a model's default queue (1024), so it cannot starve the other callers of queue slots.
MAX_IN_FLIGHT = 64

TASK_NAME = "ModelStreamInfer"  # every task a stream starts is named so; tests look for leaks
FINAL = "triton_final_response"  # Triton's: the last response to its request (always, here)
STATUS = "bnserve_status"  # on an error response: the gRPC status name unary would answer

# A stream item: a parsed request, or the error its bytes were (not a valid message).
Item = InferCall | ServingError
Infer = Callable[[InferCall], Awaitable[bytes]]  # a serialized ModelInferResponse
Write = Callable[[bytes], Awaitable[None]]  # a serialized ModelStreamInferResponse

# ModelStreamInferResponse.infer_response (field 2), length-delimited, wraps the unary
# answer's bytes as they are; appending a message that only sets the FINAL parameter adds
# it (protobuf merges concatenated messages), so an answer is never parsed again.
_INFER_RESPONSE_TAG = encode_varint(
    pb.ModelStreamInferResponse.DESCRIPTOR.fields_by_name["infer_response"].number << 3 | 2)


async def answer_stream(requests: AsyncIterable[Item], infer: Infer,
                        write: Write, *, max_in_flight: int = MAX_IN_FLIGHT) -> None:
    """Answer every request of ``requests`` with ``infer``, writing the answers in order with
    ``write``; return when the client has half-closed and every answer is written. An error
    reading ``requests`` is raised after the answers to the requests read before it."""
    loop = asyncio.get_running_loop()
    slots = asyncio.Semaphore(max_in_flight)
    answers: asyncio.Queue[asyncio.Task[bytes] | None] = asyncio.Queue()

    async def read() -> None:
        iterator = aiter(requests)
        try:
            while True:
                await slots.acquire()  # before reading: a full pipeline reads nothing more
                try:
                    request = await anext(iterator)
                except StopAsyncIteration:  # the client half-closed
                    return
                answers.put_nowait(loop.create_task(_answer(infer, request), name=TASK_NAME))
        finally:
            answers.put_nowait(None)

    reader = loop.create_task(read(), name=f"{TASK_NAME} reader")
    head: asyncio.Task[bytes] | None = None  # the one being written
    try:
        while (head := await answers.get()) is not None:
            response = await head  # never raises but CancelledError: errors are answers
            await write(response)
            slots.release()
        await reader  # re-raises what reading the requests raised, if anything
    finally:
        started = [reader] if head is None else [reader, head]
        while not answers.empty():
            if (task := answers.get_nowait()) is not None:
                started.append(task)
        for task in started:
            task.cancel()  # a no-op for those already done
        await asyncio.gather(*started, return_exceptions=True)


async def _answer(infer: Infer, item: Item) -> bytes:
    if isinstance(item, ServingError):  # its bytes were not a ModelInferRequest
        return error_response("", item.status_code.name, client_message(item)).SerializeToString()
    try:
        inner = await infer(item)
    except ServingError as exc:
        return error_response(item.request.id, exc.status_code.name,
                              client_message(exc)).SerializeToString()
    except Exception:
        log.exception("%s: a request failed", TASK_NAME)
        return error_response(item.request.id, "INTERNAL", "internal error").SerializeToString()
    inner += _FINAL_ONLY
    return b"".join((_INFER_RESPONSE_TAG, encode_varint(len(inner)), inner))


def error_response(request_id: str, status: str,
                   message: str) -> pb.ModelStreamInferResponse:
    response = pb.ModelStreamInferResponse(error_message=message)
    answer = response.infer_response
    answer.id = request_id
    answer.parameters[FINAL].bool_param = True
    answer.parameters[STATUS].string_param = status
    return response


_final = pb.ModelInferResponse()
_final.parameters[FINAL].bool_param = True
_FINAL_ONLY = _final.SerializeToString()
