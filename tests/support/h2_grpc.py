"""A tiny raw HTTP/2 gRPC client on the ``h2`` package, for what grpc's own client never does:
open and reset streams as fast as it can (the HTTP/2 rapid-reset pattern, CVE-2023-44487), or
ask for answers and leave them unread behind a small flow-control window.

As a library: ``H2GrpcConnection(port)`` connects to 127.0.0.1 and sends the preface and
SETTINGS; ``open_infer(request_bytes)`` starts a ModelInfer call (HEADERS, then the message
in DATA with gRPC's 5-byte prefix); ``reset(stream)`` sends RST_STREAM(CANCEL); ``receive``
and ``wait_until`` read frames into ``streams``, ``goaway`` and ``remote_settings``. With
``acknowledge_data=False`` it never sends a WINDOW_UPDATE: the server may send each stream
``initial_window_size`` bytes of DATA and the whole connection 65,535, no more.

As a program, in its own process so that its CPU work does not share the measuring side's
interpreter::

    python tests/support/h2_grpc.py rapid-reset ADDRESS SECONDS MODEL INPUT WIDTH

opens ModelInfer streams on one connection (HEADERS + DATA with a valid one-row FP32
request of WIDTH values, then RST_STREAM CANCEL) as fast as it can for SECONDS, prints
``started`` once the first streams are on the wire, then one JSON line: streams opened,
streams per second, the GOAWAY the server sent if any, and what stopped it early if anything.
"""

from __future__ import annotations

import json
import select
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import unquote

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import hpack
from h2.errors import ErrorCodes
from h2.settings import SettingCodes, Settings

INFER_PATH = "/inference.GRPCInferenceService/ModelInfer"
DEFAULT_WINDOW = 65535  # HTTP/2's initial window, per stream and for the connection

# Frame types and flags (RFC 9113 section 6).
DATA, HEADERS, RST_STREAM, PING, GOAWAY = 0x0, 0x1, 0x3, 0x6, 0x7
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1

RESET_BATCH = 256  # streams per write in rapid-reset mode (~35 KB)


@dataclass
class StreamState:
    """What the server sent on one stream: headers and trailers merged, DATA bytes, the end."""

    headers: dict[str, str] = field(default_factory=dict)
    data_bytes: int = 0
    ended: bool = False
    reset_code: int | None = None

    @property
    def grpc_status(self) -> int | None:
        status = self.headers.get("grpc-status")
        return None if status is None else int(status)

    @property
    def grpc_message(self) -> str:
        return unquote(self.headers.get("grpc-message", ""))


@dataclass(frozen=True)
class GoAway:
    error_code: int
    last_stream_id: int
    debug_data: bytes = b""


def grpc_frame(message: bytes) -> bytes:
    """One gRPC length-prefixed message: flag byte 0 (not compressed), 4-byte length."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    """One HTTP/2 frame: 24-bit length, type, flags, 31-bit stream id, payload."""
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) \
        + stream_id.to_bytes(4, "big") + payload


def error_name(code: int) -> str:
    try:
        return ErrorCodes(code).name
    except ValueError:
        return str(code)


class H2GrpcConnection:
    def __init__(self, port: int, *, host: str = "127.0.0.1",
                 initial_window_size: int = DEFAULT_WINDOW, acknowledge_data: bool = True,
                 timeout: float = 10.0) -> None:
        self.authority = f"{host}:{port}"
        self.acknowledge_data = acknowledge_data
        self.streams: dict[int, StreamState] = {}
        self.goaway: GoAway | None = None  # the first GOAWAY the server sent
        self.closed = False  # the TCP connection is closed (by the server, or by close())
        self.settings_received = False
        # h2 refuses every frame but GOAWAY after a GOAWAY (and grpc follows its GOAWAY with
        # a PING): its first error stops h2's part, while GOAWAY frames are read apart.
        self.h2_error: str | None = None
        # Raw mode (rapid reset): frames are written by hand and h2 is left behind; only
        # GOAWAY is noted and PINGs are acknowledged.
        self.raw = False
        self._raw_out = bytearray()
        self._unscanned = bytearray()
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.h2.local_settings = Settings(client=True, initial_values={
            SettingCodes.MAX_CONCURRENT_STREAMS: 100,
            SettingCodes.MAX_HEADER_LIST_SIZE: 65536,
            SettingCodes.INITIAL_WINDOW_SIZE: initial_window_size,
        })
        self.h2.initiate_connection()
        if acknowledge_data and initial_window_size > DEFAULT_WINDOW:
            self.h2.increment_flow_control_window(initial_window_size - DEFAULT_WINDOW)
        self.flush(time.monotonic() + timeout)

    @property
    def remote_settings(self) -> Settings:
        return self.h2.remote_settings

    def headers(self, path: str = INFER_PATH) -> list[tuple[str, str]]:
        return [(":method", "POST"), (":scheme", "http"), (":path", path),
                (":authority", self.authority), ("content-type", "application/grpc"),
                ("te", "trailers")]

    # -- sending ----------------------------------------------------------------------------

    def open_infer(self, message: bytes, *, path: str = INFER_PATH,
                   timeout: float = 10.0) -> int:
        """Start a unary call: HEADERS, then ``message`` framed in DATA (END_STREAM), within
        the server's flow-control windows."""
        deadline = time.monotonic() + timeout
        stream_id = self.h2.get_next_available_stream_id()
        self.streams[stream_id] = StreamState()
        self.h2.send_headers(stream_id, self.headers(path))
        data = memoryview(grpc_frame(message))
        while data:
            room = min(self.h2.local_flow_control_window(stream_id),
                       self.h2.max_outbound_frame_size, len(data))
            if room == 0:
                self.flush(deadline)
                self.receive(min(deadline - time.monotonic(), 0.1))
                if time.monotonic() > deadline:
                    raise TimeoutError("the server opened no flow-control window")
                continue
            self.h2.send_data(stream_id, data[:room].tobytes(), end_stream=room == len(data))
            data = data[room:]
        self.flush(deadline)
        return stream_id

    def reset(self, stream_id: int, code: int = ErrorCodes.CANCEL) -> None:
        self.h2.reset_stream(stream_id, code)
        self.flush(time.monotonic() + 10)

    def flush(self, deadline: float) -> None:
        self.send(b"", deadline)

    def send(self, data: bytes | bytearray, deadline: float) -> None:
        """Write ``data`` and whatever h2 (or raw mode) has queued, reading what arrives
        meanwhile: a peer that cannot write to us may stop reading from us."""
        pending = memoryview(bytes(data) + self._queued())
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the server stopped reading")
            readable, writable, _ = select.select([self.sock], [self.sock], [], left)
            if readable:
                self._read_once()
                queued = self._queued()
                if queued:
                    pending = memoryview(bytes(pending) + queued)
            if writable:
                try:
                    sent = self.sock.send(pending)
                except BlockingIOError:
                    continue
                pending = pending[sent:]

    def _queued(self) -> bytes:
        if self.raw:
            queued, self._raw_out = bytes(self._raw_out), bytearray()
            return queued
        return self.h2.data_to_send()

    def close(self) -> None:
        try:
            self.sock.close()
        finally:
            self.closed = True

    # -- receiving --------------------------------------------------------------------------

    def receive(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for bytes and take them in; False when none came."""
        if self.closed:
            return False
        readable, _, _ = select.select([self.sock], [], [], max(timeout, 0))
        if not readable:
            return False
        self._read_once()
        if not self.closed:
            self.flush(time.monotonic() + 10)  # SETTINGS and PING acknowledgements
        return True

    def wait_until(self, condition: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not condition():
            left = deadline - time.monotonic()
            if left <= 0 or self.closed:
                return condition()
            self.receive(min(left, 0.1))
        return True

    def _read_once(self) -> None:
        try:
            data = self.sock.recv(1 << 20)
        except (BlockingIOError, InterruptedError):
            return
        except ConnectionError:
            data = b""
        if not data:
            self.closed = True
            return
        self._scan(data)
        if self.raw or self.h2_error is not None:
            return
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self.h2_error = f"{type(exc).__name__}: {exc}"
            return
        for event in events:
            self._handle(event)

    def _scan(self, data: bytes) -> None:
        """Walk the frame headers (9 bytes: length, type, flags, stream) for GOAWAY, and in
        raw mode for PINGs to acknowledge."""
        buffer = self._unscanned
        buffer += data
        while len(buffer) >= 9:
            length = int.from_bytes(buffer[0:3], "big")
            if len(buffer) < 9 + length:
                break
            kind, flags = buffer[3], buffer[4]
            if kind == GOAWAY and self.goaway is None and length >= 8:
                last_stream = int.from_bytes(buffer[9:13], "big") & 0x7FFFFFFF
                self.goaway = GoAway(int.from_bytes(buffer[13:17], "big"), last_stream,
                                     bytes(buffer[17:9 + length]))
            elif kind == PING and self.raw and not flags & ACK:
                self._raw_out += frame(PING, ACK, 0, bytes(buffer[9:9 + length]))
            del buffer[:9 + length]

    def _handle(self, event: h2.events.Event) -> None:
        state = self.streams.get(getattr(event, "stream_id", 0) or 0)
        if isinstance(event, h2.events.RemoteSettingsChanged):
            self.settings_received = True
        elif isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
            if state is not None:
                state.headers.update(dict(event.headers))
        elif isinstance(event, h2.events.DataReceived):
            if state is not None:
                state.data_bytes += len(event.data)
            if self.acknowledge_data and event.flow_controlled_length:
                try:
                    self.h2.acknowledge_received_data(event.flow_controlled_length,
                                                      event.stream_id)
                except h2.exceptions.StreamClosedError:
                    pass
        elif isinstance(event, h2.events.StreamEnded):
            if state is not None:
                state.ended = True
        elif isinstance(event, h2.events.StreamReset):
            if state is not None:
                state.reset_code = int(event.error_code)


def rapid_reset(port: int, seconds: float, message: bytes,
                on_started: Callable[[], None] = lambda: None,
                rate: float | None = None) -> dict[str, object]:
    """Open, send and reset streams on one connection as fast as this process can write
    (or ``rate`` streams a second).

    h2 sets the connection up; then the frames are written by hand (h2's per-stream state
    would take most of this process's time): one HEADERS block of HPACK literals that are
    never indexed, so that the same bytes are valid on every stream, the request in DATA,
    RST_STREAM(CANCEL); a batch of them is built once and only the stream ids change.
    """
    connection = H2GrpcConnection(port)
    if not connection.wait_until(lambda: connection.settings_received, 10):
        raise TimeoutError("no SETTINGS from the server")
    block = hpack.Encoder().encode(
        [hpack.NeverIndexedHeaderTuple(k, v) for k, v in connection.headers()])
    data = grpc_frame(message)
    cancel = int(ErrorCodes.CANCEL).to_bytes(4, "big")
    one = frame(HEADERS, END_HEADERS, 0, block) + frame(DATA, END_STREAM, 0, data) \
        + frame(RST_STREAM, 0, 0, cancel)
    id_offsets = (5, 9 + len(block) + 5, 9 + len(block) + 9 + len(data) + 5)
    batch = bytearray(one * RESET_BATCH)
    next_id = connection.h2.get_next_available_stream_id()
    connection.raw = True
    opened, failure = 0, None
    start = time.monotonic()
    end = start + seconds
    try:
        while time.monotonic() < end and connection.goaway is None and not connection.closed:
            for i in range(RESET_BATCH):
                base = i * len(one)
                for offset in id_offsets:
                    struct.pack_into(">I", batch, base + offset, next_id)
                next_id += 2
            connection.send(batch, end + 5)
            if opened == 0:
                on_started()
            opened += RESET_BATCH
            connection.receive(0)
            if rate:
                time.sleep(max(0.0, start + opened / rate - time.monotonic()))
    except (TimeoutError, OSError) as exc:
        failure = f"{type(exc).__name__}: {exc}"
    elapsed = time.monotonic() - start
    if connection.goaway is None and not connection.closed:
        connection.wait_until(lambda: connection.goaway is not None, 0.2)  # one in flight
    connection.close()
    goaway = connection.goaway
    return {
        "streams": opened,
        "seconds": round(elapsed, 3),
        "streams_per_s": round(opened / elapsed) if elapsed else 0,
        "goaway": None if goaway is None else {
            "error_code": goaway.error_code, "error_name": error_name(goaway.error_code),
            "last_stream_id": goaway.last_stream_id,
            "debug_data": goaway.debug_data.decode(errors="replace"),
        },
        "failure": failure,
    }


def one_row_request(model: str, input_name: str, width: int) -> bytes:
    import numpy as np

    from bnserve.proto import open_inference_pb2 as pb

    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name=input_name, datatype="FP32", shape=[1, width])
    request.raw_input_contents.append(np.ones((1, width), np.float32).tobytes())
    return request.SerializeToString()


def main(argv: list[str]) -> int:
    if len(argv) not in (6, 7) or argv[0] != "rapid-reset":
        print(__doc__, file=sys.stderr)
        return 2
    _, address, seconds, model, input_name, width, *rate = argv
    host, _, port = address.rpartition(":")
    if host not in ("127.0.0.1", "localhost"):
        print("rapid-reset only talks to 127.0.0.1", file=sys.stderr)
        return 2

    def started() -> None:
        print("started", flush=True)

    result = rapid_reset(int(port), float(seconds),
                         one_row_request(model, input_name, int(width)), on_started=started,
                         rate=float(rate[0]) if rate else None)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
