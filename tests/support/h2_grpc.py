"""A tiny raw HTTP/2 gRPC client on the ``h2`` package, for what grpc's own client never does:
open and reset streams as fast as it can (the HTTP/2 rapid-reset pattern, CVE-2023-44487), or
ask for answers and leave them unread behind a small flow-control window.

As a library: ``H2GrpcConnection(port)`` opens a connection to 127.0.0.1 (preface and
SETTINGS), ``open_infer(request_bytes)`` starts a ModelInfer call (HEADERS, then one gRPC
message in DATA with its 5-byte prefix), ``reset(stream)`` sends RST_STREAM(CANCEL), and
``receive`` / ``wait_until`` read frames into ``streams``, ``goaway`` and ``remote_settings``.
With ``acknowledge_data=False`` it never sends a WINDOW_UPDATE, so the server can send each
stream ``initial_window_size`` bytes of DATA and the whole connection 65,535, no more.

As a program, from its own process so that its CPU work does not share the measuring side's
interpreter::

    python tests/support/h2_grpc.py rapid-reset ADDRESS SECONDS MODEL INPUT

opens ModelInfer streams on one connection (HEADERS + DATA with a valid one-row FP32
request, then RST_STREAM CANCEL) as fast as it can for SECONDS, prints ``started`` once the
first batch is on the wire, then one JSON line: streams opened, streams per second, and the
GOAWAY the server sent if any (error code, last stream id).
"""

from __future__ import annotations

import json
import select
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from h2.errors import ErrorCodes
from h2.settings import SettingCodes, Settings

INFER_PATH = "/inference.GRPCInferenceService/ModelInfer"
DEFAULT_WINDOW = 65535  # HTTP/2's initial window, per stream and for the connection
RESET_BATCH = 64  # streams built per write in rapid-reset mode


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
        from urllib.parse import unquote

        return unquote(self.headers.get("grpc-message", ""))


@dataclass(frozen=True)
class GoAway:
    error_code: int
    last_stream_id: int


def grpc_frame(message: bytes) -> bytes:
    """One gRPC length-prefixed message: flag byte 0 (not compressed), 4-byte length."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


class H2GrpcConnection:
    def __init__(self, port: int, *, host: str = "127.0.0.1",
                 initial_window_size: int = DEFAULT_WINDOW, acknowledge_data: bool = True,
                 timeout: float = 10.0) -> None:
        self.authority = f"{host}:{port}"
        self.acknowledge_data = acknowledge_data
        self.streams: dict[int, StreamState] = {}
        self.goaway: GoAway | None = None
        self.closed = False  # the server closed the TCP connection
        self.settings_received = False
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
        """Start a unary call: HEADERS, then ``message`` framed in DATA (END_STREAM)."""
        deadline = time.monotonic() + timeout
        stream_id = self.h2.get_next_available_stream_id()
        self.streams[stream_id] = StreamState()
        self.h2.send_headers(stream_id, self.headers(path))
        data = memoryview(grpc_frame(message))
        while True:  # within the server's flow-control windows
            room = min(self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size,
                       len(data))
            if room == 0 and data:
                self.flush(deadline)
                if not self.receive(deadline - time.monotonic()) and time.monotonic() > deadline:
                    raise TimeoutError("the server opened no flow-control window")
                continue
            self.h2.send_data(stream_id, data[:room].tobytes(), end_stream=room == len(data))
            data = data[room:]
            if not data:
                break
        self.flush(deadline)
        return stream_id

    def reset(self, stream_id: int, code: int = ErrorCodes.CANCEL) -> None:
        self.h2.reset_stream(stream_id, code)
        self.flush(time.monotonic() + 10)

    def flush(self, deadline: float) -> None:
        """Write what h2 has queued, reading whatever arrives meanwhile (a peer that cannot
        write to us may stop reading from us)."""
        pending = memoryview(self.h2.data_to_send())
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the server stopped reading")
            readable, writable, _ = select.select([self.sock], [self.sock], [], left)
            if readable:
                self._read_once()
                pending = memoryview(bytes(pending) + self.h2.data_to_send())
            if writable:
                try:
                    sent = self.sock.send(pending)
                except BlockingIOError:
                    continue
                pending = pending[sent:]

    def close(self) -> None:
        try:
            self.sock.close()
        finally:
            self.closed = True

    # -- receiving --------------------------------------------------------------------------

    def receive(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for bytes, feed them to h2; False when none came."""
        if self.closed:
            return False
        readable, _, _ = select.select([self.sock], [], [], max(timeout, 0))
        if not readable:
            return False
        self._read_once()
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
        for event in self.h2.receive_data(data):
            self._handle(event)

    def _handle(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RemoteSettingsChanged):
            self.settings_received = True
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = GoAway(int(event.error_code or 0), int(event.last_stream_id or 0))
        elif isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
            state = self.streams.get(event.stream_id)
            if state is not None:
                state.headers.update(dict(event.headers))
        elif isinstance(event, h2.events.DataReceived):
            state = self.streams.get(event.stream_id)
            if state is not None:
                state.data_bytes += len(event.data)
            if self.acknowledge_data and event.flow_controlled_length:
                try:
                    self.h2.acknowledge_received_data(event.flow_controlled_length,
                                                      event.stream_id)
                except h2.exceptions.StreamClosedError:
                    pass
        elif isinstance(event, h2.events.StreamEnded):
            state = self.streams.get(event.stream_id)
            if state is not None:
                state.ended = True
        elif isinstance(event, h2.events.StreamReset):
            state = self.streams.get(event.stream_id)
            if state is not None:
                state.reset_code = int(event.error_code)


def rapid_reset(port: int, seconds: float, message: bytes,
                on_started: Callable[[], None] = lambda: None) -> dict[str, object]:
    """Open, send and reset streams on one connection as fast as h2 lets this process."""
    connection = H2GrpcConnection(port)
    connection.wait_until(lambda: connection.settings_received, 10)
    h2conn = connection.h2
    headers = connection.headers()
    framed = grpc_frame(message)
    opened, failure = 0, None
    start = time.monotonic()
    end = start + seconds
    try:
        while time.monotonic() < end and connection.goaway is None and not connection.closed:
            for _ in range(RESET_BATCH):
                stream_id = h2conn.get_next_available_stream_id()
                h2conn.send_headers(stream_id, headers)
                h2conn.send_data(stream_id, framed, end_stream=True)
                h2conn.reset_stream(stream_id, ErrorCodes.CANCEL)
            connection.flush(end + 5)
            if opened == 0:
                on_started()
            opened += RESET_BATCH
            connection.receive(0)
    except (TimeoutError, OSError, h2.exceptions.ProtocolError) as exc:
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
            "error_code": goaway.error_code,
            "error_name": ErrorCodes(goaway.error_code).name
            if goaway.error_code in ErrorCodes._value2member_map_ else str(goaway.error_code),
            "last_stream_id": goaway.last_stream_id,
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
    if len(argv) != 6 or argv[0] != "rapid-reset":
        print(__doc__, file=sys.stderr)
        return 2
    _, address, seconds, model, input_name, width = argv
    host, _, port = address.rpartition(":")
    if host not in ("127.0.0.1", "localhost"):
        print("rapid-reset only talks to 127.0.0.1", file=sys.stderr)
        return 2

    def started() -> None:
        print("started", flush=True)

    result = rapid_reset(int(port), float(seconds), one_row_request(model, input_name, int(width)),
                         on_started=started)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
