"""The thin client against a fake servicer (tests/support/fake_servicer.py): everything the
client offers, on a base install. These tests run twice in CI: here, and in the floor
environment (grpcio, protobuf and numpy at pyproject.toml's floors, nothing else:
tests/client/test_floor_env.py), so they import nothing beyond those and pytest.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from bnserve.client import (
    AsyncClient,
    BnserveError,
    ClassScore,
    Client,
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidRequestError,
    ModelNotFoundError,
    ServerBusyError,
    ServerError,
    ServerUnavailableError,
    UnauthenticatedError,
)
from support.fake_servicer import ADMIN_TOKEN, FakeServer

UNUSED_ADDRESS = "127.0.0.1:1"  # nothing listens on port 1 here
X = np.array([[1, 2, 3], [3, 2, 1], [0, -1, 5]], dtype=np.float32)


@pytest.fixture(scope="module")
def fake():
    with FakeServer() as running:
        yield running


@pytest.fixture(scope="module")
def client(fake):
    with Client(fake.address, timeout=10) as c:
        yield c


def test_readiness_and_server_metadata(client):
    assert client.is_live() and client.is_ready()
    assert client.is_model_ready("double") and not client.is_model_ready("nope")
    assert client.server_metadata() == {"name": "fake", "version": "0",
                                        "extensions": ["classification", "model_repository"]}


def test_metadata_names_the_tensors_and_their_numpy_dtypes(client):
    meta = client.metadata("double")
    assert (meta.name, meta.versions, meta.platform) == ("double", ("1",), "fake")
    assert [(t.name, t.datatype, t.shape, t.dtype) for t in meta.inputs] == [
        ("x", "FP32", (-1, 3), np.float32)]
    assert [(t.name, t.datatype, t.shape) for t in meta.outputs] == [
        ("twice", "FP32", (-1, 3)), ("total", "FP64", (-1,))]


def test_predict_casts_to_the_input_dtype_and_returns_the_first_output(client):
    answer = client.predict("double", X.astype(np.float64))
    assert answer.dtype == np.float32 and answer.shape == (3, 3)
    np.testing.assert_array_equal(answer, 2 * X)
    np.testing.assert_array_equal(client.predict("double", [[1, 2, 3]]), [[2, 4, 6]])


def test_predict_sends_batch_size_rows_at_a_time_and_joins_the_answers(fake, client):
    rows = np.arange(21, dtype=np.float32).reshape(7, 3)
    before = fake.called("ModelInfer")
    np.testing.assert_array_equal(client.predict("double", rows, batch_size=3), 2 * rows)
    assert fake.called("ModelInfer") - before == 3  # 3 + 3 + 1 rows


def test_infer_answers_every_output_or_the_named_ones(client):
    both = client.infer("double", {"x": X})
    assert list(both) == ["twice", "total"]
    assert both["total"].dtype == np.float64
    np.testing.assert_array_equal(both["total"], [6, 6, 4])
    only = client.infer("double", {"x": X}, outputs=["total"])
    assert list(only) == ["total"]


def test_infer_reads_answers_in_the_typed_contents_too(client):
    typed = client.infer("typed", {"x": X})
    raw = client.infer("double", {"x": X})
    for name in ("twice", "total"):
        assert typed[name].dtype == raw[name].dtype
        np.testing.assert_array_equal(typed[name], raw[name])


def test_classify_gives_each_rows_top_classes_with_their_labels(client):
    rows = client.classify("double", X, top=2)
    assert rows[0] == [ClassScore(2, 6.0, "c"), ClassScore(1, 4.0, "b")]
    assert [row[0].label for row in rows] == ["c", "a", "c"]
    ranked = client.infer("typed", {"x": X[:1]}, outputs=["twice"], classification=1)["twice"]
    assert ranked.tolist() == [[b"6.000000:2:c"]]


@pytest.mark.parametrize(("call", "error", "code"), [
    (lambda c: c.predict("nope", X), ModelNotFoundError, "NOT_FOUND"),
    (lambda c: c.infer("double", {"x": np.zeros((1, 4), np.float32)}), InvalidRequestError,
     "INVALID_ARGUMENT"),
    (lambda c: c.infer("busy", {"x": X}), ServerBusyError, "RESOURCE_EXHAUSTED"),
    (lambda c: c.infer("broken", {"x": X}), ServerError, "INTERNAL"),
    (lambda c: c.repository_index(), UnauthenticatedError, "UNAUTHENTICATED"),
    (lambda c: c.drift_report("typed"), FailedPreconditionError, "FAILED_PRECONDITION"),
], ids=["not-found", "invalid", "busy", "internal", "unauthenticated", "precondition"])
def test_a_refusal_raises_its_error_with_the_code_details_and_cause(client, call, error, code):
    with pytest.raises(error) as info:
        call(client)
    assert isinstance(info.value, BnserveError)
    assert info.value.code == getattr(grpc.StatusCode, code)
    assert info.value.details and info.value.index is None
    assert isinstance(info.value.__cause__, grpc.RpcError)


def test_a_call_past_its_deadline_raises_deadline_exceeded(client):
    started = time.monotonic()
    with pytest.raises(DeadlineExceededError) as info:
        client.infer("slow", {"x": X}, timeout=0.3)
    assert time.monotonic() - started < 3
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert client.predict("double", X[:1], timeout=5).shape == (1, 3)  # the client still works


def test_no_server_to_reach_is_unavailable_and_not_ready():
    with Client(UNUSED_ADDRESS, timeout=2) as c:
        assert not c.is_ready()
        with pytest.raises(ServerUnavailableError):
            c.infer("double", {"x": X})


def test_several_addresses_take_calls_in_turn_and_skip_one_that_is_down(fake):
    with FakeServer() as second:
        before = fake.called("ModelInfer")
        with Client([fake.address, UNUSED_ADDRESS, second.address], timeout=5) as c:
            for _ in range(6):
                np.testing.assert_array_equal(c.predict("double", X[:1]), 2 * X[:1])
        assert fake.called("ModelInfer") > before and second.called("ModelInfer") > 0
        assert fake.called("ModelInfer") - before + second.called("ModelInfer") == 6


def test_the_tokens_go_where_they_belong(fake):
    with Client(fake.address, auth_token="user-token", admin_token=ADMIN_TOKEN) as c:
        c.infer("double", {"x": X[:1]})
        index = c.repository_index()
    (_, infer), (_, repository) = fake.calls[-2:]
    assert infer["authorization"] == "Bearer user-token"
    assert repository["authorization"] == f"Bearer {ADMIN_TOKEN}"
    assert [(r.name, r.version, r.state) for r in index] == [("double", "1", "READY"),
                                                              ("typed", "1", "READY")]


def test_stream_answers_each_item_in_order(client):
    items = [X[i : i + 1] for i in range(3)] + [{"x": X}]
    answers = list(client.stream("double", items, outputs=["twice"]))
    assert len(answers) == 4
    for item, answer in zip(items, answers, strict=True):
        x = item["x"] if isinstance(item, dict) else item
        np.testing.assert_array_equal(answer["twice"], 2 * x)


def test_stream_raises_the_refused_items_error_with_its_index(client):
    answered = []
    with pytest.raises(InvalidRequestError) as info:
        for answer in client.stream("double", [X[:1], X[1:2], np.zeros((1, 4)), X[:1]]):
            answered.append(answer)
    assert len(answered) == 2
    assert info.value.index == 2 and info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(ServerBusyError) as busy:
        list(client.stream("busy", [{"x": X}]))
    assert busy.value.index == 0


def test_tritons_extensions_and_the_repository_api(fake):
    with Client(fake.address, admin_token=ADMIN_TOKEN) as c:
        assert c.model_config("double") == {"name": "double", "platform": "fake",
                                             "max_batch_size": 64}
        stats = c.statistics()
        assert [s["name"] for s in stats] == ["double", "typed"]
        c.load_model("double", config={"max_batch_size": 8})
        c.unload_model("double")
        with pytest.raises(ModelNotFoundError):
            c.load_model("nope")
    assert fake.inference.repository[-2:] == [("load", '{"max_batch_size": 8}'),
                                              ("unload", "double")]


def test_the_batchnorm_monitor_calls(fake):
    with Client(fake.address, admin_token=ADMIN_TOKEN) as c:
        c.infer("double", {"x": X})
        report = c.drift_report("double", include_channels=True)
        assert (report.model, report.version, report.alarm) == ("double", "1", True)
        assert report.worst_layer is not None and report.worst_layer.name == "stem.1"
        np.testing.assert_array_equal(report.layers[0].live_mean, [0.5, 0.5, 0.5])
        assert report.layers[0].reference_var is None  # not sent
        assert report.history[0].layer_scores == (0.25,)
        captured = c.captured_inputs("double", max_rows=2)
        np.testing.assert_array_equal(captured["x"], X[1:])
        assert c.recalibrate("double", prior_strength=0.5).message == "prior_strength 0.5"
        done = c.recalibrate("double", version=1)
        assert (done.new_version, done.serving, done.message) == ("2", True, "default prior")
        with pytest.raises(ValueError):
            c.captured_inputs("double", max_rows=-1)


async def test_the_async_client(fake):
    async with AsyncClient([fake.address, UNUSED_ADDRESS], timeout=10) as c:
        assert await c.is_live() and await c.is_ready() and await c.is_model_ready("double")
        assert (await c.metadata("double")).inputs[0].name == "x"
        answers = await asyncio.gather(*(c.predict("double", X[i : i + 1]) for i in range(3)))
        np.testing.assert_array_equal(np.concatenate(answers), 2 * X)
        np.testing.assert_array_equal((await c.infer("typed", {"x": X}))["total"], [6, 6, 4])
        assert (await c.classify("double", X[:1]))[0][0] == ClassScore(2, 6.0, "c")
        with pytest.raises(ModelNotFoundError):
            await c.predict("nope", X)
        with pytest.raises(DeadlineExceededError):
            await c.infer("slow", {"x": X}, timeout=0.3)
    async with AsyncClient(fake.address, timeout=10) as c:  # a stream does not fail over

        async def items():
            for i in range(3):
                yield X[i : i + 1]

        streamed = [answer["twice"] async for answer in c.stream("double", items())]
        np.testing.assert_array_equal(np.concatenate(streamed), 2 * X)
        with pytest.raises(InvalidRequestError) as info:
            async for _ in c.stream("double", [X[:1], np.zeros((1, 2))]):
                pass
        assert info.value.index == 1
    async with AsyncClient(UNUSED_ADDRESS, timeout=2) as dead:
        assert not await dead.is_ready()


# -- the command line, as the base install's user meets it ------------------------------------

def bnserve(*args: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("bnserve")  # this environment's console script
    command = [str(script)] if script.exists() else [sys.executable, "-m", "bnserve.cli"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=60)


def test_the_command_line_help_health_and_predict(fake, tmp_path):
    assert bnserve("--help").returncode == 0
    health = bnserve("health", "--address", fake.address, "--model", "double")
    assert (health.returncode, health.stdout.strip()) == (0, "ready")
    down = bnserve("health", "--address", UNUSED_ADDRESS, "--timeout", "1")
    assert down.returncode == 1 and "Traceback" not in down.stderr
    np.save(tmp_path / "x.npy", X)
    predict = bnserve("predict", "--model", "double", "--input", str(tmp_path / "x.npy"),
                      "--address", fake.address)
    assert predict.returncode == 0, predict.stderr
    assert predict.stdout.splitlines()[0] == "row 0: c 6.0000"
    assert predict.stdout.splitlines()[-1] == "argmax per row: [2, 0, 2]"
