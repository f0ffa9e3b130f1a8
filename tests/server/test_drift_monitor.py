"""The drift monitor, the batch sampler and the input capture as plain Python: no gRPC, no
onnxruntime (a fake reference computes the per-row moments with numpy)."""

from __future__ import annotations

import logging
import threading

import numpy as np
import pytest

from bnserve.repository.batchnorm import BatchNormLayer, RowMoments
from bnserve.server.capture import InputCapture
from bnserve.server.drift import DEFAULT, DriftMonitor, MonitorPolicy
from bnserve.server.sampling import BatchSampler

CHANNELS, POSITIONS, WINDOW = 4, 8, 64
THRESHOLD = 0.05


def layer(index: int = 0) -> BatchNormLayer:
    ones = np.ones(CHANNELS)
    return BatchNormLayer(index=index, name=f"bn{index}", node="", input="x", mean_name="m",
                          var_name="v", epsilon=1e-5, mean=np.zeros(CHANNELS), var=ones,
                          scale=ones, bias=np.zeros(CHANNELS))


class FakeReference:
    """x (N, C, P) is what enters each layer; ``gate`` holds a probe open."""

    def __init__(self, layers: int = 2) -> None:
        self.layers = tuple(layer(i) for i in range(layers))
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self.fail = False
        self.probes = 0

    def measure(self, feeds):
        self.probes += 1
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(10)
        if self.fail:
            raise RuntimeError("the statistics graph broke")
        x = feeds["x"].astype(np.float64)
        moments = RowMoments(x.sum(axis=2), (x * x).sum(axis=2), x.shape[2])
        return [moments for _ in self.layers]


def policy(**changes) -> MonitorPolicy:
    base = dict(window_rows=WINDOW, threshold=THRESHOLD, threshold_source=DEFAULT,
                sample_rate=1.0, probe_budget=1.0, history_points=100, history_interval_s=0.0)
    return MonitorPolicy(**{**base, **changes})


def rows(n: int, shift: float = 0.0, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": (rng.normal(size=(n, CHANNELS, POSITIONS)) + shift).astype(np.float32)}


def feed(monitor: DriftMonitor, batches: int, shift: float = 0.0, size: int = 16,
         seed: int = 0) -> None:
    for index in range(batches):
        assert monitor.offer(rows(size, shift, seed=seed * 1000 + index))
        assert monitor.wait_idle()


def test_clean_traffic_stays_below_the_threshold():
    monitor = DriftMonitor(FakeReference(), policy())
    feed(monitor, 8)
    report = monitor.report()
    assert report.rows_in_window == WINDOW and report.sampled_batches == 8
    assert report.sampled_rows == 128
    assert report.score < THRESHOLD / 5 and not report.alarm and report.alarm_since == 0
    assert [lay.name for lay in report.layers] == ["bn0", "bn1"]
    assert report.layers[0].std_ratio == pytest.approx(1.0, abs=0.1)
    assert report.message == ""


def test_a_shifted_stream_raises_the_alarm_and_clean_traffic_clears_it(caplog):
    monitor = DriftMonitor(FakeReference(), policy(), label="m/1")
    feed(monitor, 4)
    with caplog.at_level(logging.WARNING, logger="bnserve.server.drift"):
        feed(monitor, 4, shift=1.0, seed=1)  # one standard deviation in every channel
    report = monitor.report()
    assert report.alarm and report.alarm_since > 0
    assert report.score == pytest.approx(0.5, rel=0.2)  # KL of a 1-sd shift: 1/2
    assert report.layers[0].mean_shift == pytest.approx(1.0, rel=0.2)
    assert "ALARM" in caplog.text and "m/1" in caplog.text
    # The window slides: a window's worth of clean rows brings it back.
    feed(monitor, 4, seed=2)
    report = monitor.report()
    assert not report.alarm and report.alarm_since == 0 and report.score < THRESHOLD
    # The history has one point per probe (interval 0), oldest first.
    scores = [p.score for p in report.history]
    assert len(scores) == 12 and max(scores) > THRESHOLD > scores[-1]
    assert report.history[0].seconds_ago >= report.history[-1].seconds_ago


def test_the_alarm_waits_for_a_full_window():
    monitor = DriftMonitor(FakeReference(), policy())
    feed(monitor, 2, shift=3.0)
    report = monitor.report()
    assert report.score > THRESHOLD and not report.alarm
    assert report.rows_in_window == 32 and report.message.startswith("warming up: 32 of 64")


def test_a_busy_probe_drops_the_sample_instead_of_queueing_it():
    reference = FakeReference()
    reference.gate = threading.Event()
    monitor = DriftMonitor(reference, policy())
    assert monitor.offer(rows(8))
    assert reference.entered.wait(5)
    assert [monitor.offer(rows(8)) for _ in range(5)] == [False] * 5  # returns at once
    reference.gate.set()
    assert monitor.wait_idle()
    report = monitor.report()
    assert reference.probes == 1 and report.sampled_batches == 1 and report.dropped_samples == 5


def test_the_probe_budget_spaces_probes_out():
    now = [0.0]
    reference = FakeReference()
    real_measure = reference.measure

    def one_second_probe(feeds):
        now[0] += 1.0
        return real_measure(feeds)

    reference.measure = one_second_probe
    monitor = DriftMonitor(reference, policy(probe_budget=0.25), clock=lambda: now[0],
                           cpu_clock=lambda: now[0])
    assert monitor.offer(rows(4)) and monitor.wait_idle()  # used 1 s of CPU from t=0
    now[0] = 3.9
    assert not monitor.offer(rows(4))  # 1 s of probing buys 4 s: not before t=4
    now[0] = 4.0
    assert monitor.offer(rows(4)) and monitor.wait_idle()
    assert monitor.report().dropped_samples == 1


def test_a_failing_probe_is_logged_once_and_the_monitor_goes_on(caplog):
    reference = FakeReference()
    reference.fail = True
    monitor = DriftMonitor(reference, policy(), label="m/1")
    with caplog.at_level(logging.ERROR, logger="bnserve.server.drift"):
        feed(monitor, 3)
    assert caplog.text.count("a probe failed") == 1
    reference.fail = False
    feed(monitor, 1)
    report = monitor.report()
    assert report.sampled_batches == 1 and "3 probe(s) failed" in report.message


def test_a_closed_monitor_takes_no_more_samples():
    monitor = DriftMonitor(FakeReference(), policy())
    monitor.close()
    assert not monitor.offer(rows(4))


class Counting:
    def __init__(self) -> None:
        self.batches: list[int] = []

    def would_accept(self, *, count_drop: bool = False) -> bool:
        return True

    def offer(self, feeds) -> bool:
        self.batches.append(next(iter(feeds.values())).shape[0])
        return True


def test_the_sampler_honours_its_rate_and_row_limit():
    sink = Counting()
    sampler = BatchSampler(0.1, 5, monitor=sink, seed=0)  # type: ignore[arg-type]
    batch = {"x": np.arange(20 * 3, dtype=np.float32).reshape(20, 3)}
    for _ in range(5000):
        sampler.offer(batch)
    # Binomial(5000, 0.1): mean 500, sd 21.
    assert 400 < len(sink.batches) < 600 and sampler.sampled_batches == len(sink.batches)
    assert set(sink.batches) == {5}
    every = Counting()
    small = BatchSampler(1.0, 5, monitor=every, seed=0)  # type: ignore[arg-type]
    for size in (1, 3, 9):
        small.offer({"x": np.zeros((size, 3), np.float32)})
    assert every.batches == [1, 3, 5]


def test_sampled_rows_are_copies_of_contiguous_rows():
    capture = InputCapture(100)
    sampler = BatchSampler(1.0, 4, capture=capture, seed=3)
    batch = {"x": np.arange(10 * 2, dtype=np.float32).reshape(10, 2)}
    sampler.offer(batch)
    kept = capture.snapshot()["x"]
    first = int(kept[0, 0]) // 2
    np.testing.assert_array_equal(kept, batch["x"][first:first + 4])
    batch["x"][:] = -1  # the batch's memory is its own again
    assert (capture.snapshot()["x"] >= 0).all()


def test_the_capture_keeps_the_most_recent_rows_oldest_first():
    capture = InputCapture(5)
    for start in range(0, 12, 3):  # rows 0..11 in batches of 3
        capture.add({"x": np.arange(start, start + 3, dtype=np.int64)[:, None]})
    assert capture.rows == 5 and capture.rows_seen == 12
    np.testing.assert_array_equal(capture.snapshot()["x"][:, 0], [7, 8, 9, 10, 11])
    np.testing.assert_array_equal(capture.snapshot(2)["x"][:, 0], [10, 11])
    capture.add({"x": np.zeros((2, 4), np.int64)})  # another row shape: a new ring
    assert capture.rows == 2
    capture.clear()
    assert capture.rows == 0 and capture.snapshot() == {}


def test_a_sample_the_monitor_would_drop_is_not_copied():
    """While a probe runs, a sampled batch costs a look, not a copy of its rows."""

    class Busy(Counting):
        dropped = 0

        def would_accept(self, *, count_drop: bool = False) -> bool:
            self.dropped += count_drop
            return False

    busy = Busy()
    sampler = BatchSampler(1.0, 4, monitor=busy, seed=0)  # type: ignore[arg-type]
    sampler.offer({"x": np.zeros((8, 3), np.float32)})
    assert busy.batches == [] and busy.dropped == 1 and sampler.sampled_batches == 1
