"""HTTP/2 abuse and connection limits, against a real ``bnserve serve`` subprocess, from a raw
HTTP/2 client (``support.h2_grpc``) that does what grpc's own client never does: reset
streams as fast as it can, and ask for large answers it never reads.

Figures are printed (``pytest -s``) and repeated in the assertion messages.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from bnserve.client import Client, ServerBusyError
from bnserve.proto import open_inference_pb2 as pb
from bnserve.server.app import SERVICE_NAME
from support import h2_grpc, onnx_graphs
from support.h2_grpc import H2GrpcConnection
from support.ports import free_port
from support.quiet import no_collection_pauses
from support.subprocess_server import SubprocessServer

H2_GRPC = Path(h2_grpc.__file__)
INFER = "/inference.GRPCInferenceService/ModelInfer"
SMALL = h2_grpc.one_row_request("linear", "input", 4)  # one row in, three probabilities out

# Rapid reset: how long each phase lasts.
BASELINE_S = 2.0
ATTACK_S = 5.0
# The victim's p99 may grow to 3x its baseline, and the baseline counts as at least this.
# On the 2-core shared test machine the idle baseline p99 itself moves between 2.6 and 7 ms
# from run to run (other work on the machine), so 3x a lucky 2.6 ms would be a bound that
# one scheduling hiccup breaks. (A control run with a busy niced process in place of the
# attacker leaves the p99 at 2.8-3.4 ms: the attacker's own CPU is not what is measured.)
# 5 ms still separates the outcomes: attacked p99 34-71 ms with max_concurrent_streams=128,
# 11.5-21.6 ms with 8 (baseline p99 3-3.6 ms).
P99_FLOOR_MS = 5.0
ATTACKER_NICE = 10  # its CPU would be elsewhere in real life: it yields to the server

# Unread answers: one row of the fan-out model is a ~3 MiB answer.
WIDTH = 786_432  # 4 bytes each: 3 MiB a row
ANSWER_BYTES = 4 * WIDTH
BUDGET = 8 << 20  # response_memory_bytes: room for two unread answers, not three
CONNECTIONS, STREAMS_PER_CONNECTION = 8, 6  # 48 answers asked: 144 MiB if all were held



def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line")


def percentiles(latencies_s: list[float]) -> dict[str, float]:
    ms = np.array(latencies_s) * 1000
    return {"calls": len(ms), "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2), "max_ms": round(float(ms.max()), 1)}


def measure(call, seconds: float) -> tuple[dict[str, float], list[str]]:
    """Small ModelInfer calls one after another for ``seconds``: latencies and failures."""
    latencies, failures = [], []
    with no_collection_pauses():
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            start = time.perf_counter()
            try:
                call(SMALL, timeout=10)
            except grpc.RpcError as exc:
                failures.append(exc.code().name)
            latencies.append(time.perf_counter() - start)
    return percentiles(latencies), failures


def health_statuses(address: str) -> dict[str, str]:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return {service: health_pb2.HealthCheckResponse.ServingStatus.Name(
            stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status)
            for service in ("", SERVICE_NAME)}


# The issue's measurement: 60,000 open-and-cancel streams in 8 s on one connection.
ISSUE_RATE = 7_500


def _attack(tmp_path, rate: int | None) -> tuple[dict, list]:
    onnx_graphs.linear_softmax(tmp_path / "linear" / "1" / "model.onnx")
    with SubprocessServer(tmp_path) as server, grpc.insecure_channel(server.address) as channel:
        call = channel.unary_unary(INFER)
        for _ in range(50):  # connection, first runs
            call(SMALL, timeout=10)
        baseline, baseline_failures = measure(call, BASELINE_S)
        assert not baseline_failures

        attacker = subprocess.Popen(
            [sys.executable, str(H2_GRPC), "rapid-reset", server.address, str(ATTACK_S),
             "linear", "input", "4", *([str(rate)] if rate else [])],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            preexec_fn=lambda: os.nice(ATTACKER_NICE))
        try:
            started = attacker.stdout.readline().strip()  # its own timeouts bound the wait
            assert started == "started", f"the attacker did not start: {started!r}"
            attacked, failures = measure(call, ATTACK_S - 1.0)  # within the attack
            out, err = attacker.communicate(timeout=30)
        finally:
            if attacker.poll() is None:
                attacker.kill()
                attacker.wait(timeout=10)
        assert attacker.returncode == 0, err
        attack = json.loads(out.strip().splitlines()[-1])
        figures = {"baseline": baseline, "attacked": attacked, "attacker": attack}
        print("\nrapid reset:", json.dumps(figures))
        assert server.process.poll() is None, server.log
        assert health_statuses(server.address) == {"": "SERVING", SERVICE_NAME: "SERVING"}
        with Client(server.address) as client:
            assert client.is_live() and client.is_ready()
        return figures, failures


def test_rapid_reset_at_the_issues_rate_leaves_other_clients_unharmed(tmp_path):
    figures, failures = _attack(tmp_path, ISSUE_RATE)
    attack, baseline, attacked = figures["attacker"], figures["baseline"], figures["attacked"]
    assert attack["streams"] >= 0.8 * ISSUE_RATE * (ATTACK_S - 1), figures
    assert not failures, f"victim calls failed ({sorted(set(failures))}): {figures}"
    bound = 3 * max(baseline["p99_ms"], P99_FLOOR_MS)
    assert attacked["p99_ms"] <= bound, (
        f"victim p99 {attacked['p99_ms']} ms > {bound} ms under rapid reset: {figures}")


def test_rapid_reset_flat_out_fails_no_other_call(tmp_path):
    """As fast as one process can write (hundreds of thousands of streams a second): grpc
    core refuses what exceeds max_concurrent_streams and sends no GOAWAY; other clients
    slow down (figures in the output) but none of their calls fails, and the server stays
    live and ready. A strict bound here needs a proxy in front (Envoy's premature-reset
    limits): nothing in grpc's Python server can refuse the streams sooner."""
    figures, failures = _attack(tmp_path, None)
    assert figures["attacker"]["streams"] >= 20_000, f"too weak an attack: {figures}"
    assert not failures, f"victim calls failed ({sorted(set(failures))}): {figures}"


def scrape_requests(port: int) -> dict[tuple[str, str], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {(s.labels["model"], s.labels["code"]): s.value
            for family in text_string_to_metric_families(text)
            if family.name == "bnserve_infer_requests"
            for s in family.samples if s.name == "bnserve_infer_requests_total"}


def wide_request() -> bytes:
    request = pb.ModelInferRequest(model_name="wide")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 1])
    request.raw_input_contents.append(np.ones((1, 1), np.float32).tobytes())
    return request.SerializeToString()


def test_a_client_keeping_many_calls_open_gets_every_answer(tmp_path):
    """The other side of the stream limit (32 per connection): grpc refuses some streams
    of a connection that keeps more open, so bnserve's client spreads its calls over 4
    connections per address. 96 workers looping on one client (24 per connection, below the
    limit: at the limit itself grpc still refuses the odd stream) are all answered."""
    import asyncio

    onnx_graphs.linear_softmax(tmp_path / "linear" / "1" / "model.onnx")
    x = np.ones((1, 4), np.float32)

    async def load(address: str) -> list[BaseException]:
        from bnserve.client import AsyncClient

        failures: list[BaseException] = []
        async with AsyncClient(address, timeout=30) as client:
            async def worker() -> None:
                for _ in range(20):
                    try:
                        await client.infer("linear", {"input": x})
                    except Exception as exc:  # noqa: BLE001 - every failure is counted
                        failures.append(exc)

            await asyncio.gather(*(worker() for _ in range(96)))
        return failures

    with SubprocessServer(tmp_path) as server:
        failures = asyncio.run(load(server.address))
    assert not failures, [str(f)[:200] for f in failures[:3]]


def test_unread_answers_are_held_within_the_response_memory_budget(tmp_path):
    onnx_graphs.fan_out(tmp_path / "wide" / "1" / "model.onnx", WIDTH)
    onnx_graphs.linear_softmax(tmp_path / "linear" / "1" / "model.onnx")
    metrics_port = free_port()
    env = {
        "BNSERVE_RESPONSE_MEMORY_BYTES": str(BUDGET),
        # One row a run: onnxruntime's CPU arena keeps its largest run's output for the
        # process's life, so 48 rows batched into one 144 MiB run would grow the RSS
        # whatever the budget does. Single rows stay within what the load-time probe used.
        "BNSERVE_MAX_BATCH_SIZE": "1",
    }
    big = {"x": np.ones((1, 1), np.float32)}
    small = {"input": np.ones((1, 4), np.float32)}
    with SubprocessServer(tmp_path, "--metrics-port", str(metrics_port), env=env) as server, \
            Client(server.address) as client:
        pid = server.process.pid
        assert client.infer("wide", big)["y"].shape == (1, WIDTH)  # first big run and answer
        client.infer("linear", small)
        before = scrape_requests(metrics_port)
        rss_before = rss_bytes(pid)

        connections = [H2GrpcConnection(server.port, acknowledge_data=False)
                       for _ in range(CONNECTIONS)]
        try:
            streams = [(c, c.open_infer(wide_request())) for c in connections
                       for _ in range(STREAMS_PER_CONNECTION)]
            asked = len(streams)
            held = BUDGET // (ANSWER_BYTES + 1024)  # 2: a third would overrun the budget

            def answered() -> list:
                return [c.streams[s] for c, s in streams if c.streams[s].grpc_status is not None]

            deadline = time.monotonic() + 20
            while len(answered()) < asked - held and time.monotonic() < deadline:
                for c in connections:
                    c.receive(0.01)
            refused = answered()
            statuses = sorted({(s.grpc_status, s.grpc_message[:80]) for s in refused})
            assert len(refused) == asked - held, f"{len(refused)} of {asked} answered: {statuses}"
            assert all(s.grpc_status == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
                       and "response memory" in s.grpc_message for s in refused), statuses
            for c in connections:  # the held answers got no more than the windows allow
                assert sum(s.data_bytes for s in c.streams.values()) <= h2_grpc.DEFAULT_WINDOW

            # Others are still served: small answers, and big ones are refused, not queued.
            for _ in range(20):
                assert client.infer("linear", small)["probabilities"].shape == (1, 3)
            with pytest.raises(ServerBusyError, match="response memory"):
                client.infer("wide", big)

            growth = rss_bytes(pid) - rss_before
            # What is held: the two answers (6 MiB, within the 8 MiB budget) and grpc's own
            # copy of each; on top, the allocator and onnxruntime's arena keep some of the
            # memory of the runs: measured ~15 MiB beyond the held bytes, with 24 or 48
            # answers asked. Without a budget the 48 answers hold ~300 MiB.
            bound = 2 * BUDGET + (32 << 20)
            print(f"\nunread answers: {asked} asked, {held} held, {len(refused)} refused; "
                  f"RSS {rss_before / 2**20:.1f} MiB -> +{growth / 2**20:.1f} MiB "
                  f"(bound {bound / 2**20:.0f} MiB)")
            assert growth < bound, (
                f"server RSS grew {growth / 2**20:.1f} MiB for {held} held answers of "
                f"{ANSWER_BYTES / 2**20:.0f} MiB (bound {bound / 2**20:.0f} MiB)")
        finally:
            for c in connections:
                c.close()

        # The calls end with their connections and their answers' memory is released.
        deadline = time.monotonic() + 10
        while True:
            try:
                assert client.infer("wide", big)["y"].shape == (1, WIDTH)
                break
            except ServerBusyError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        after = scrape_requests(metrics_port)
        key = ("wide", "RESOURCE_EXHAUSTED")
        assert after.get(key, 0) - before.get(key, 0) >= asked - held + 1, (before, after)


def test_connection_limits_reach_grpc(tmp_path):
    onnx_graphs.linear_softmax(tmp_path / "linear" / "1" / "model.onnx")
    env = {"BNSERVE_MAX_CONCURRENT_STREAMS": "4", "BNSERVE_MAX_CONNECTION_IDLE_S": "1"}
    with SubprocessServer(tmp_path, env=env) as server:
        connection = H2GrpcConnection(server.port)
        opened = time.monotonic()
        try:
            assert connection.wait_until(lambda: connection.settings_received, 10)
            assert connection.remote_settings.max_concurrent_streams == 4

            # No call on it: closed for idleness after about a second. (grpc 1.85 says so
            # with GOAWAY INTERNAL_ERROR "connection idle", last stream 0, and closes.)
            assert connection.wait_until(lambda: connection.goaway is not None, 10), \
                "no GOAWAY on an idle connection"
            idle_s = time.monotonic() - opened
        finally:
            connection.close()
        assert connection.goaway.debug_data == b"connection idle", connection.goaway
        assert 0.5 <= idle_s <= 5, idle_s
