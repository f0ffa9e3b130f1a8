"""Traffic and timing for the shutdown tests: a ``bnserve serve`` subprocess whose log lines
carry the time they arrived, client threads that record every call (when it started and
ended, how it ended) and a health prober that records every answer. One clock for all:
``time.monotonic()`` in the test process.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bnserve.client.messages import infer_request
from bnserve.proto import open_inference_pb2_grpc as pb_grpc
from support.subprocess_server import SubprocessServer

CALL_TIMEOUT_S = 15.0  # longer than any grace period here: a DEADLINE_EXCEEDED is a finding
PAUSE_AFTER_FAILURE_S = 0.02  # refused calls come back at once: keep the loops bounded


class _StampedLines(list):
    """``SubprocessServer.lines`` that also notes when each line arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def append(self, line: str) -> None:
        self.times.append(time.monotonic())
        super().append(line)


class StampedServer(SubprocessServer):
    """``SubprocessServer`` that times its log lines and its signals; ``script``: run that
    Python file instead of ``bnserve serve`` (same arguments)."""

    def __init__(self, repository: Path, *extra_args: str, env: dict[str, str] | None = None,
                 script: Path | None = None) -> None:
        super().__init__(repository, *extra_args, env=env)
        self.lines = _StampedLines()
        if script is not None:
            self.args = [sys.executable, str(script), *self.args[4:]]

    def send(self, signum: int = signal.SIGTERM) -> float:
        """Send ``signum``; the time it was sent."""
        sent = time.monotonic()
        self.process.send_signal(signum)
        return sent

    def wait_exit(self, timeout: float) -> tuple[int, float]:
        """The exit code and the time the exit was seen (polled every 10 ms)."""
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"still running after {timeout:g}s:\n{self.log}")
            time.sleep(0.01)
        ended = time.monotonic()
        self._reader.join(timeout=5)
        return self.process.returncode, ended

    def first_line(self, text: str) -> float | None:
        """When the first log line containing ``text`` arrived."""
        for stamp, line in zip(self.lines.times, list(self.lines), strict=False):
            if text in line:
                return stamp
        return None


@dataclass(frozen=True)
class Call:
    kind: str
    started: float
    ended: float
    code: grpc.StatusCode  # OK for a success
    details: str = ""


class InferLoop(threading.Thread):
    """Sends ``model`` one request after another until ``stop()``; ``fresh``: a new channel
    (a new connection) for every call, else one channel for all; ``pause_s`` between calls
    (fast models: leave the two cores some room)."""

    def __init__(self, address: str, kind: str, model: str, inputs: dict[str, np.ndarray], *,
                 fresh: bool = False, pause_s: float = 0.0) -> None:
        super().__init__(daemon=True, name=f"load-{kind}")
        self.address, self.kind, self.fresh, self.pause_s = address, kind, fresh, pause_s
        self.request = infer_request(model, inputs)
        self.calls: list[Call] = []
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()

    def _one(self, channel: grpc.Channel) -> None:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        started = time.monotonic()
        try:
            stub.ModelInfer(self.request, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as exc:
            self.calls.append(Call(self.kind, started, time.monotonic(), exc.code(),
                                   exc.details() or ""))
            self._halt.wait(PAUSE_AFTER_FAILURE_S)
        else:
            self.calls.append(Call(self.kind, started, time.monotonic(), grpc.StatusCode.OK))
            if self.pause_s:
                self._halt.wait(self.pause_s)

    def run(self) -> None:
        if self.fresh:
            while not self._halt.is_set():
                with grpc.insecure_channel(self.address) as channel:
                    self._one(channel)
            return
        with grpc.insecure_channel(self.address) as channel:
            while not self._halt.is_set():
                self._one(channel)


@dataclass(frozen=True)
class Probe:
    at: float  # when the answer came
    service: str
    status: str  # SERVING / NOT_SERVING, or the status code of a failed check


class HealthProber(threading.Thread):
    """Checks each of ``services`` every ``period_s`` until ``stop()``."""

    def __init__(self, address: str, services: tuple[str, ...], period_s: float = 0.02) -> None:
        super().__init__(daemon=True, name="health-prober")
        self.address, self.services, self.period_s = address, services, period_s
        self.probes: list[Probe] = []
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        names = health_pb2.HealthCheckResponse.ServingStatus.Name
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while not self._halt.is_set():
                for service in self.services:
                    try:
                        answer = stub.Check(health_pb2.HealthCheckRequest(service=service),
                                            timeout=1.0)
                        status = names(answer.status)
                    except grpc.RpcError as exc:
                        status = exc.code().name
                    self.probes.append(Probe(time.monotonic(), service, status))
                self._halt.wait(self.period_s)

    def first(self, service: str, status: str, after: float) -> float | None:
        """When ``service`` first answered ``status`` after ``after``."""
        return next((p.at for p in list(self.probes)
                     if p.service == service and p.status == status and p.at >= after), None)
