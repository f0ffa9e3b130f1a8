"""The event loop never waits on one request: health checks stay quick while 60 MiB FP32 and
BYTES requests are decoded, run and encoded by the same server.

Three processes, so that nothing but the server's own work stands between a health check
and its answer: the server (`bnserve serve`), a sender keeping the large calls in flight
(tests/support/heavy_sender.py), and this test measuring health checks.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from onnx import TensorProto

from support import onnx_graphs
from support.subprocess_server import SubprocessServer

FP32_WIDTH = 1 << 20  # 4 MiB a row: 15 rows = 60 MiB
BYTES_WIDTH = 4096  # 63 rows of 4096 items of 240 bytes = 60 MiB
SENDER = Path(__file__).resolve().parents[1] / "support" / "heavy_sender.py"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("large")
    onnx_graphs.identity(root / "wide_fp32" / "1" / "model.onnx", TensorProto.FLOAT, FP32_WIDTH)
    onnx_graphs.identity(root / "wide_bytes" / "1" / "model.onnx", TensorProto.STRING, BYTES_WIDTH)
    with SubprocessServer(root, env={"BNSERVE_DRAIN_WINDOW_S": "0"}) as running:
        yield running


def _health_latencies(address: str, seconds: float) -> list[float]:
    with grpc.insecure_channel(address) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check
        check(health_pb2.HealthCheckRequest(), timeout=10)
        latencies, end = [], time.monotonic() + seconds
        while time.monotonic() < end:
            started = time.perf_counter()
            check(health_pb2.HealthCheckRequest(), timeout=10)
            latencies.append(time.perf_counter() - started)
            time.sleep(0.01)
    return latencies


def test_health_checks_stay_quick_while_60_mib_requests_are_in_flight(server):
    baseline = _health_latencies(server.address, 1.0)
    sender = subprocess.Popen(
        [sys.executable, str(SENDER), server.address, "10",
         f"wide_fp32:FP32:15:{FP32_WIDTH}:0", f"wide_bytes:BYTES:63:{BYTES_WIDTH}:240"],
        stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(2.0)  # the first large calls are on their way
        loaded = _health_latencies(server.address, 6.0)
        out, _ = sender.communicate(timeout=120)
    finally:
        sender.kill()
    answered = json.loads(out)
    # The large calls were really served, and several were in flight while we measured.
    assert all(set(counts) == {"OK"} and counts["OK"] >= 3 for counts in answered.values()), \
        answered
    p99 = float(np.percentile(loaded, 99))
    print(f"health check p50/p99: baseline {np.median(baseline) * 1e3:.1f}/"
          f"{np.percentile(baseline, 99) * 1e3:.1f} ms, under 60 MiB requests "
          f"{np.median(loaded) * 1e3:.1f}/{p99 * 1e3:.1f} ms over {len(loaded)} checks; "
          f"large calls answered: {answered}")
    assert p99 < 0.100
