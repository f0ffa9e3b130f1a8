"""The shutdown contract, through a real ``bnserve serve`` process under load:

    SIGTERM --> health NOT_SERVING at once; calls still answered  (drain window)
            --> new calls refused (UNAVAILABLE); accepted ones finish (grace period)
            --> exit 0
    a second SIGTERM / SIGINT --> exit within a second
    a model run still going at the end of the grace period --> does not hold the process

Times are the test process's ``time.monotonic()``: a call "started" when the client sent
it and "ended" when its answer or error came back. One known departure is let through,
narrowly: grpc's own CANCELLED for a call it received but never handed to the server at
the instant the server stops (grpc/grpc#41785; see ``_dropped_at_shutdown``).
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest

from bnserve.client.messages import infer_request
from bnserve.proto import open_inference_pb2_grpc as pb_grpc
from support import onnx_graphs
from support.drain_traffic import Call, HealthProber, InferLoop, StampedServer
from support.stuck_server import STUCK_LINE, STUCK_VALUE
from support.waiting import wait_for

SERVICE_NAME = "inference.GRPCInferenceService"  # readiness; "" is liveness
STUCK_SERVER = Path(__file__).resolve().parents[1] / "support" / "stuck_server.py"

WINDOW_S, GRACE_S = 1.5, 5.0
# 256 chained 1024x1024 MatMuls: about 60 ms for a 32-row request alone, 120 ms for a batch
# of two (64 rows, 2 cores); four slow clients keep one batch running and one queued.
SLOW_DEPTH, SLOW_ROWS, SLOW_CLIENTS = 256, 32, 4
FAST_PAUSE_S = 0.005  # between a fast client's calls: some 100 a second each
NOT_SERVING_WITHIN_S = 0.5
ACCEPTED_MARGIN_S = 0.25  # a call sent this long before the window's end has surely arrived
DROP_WINDOW_S = 0.25  # see _dropped_at_shutdown
OK, UNAVAILABLE = grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("drain")
    onnx_graphs.slow_matmul(root / "slow" / "1" / "model.onnx", depth=SLOW_DEPTH)
    onnx_graphs.linear_softmax(root / "linear" / "1" / "model.onnx")
    return root


def _env(window: float, grace: float) -> dict[str, str]:
    return {"BNSERVE_DRAIN_WINDOW_S": str(window), "BNSERVE_SHUTDOWN_GRACE_S": str(grace)}


def _slow_input() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"x": rng.standard_normal((SLOW_ROWS, 1024)).astype(np.float32)}


def _fast_input() -> dict[str, np.ndarray]:
    return {"input": np.ones((1, 4), np.float32)}


def _start(loops: list[InferLoop], prober: HealthProber) -> None:
    for thread in (*loops, prober):
        thread.start()
    wait_for(lambda: all(any(c.code == OK for c in loop.calls) for loop in loops),
             timeout=20, what="every client's first answer")


def _stop(loops: list[InferLoop], prober: HealthProber) -> list[Call]:
    for thread in (*loops, prober):
        thread.stop()
    for thread in (*loops, prober):
        thread.join(timeout=20)
    return sorted((c for loop in loops for c in loop.calls), key=lambda c: c.started)


def _dropped_at_shutdown(call: Call, window_end: float) -> bool:
    """grpc core (grpcio 1.85) ends a call it has received but not yet handed to the server
    when the server stops with CANCELLED, not UNAVAILABLE (grpc/grpc#41785, fix in
    grpc/grpc#41786): bnserve never saw it, so it is a refusal with the wrong code. Only
    that shape is let through: CANCELLED, sent at the window's end, ended at once."""
    return (call.code == grpc.StatusCode.CANCELLED
            and call.started >= window_end - ACCEPTED_MARGIN_S
            and call.ended < window_end + DROP_WINDOW_S
            and call.ended - call.started < DROP_WINDOW_S)


def _describe(calls: list[Call], sent: float) -> list[tuple]:
    return [(c.kind, c.code.name, c.details, round(c.started - sent, 3), round(c.ended - sent, 3))
            for c in calls]


def _summary(calls: list[Call]) -> str:
    counts: dict[str, int] = {}
    for call in calls:
        key = f"{call.kind}:{call.code.name}"
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_drain_under_load_loses_no_accepted_call(repository, signum):
    with StampedServer(repository, env=_env(WINDOW_S, GRACE_S)) as server:
        loops = [InferLoop(server.address, "slow", "slow", _slow_input())
                 for _ in range(SLOW_CLIENTS)]
        loops += [InferLoop(server.address, "fast", "linear", _fast_input(), pause_s=FAST_PAUSE_S),
                  InferLoop(server.address, "fresh", "linear", _fast_input(), fresh=True,
                            pause_s=FAST_PAUSE_S)]
        prober = HealthProber(server.address, ("", SERVICE_NAME))
        _start(loops, prober)
        # Steady load: every slow client on its second call, a batch running and one queued.
        wait_for(lambda: all(sum(c.code == OK for c in loop.calls) >= 2 for loop in loops
                             if loop.kind == "slow"), timeout=20, what="two answers per slow client")
        sent = server.send(signum)
        code, exited = server.wait_exit(timeout=WINDOW_S + GRACE_S + 5)
        calls = _stop(loops, prober)
    window_end = sent + WINDOW_S  # the server's window ends no earlier (it starts on receipt)
    log = server.log

    # Health: NOT_SERVING at once, for liveness and readiness, and never SERVING again.
    for service in ("", SERVICE_NAME):
        went = prober.first(service, "NOT_SERVING", after=sent)
        assert went is not None, f"{service!r} never said NOT_SERVING:\n{log}"
        assert went - sent < NOT_SERVING_WITHIN_S, f"{service!r} NOT_SERVING after {went - sent:.3f}s"
        assert prober.first(service, "SERVING", after=went) is None

    # No call fails with anything but a refusal, and none is refused inside the window.
    failed = [c for c in calls if c.code != OK]
    dropped = [c for c in failed if _dropped_at_shutdown(c, window_end)]
    assert len(dropped) <= len(loops), f"more than one dropped call per client: {dropped}"
    refused = [c for c in failed if c not in dropped]
    assert all(c.code == UNAVAILABLE for c in refused), _describe(refused, sent)
    assert all(c.ended >= window_end for c in refused), \
        f"refused inside the window: {_describe([c for c in refused if c.ended < window_end], sent)}"
    assert refused, f"nothing was refused after the window: {_summary(calls)}"
    # A refusal is grpc's (the port or stream closed), never the server's own answer that
    # the model is stopping, which would be an accepted call that failed.
    assert not [c for c in refused if "stopping" in c.details or "accepting" in c.details]

    # Calls sent in the window are answered; calls accepted before it ends all succeed.
    during = [c for c in calls if sent <= c.started < window_end and c.code == OK]
    assert {c.kind for c in during} == {"slow", "fast", "fresh"}, _summary(during)
    accepted = [c for c in calls if c.started < window_end - ACCEPTED_MARGIN_S]
    assert all(c.code == OK for c in accepted), _describe([c for c in accepted if c.code != OK], sent)
    first_refusal = min(c.ended for c in refused)
    in_flight = [c for c in calls if c.code == OK and c.started < first_refusal < c.ended]
    assert in_flight, "no call was in flight when refusals began (load too light?)"

    assert code == 0, log
    elapsed = exited - sent
    assert elapsed < WINDOW_S + GRACE_S, f"exit {elapsed:.2f}s after the signal"
    assert "stopped" in log and "Traceback" not in log
    print(f"\n{signal.Signals(signum).name}: NOT_SERVING after "
          f"{prober.first(SERVICE_NAME, 'NOT_SERVING', after=sent) - sent:.3f}s; "
          f"{len(during)} OK calls sent in the window ({_summary(during)}); "
          f"first refusal {first_refusal - sent:.3f}s; {len(in_flight)} in flight then, all OK "
          f"(last ended {max(c.ended for c in in_flight) - sent:.3f}s); {len(refused)} refused, "
          f"{len(dropped)} dropped CANCELLED "
          f"(details: {sorted({c.details for c in refused})}); exit {code} after "
          f"{elapsed:.3f}s; all: {_summary(calls)}")


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_second_signal_stops_within_a_second(repository, second):
    with StampedServer(repository, env=_env(30, GRACE_S)) as server:
        loops = [InferLoop(server.address, "slow", "slow", _slow_input())]
        prober = HealthProber(server.address, (SERVICE_NAME,))
        _start(loops, prober)
        first = server.send(signal.SIGTERM)
        wait_for(lambda: prober.first(SERVICE_NAME, "NOT_SERVING", after=first) is not None,
                 timeout=5, what="NOT_SERVING")
        # Well inside the 30 s window: a call sent after the signal was answered, and the
        # client's next one is in flight.
        wait_for(lambda: any(c.started > first and c.code == OK for c in loops[0].calls),
                 timeout=10, what="an answer to a call sent in the window")
        sent = server.send(second)
        code, exited = server.wait_exit(timeout=10)
        calls = _stop(loops, prober)
    elapsed = exited - sent
    assert elapsed < 1.0, f"exit {elapsed:.3f}s after the second signal:\n{server.log}"
    assert code == 1, server.log  # "not drained"
    assert "second signal: stopping now" in server.log and "Traceback" not in server.log
    # Calls inside the window (before the second signal) were answered.
    assert all(c.code == OK for c in calls if c.ended < sent)
    phases = [(round(t - sent, 3), line.split(": ", 1)[-1].strip())
              for t, line in zip(server.lines.times, server.lines, strict=False) if t >= sent]
    print(f"\nsecond {signal.Signals(second).name}: exit {code} after {elapsed:.3f}s {phases}; "
          f"calls: {_summary(calls)}; after it: {_summary([c for c in calls if c.ended >= sent])}")


def test_a_stuck_model_run_does_not_keep_the_process_alive(tmp_path):
    onnx_graphs.linear_softmax(tmp_path / "linear" / "1" / "model.onnx")
    grace = 1.0
    with StampedServer(tmp_path, env=_env(0, grace), script=STUCK_SERVER) as server:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            stub.ModelInfer(infer_request("linear", _fast_input()), timeout=10)  # a normal run
            stuck_input = {"input": np.full((1, 4), STUCK_VALUE, np.float32)}
            outcome: list[grpc.StatusCode] = []

            def call_stuck() -> None:
                try:
                    stub.ModelInfer(infer_request("linear", stuck_input), timeout=30)
                    outcome.append(OK)
                except grpc.RpcError as exc:
                    outcome.append(exc.code())

            caller = threading.Thread(target=call_stuck, daemon=True)
            caller.start()
            wait_for(lambda: server.first_line(STUCK_LINE) is not None, timeout=10,
                     what="the stuck run to start")
            sent = server.send(signal.SIGTERM)
            code, exited = server.wait_exit(timeout=grace + 10)
            caller.join(timeout=5)
    elapsed = exited - sent
    log = server.log
    assert elapsed < grace + 2, f"exit {elapsed:.2f}s after SIGTERM:\n{log}"
    assert code == 0, log
    assert "exiting with 1 runtime thread(s) still busy" in log, log
    assert "a run outlived the shutdown grace period" in log, log
    assert "Traceback" not in log
    assert outcome and outcome[0] != OK
    print(f"\nstuck run: exit {code} after {elapsed:.3f}s (grace {grace}s); the stuck call "
          f"ended {outcome[0].name}; log: "
          f"{[line.split(': ', 1)[-1].strip() for line in server.lines if 'WARNING' in line]}")
