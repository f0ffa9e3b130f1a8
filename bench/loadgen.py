"""A closed-loop Open Inference Protocol load generator over gRPC, the same for every target.

    requests = build_requests("mlp", "input", (1, 64), count=64)          # pre-serialised bytes
    result = asyncio.run(run_load("127.0.0.1:8001", requests, mode="unary",
                                  concurrency=32, duration_s=5.0, warmup_s=1.0))

``concurrency`` requests are in flight at all times: each answer sends the next request.
``unary`` keeps them as concurrent ModelInfer calls, at most ``CALLS_PER_CONNECTION`` on
one connection (more open more connections, as a client must); ``stream`` sends them
down ModelStreamInfer streams (at most ``STREAM_IN_FLIGHT`` on one stream, the server's
per-stream limit, so a higher concurrency opens more streams) and pairs answers with
requests in order, as the server writes them. Requests are serialised once, before the
clock starts, and answers are never decoded (a streamed answer's first byte says whether it
carries an error), so the generator's cost per request is a grpc call and a clock read, and
is the same for bnserve and for the floor.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from dataclasses import asdict, dataclass

import grpc
import numpy as np

from bnserve.proto import open_inference_pb2 as pb

INFER = "/inference.GRPCInferenceService/ModelInfer"
STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"
# bnserve's server/streaming.py MAX_IN_FLIGHT: more on one stream would wait unread.
STREAM_IN_FLIGHT = 64
# ModelStreamInferResponse field 1 (error_message), length-delimited: its tag byte.
_ERROR_TAG = b"\x0a"
# Unary calls kept open on one connection: bnserve refuses a connection's calls past
# max_concurrent_streams (32 by default, its rapid-reset guard), and a closed loop briefly
# holds a finished call's stream while it opens the next, so stay well under it.
CALLS_PER_CONNECTION = 16
# A local subchannel pool: each channel its own TCP connection, not a shared one.
CHANNEL_OPTIONS = [("grpc.max_send_message_length", 1 << 27),
                   ("grpc.max_receive_message_length", 1 << 27),
                   ("grpc.use_local_subchannel_pool", 1)]


def build_requests(model: str, input_name: str, shape: tuple[int, ...], *, count: int = 16,
                   seed: int = 0) -> list[bytes]:
    """``count`` serialised ModelInferRequests, FP32 raw contents of ``shape`` (B, ...)."""
    rng = np.random.default_rng(seed)
    requests = []
    for _ in range(count):
        x = rng.standard_normal(shape, dtype=np.float32)
        request = pb.ModelInferRequest(model_name=model)
        request.inputs.add(name=input_name, datatype="FP32", shape=list(shape))
        request.raw_input_contents.append(x.tobytes())
        requests.append(request.SerializeToString())
    return requests


@dataclass
class LoadResult:
    mode: str
    concurrency: int
    rows_per_request: int
    duration_s: float
    requests: int
    errors: int
    error_codes: dict[str, int]
    requests_per_s: float
    rows_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float

    def to_dict(self) -> dict:
        return asdict(self)


class _Recorder:
    """Answers that arrive inside the measured window (steady state: what was sent during
    the warm-up and answered inside counts, what is answered after the window does not)."""

    def __init__(self, measure_from: float, stop_at: float) -> None:
        self.measure_from, self.stop_at = measure_from, stop_at
        self.latencies: list[float] = []
        self.errors = 0
        self.codes: dict[str, int] = {}

    def record(self, sent: float, now: float, error: str | None = None) -> None:
        if self.measure_from <= now <= self.stop_at:
            if error is None:
                self.latencies.append(now - sent)
            else:
                self.errors += 1
                self.codes[error] = self.codes.get(error, 0) + 1


async def _unary(channel: grpc.aio.Channel, requests: list[bytes], offset: int,
                 recorder: _Recorder) -> None:
    call = channel.unary_unary(INFER)  # bytes in, bytes out: no (de)serialiser
    clock = time.perf_counter
    index = offset
    while (sent := clock()) < recorder.stop_at:
        try:
            await call(requests[index % len(requests)])
            error = None
        except grpc.aio.AioRpcError as exc:
            error = exc.code().name
        recorder.record(sent, clock(), error)
        index += 1


async def _stream(channel: grpc.aio.Channel, requests: list[bytes], in_flight: int,
                  recorder: _Recorder) -> None:
    call = channel.stream_stream(STREAM_INFER)()
    clock = time.perf_counter
    sent: deque[float] = deque()
    index = 0
    for _ in range(in_flight):
        sent.append(clock())
        await call.write(requests[index % len(requests)])
        index += 1
    while sent:
        answer = await call.read()
        if answer is grpc.aio.EOF:
            raise RuntimeError("the server closed the stream")
        now = clock()
        recorder.record(sent.popleft(), now, "stream error" if answer[:1] == _ERROR_TAG else None)
        if now < recorder.stop_at:
            sent.append(clock())
            await call.write(requests[index % len(requests)])
            index += 1
    await call.done_writing()


async def run_load(address: str, requests: list[bytes], *, mode: str, concurrency: int,
                   duration_s: float, warmup_s: float = 0.5,
                   rows_per_request: int = 1) -> LoadResult:
    """Closed loop at ``concurrency`` for ``warmup_s`` (not counted) then ``duration_s``."""
    if mode not in ("unary", "stream"):
        raise ValueError(f"mode is unary or stream, not {mode!r}")
    per_connection = CALLS_PER_CONNECTION if mode == "unary" else STREAM_IN_FLIGHT
    connections = math.ceil(concurrency / per_connection)
    shares = [concurrency // connections + (i < concurrency % connections)
              for i in range(connections)]
    channels = [grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) for _ in shares]
    try:
        await asyncio.wait_for(asyncio.gather(*(c.channel_ready() for c in channels)), 30)
        start = time.perf_counter()
        recorder = _Recorder(start + warmup_s, start + warmup_s + duration_s)
        if mode == "unary":
            workers = [_unary(channel, requests, i, recorder)
                       for channel, n in zip(channels, shares, strict=True) for i in range(n)]
        else:  # one stream per connection
            workers = [_stream(channel, requests, n, recorder)
                       for channel, n in zip(channels, shares, strict=True)]
        await asyncio.gather(*workers)
    finally:
        await asyncio.gather(*(c.close() for c in channels))
    done = len(recorder.latencies)
    ms = np.percentile(np.array(recorder.latencies) * 1e3, [50, 90, 99]) if done else [math.nan] * 3
    return LoadResult(mode=mode, concurrency=concurrency, rows_per_request=rows_per_request,
                      duration_s=duration_s, requests=done, errors=recorder.errors,
                      error_codes=recorder.codes,
                      requests_per_s=done / duration_s,
                      rows_per_s=done * rows_per_request / duration_s,
                      p50_ms=float(ms[0]), p90_ms=float(ms[1]), p99_ms=float(ms[2]))
