"""The drift monitor of one served version: sampled rows in, per-layer drift out.

    ServedModel._run --after the runtime call--> BatchSampler (bnserve.server.sampling)
        --a sampled share of batches, a few rows each--> DriftMonitor.offer(rows)
            dropped (never queued) while a probe runs or while the probe's CPU budget is
            spent: serving never waits for the monitor
        --its one worker thread--> reference.measure: the statistics graph, per-row
            moments of each BatchNorm layer's input (bnserve.server.drift_reference)
        --> sliding window of the last ``window_rows`` sampled rows, per layer and channel
        --> layer_drift / model_score (bnserve.repository.drift), alarm, history
    DriftMonitor.report() --> DriftReport: plain data, which the servicer encodes

The alarm waits for a full window: the threshold was calibrated on windows of exactly
``window_rows`` rows, and a smaller window scores higher on clean data by chance. It is
raised when the model's score goes above the threshold and cleared when the window (which
slides) scores below ``CLEAR_FRACTION`` of it: a score hovering at the threshold must not
raise and clear the alarm probe after probe.

The CPU budget: a probe that used t seconds of CPU lets the next one start only t / budget
seconds after it began, so the probes take at most ``probe_budget`` of one core, whatever
the batch sizes and the traffic (a probe of one row costs about twice the served run of that
row). CPU time, not wall time: a probe preempted by the serving threads it shares the
cores with would otherwise count their work as its own and starve the window.
Plain Python and numpy; the tests drive it with a fake reference and no gRPC.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from bnserve.repository.batchnorm import BatchNormLayer, RowMoments
from bnserve.repository.drift import MEASURE, LayerDrift, layer_drift, model_score

log = logging.getLogger(__name__)

CALIBRATED = "calibrated at export"
# A recalibrated version: on its recalibration rows, with its reference's own noise.
RECALIBRATED = "calibrated at recalibration"
DEFAULT = "default"
CLEAR_FRACTION = 0.8
MAX_WINDOW_BYTES = 256 * 1024 * 1024  # per-row sums of one window: rows x channels x 24 B


class Reference(Protocol):
    """What the monitor needs of a reference (``drift_reference.DriftReference``)."""

    layers: tuple[BatchNormLayer, ...]

    def measure(self, feeds: Mapping[str, np.ndarray]) -> list[RowMoments]: ...


@dataclass(frozen=True)
class MonitorPolicy:
    window_rows: int
    threshold: float
    threshold_source: str  # CALIBRATED or DEFAULT
    sample_rate: float  # share of batches sampled (the sampler draws; the report says it)
    probe_budget: float = 0.01  # most of one core's time the probes may take, in (0, 1]
    history_points: int = 360
    history_interval_s: float = 10.0  # one history point per interval at most (0: every probe)


@dataclass(frozen=True)
class LayerReport:
    name: str
    input: str
    channels: int
    score: float
    mean_shift: float
    std_ratio: float
    reference_mean: np.ndarray  # (C,)
    reference_var: np.ndarray
    live_mean: np.ndarray | None  # (C,); None before the window has 2 values per channel
    live_var: np.ndarray | None


@dataclass(frozen=True)
class HistoryPoint:
    seconds_ago: float
    score: float
    layer_scores: tuple[float, ...]


@dataclass(frozen=True)
class DriftReport:
    measure: str
    score: float
    threshold: float
    threshold_source: str
    alarm: bool
    alarm_since: float  # Unix time the alarm was raised; 0.0 when there is none
    window_rows: int
    rows_in_window: int
    sampled_batches: int  # batches measured
    sampled_rows: int
    dropped_samples: int  # sampled batches not measured (probe busy or budget spent)
    probe_errors: int
    sample_rate: float
    layers: tuple[LayerReport, ...]
    history: tuple[HistoryPoint, ...]  # oldest first
    message: str


@dataclass(frozen=True)
class _Scored:
    drifts: tuple[LayerDrift, ...]
    score: float
    at: float  # monotonic


class _Window:
    """The last ``rows`` rows' per-channel sums, sums of squares and value counts of one
    layer: a ring, so that adding a probe costs its rows, not the window's."""

    def __init__(self, rows: int, channels: int) -> None:
        self.sum = np.zeros((rows, channels))
        self.sumsq = np.zeros((rows, channels))
        self.count = np.zeros(rows, dtype=np.int64)  # values per row and channel

    def write(self, slots: np.ndarray, moments: RowMoments, take: slice) -> None:
        self.sum[slots] = moments.sum[take]
        self.sumsq[slots] = moments.sumsq[take]
        self.count[slots] = moments.positions

    def totals(self, filled: int) -> RowMoments:
        # One pseudo-row holding every value: rows of different sizes (images of several
        # resolutions) still add up exactly.
        count = int(self.count[:filled].sum())
        return RowMoments(self.sum[:filled].sum(axis=0, keepdims=True),
                          self.sumsq[:filled].sum(axis=0, keepdims=True), count)


class DriftMonitor:
    def __init__(self, reference: Reference, policy: MonitorPolicy, *, label: str = "",
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time,
                 cpu_clock: Callable[[], float] = time.thread_time) -> None:
        if not 0 < policy.probe_budget <= 1:
            raise ValueError("probe_budget must lie in (0, 1]")
        channels = sum(layer.channels for layer in reference.layers)
        if policy.window_rows * channels * 24 > MAX_WINDOW_BYTES:
            raise ValueError(f"a window of {policy.window_rows} rows over {channels} channels "
                             f"needs more than {MAX_WINDOW_BYTES >> 20} MiB")
        self.reference = reference
        self.policy = policy
        self.label = label  # "model/version", for the log
        self._clock = clock
        self._wall_clock = wall_clock
        self._cpu_clock = cpu_clock  # the worker thread's CPU time (onnxruntime runs in it)
        self._windows = [_Window(policy.window_rows, layer.channels)
                         for layer in reference.layers]
        self._next_slot = 0
        self._filled = 0
        self._lock = threading.Lock()  # the window, the scores and the counters
        self._busy = threading.Lock()  # held from offer() until its probe has finished
        self._next_probe_at = -float("inf")
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"drift-{label}")
        self._closed = False
        self._scored: _Scored | None = None
        self._alarm_since = 0.0
        self._history: deque[tuple[float, float, tuple[float, ...]]] = deque(
            maxlen=policy.history_points)
        self._last_history_at = -float("inf")
        self.sampled_batches = 0
        self.sampled_rows = 0
        self.dropped_samples = 0
        self.probe_errors = 0
        self.probe_cpu_s = 0.0  # CPU seconds the probes took (what the monitor costs)

    # -- the serving side (executor threads) -------------------------------------------------

    def would_accept(self, *, count_drop: bool = False) -> bool:
        """Whether ``offer`` would measure a sample now (a cheap, lock-free look: ``offer``
        decides for real). ``count_drop``: count the sample as dropped when it would not."""
        if self._closed or self._clock() < self._next_probe_at or self._busy.locked():
            if count_drop:
                with self._lock:
                    self.dropped_samples += 1
            return False
        return True

    def offer(self, feeds: Mapping[str, np.ndarray]) -> bool:
        """Measure these rows in the background, or drop them (False) when a probe is
        running, the probes' CPU budget is spent, or the monitor is closed. Never blocks."""
        if self._closed or self._clock() < self._next_probe_at \
                or not self._busy.acquire(blocking=False):
            with self._lock:
                self.dropped_samples += 1
            return False
        try:
            self._worker.submit(self._probe, feeds)
        except RuntimeError:  # closed between the check and the submit
            self._busy.release()
            return False
        return True

    def _probe(self, feeds: Mapping[str, np.ndarray]) -> None:
        started, cpu_started = self._clock(), self._cpu_clock()
        try:
            moments = self.reference.measure(feeds)
            self._add(moments)
        except Exception:  # noqa: BLE001 - the monitor must never take serving down
            with self._lock:
                self.probe_errors += 1
                first = self.probe_errors == 1
            if first:  # once: a failing probe fails the same way every time
                log.exception("drift monitor %s: a probe failed (later failures are only "
                              "counted)", self.label)
        finally:
            used = self._cpu_clock() - cpu_started
            self.probe_cpu_s += used
            self._next_probe_at = started + used / self.policy.probe_budget
            self._busy.release()

    def _add(self, moments: Sequence[RowMoments]) -> None:
        rows = moments[0].rows
        window = self.policy.window_rows
        take = slice(max(rows - window, 0), rows)  # more rows than the window: the last ones
        kept = take.stop - take.start
        with self._lock:
            slots = (self._next_slot + np.arange(kept)) % window
            for ring, found in zip(self._windows, moments, strict=True):
                ring.write(slots, found, take)
            self._next_slot = int((self._next_slot + kept) % window)
            self._filled = min(self._filled + kept, window)
            self.sampled_batches += 1
            self.sampled_rows += rows
            self._score()

    def _score(self) -> None:
        """Scores of the current window, the alarm and the history (under the lock)."""
        if not self._windows or min(int(r.count[:self._filled].sum()) for r in self._windows) < 2:
            return  # a variance needs two values per channel
        drifts = tuple(layer_drift(layer, [ring.totals(self._filled)])
                       for layer, ring in zip(self.reference.layers, self._windows, strict=True))
        now = self._clock()
        score = model_score(drifts)
        self._scored = _Scored(drifts, score, now)
        full = self._filled >= self.policy.window_rows
        limit = self.policy.threshold * (CLEAR_FRACTION if self._alarm_since else 1.0)
        alarm = full and score > limit
        changed = alarm != bool(self._alarm_since)
        if alarm and not self._alarm_since:
            self._alarm_since = self._wall_clock()
            worst = max(drifts, key=lambda d: d.score)
            log.warning("drift monitor %s: ALARM: score %.4f above the threshold %.4f "
                        "(worst layer %s: %.4f)", self.label, score, self.policy.threshold,
                        worst.name, worst.score)
        elif not alarm and self._alarm_since:
            self._alarm_since = 0.0
            log.info("drift monitor %s: back below the threshold (score %.4f)", self.label,
                     score)
        # A point per interval, and one whenever the alarm turns on or off (so that a plot
        # shows the rise even between two interval points).
        if changed or now - self._last_history_at >= self.policy.history_interval_s:
            self._last_history_at = now
            self._history.append((now, score, tuple(d.score for d in drifts)))

    # -- the reading side ----------------------------------------------------------------------

    @property
    def alarm(self) -> bool:
        return bool(self._alarm_since)

    @property
    def alarm_since(self) -> float:
        """Unix time the alarm was raised; 0.0 when there is none."""
        return self._alarm_since

    @property
    def score(self) -> float:
        scored = self._scored
        return scored.score if scored is not None else 0.0

    def layer_scores(self) -> list[tuple[str, float]]:
        scored = self._scored
        if scored is None:
            return [(layer.name, 0.0) for layer in self.reference.layers]
        return [(d.name, d.score) for d in scored.drifts]

    def report(self) -> DriftReport:
        with self._lock:
            scored, filled = self._scored, self._filled
            history = list(self._history)
            counters = (self.sampled_batches, self.sampled_rows, self.dropped_samples,
                        self.probe_errors)
            alarm_since = self._alarm_since
        now = self._clock()
        layers = []
        for index, layer in enumerate(self.reference.layers):
            drift = scored.drifts[index] if scored is not None else None
            layers.append(LayerReport(
                name=layer.name, input=layer.input, channels=layer.channels,
                score=drift.score if drift else 0.0,
                mean_shift=drift.mean_shift if drift else 0.0,
                std_ratio=drift.std_ratio if drift else 0.0,
                reference_mean=layer.mean, reference_var=layer.var,
                live_mean=drift.live_mean if drift else None,
                live_var=drift.live_var if drift else None))
        window = self.policy.window_rows
        messages = []
        if filled < window:
            messages.append(f"warming up: {filled} of {window} rows in the window (the alarm "
                            "waits for a full window)")
        if counters[3]:
            messages.append(f"{counters[3]} probe(s) failed (see the server log)")
        if self._closed:
            messages.append("the version is unloading: the monitor has stopped")
        return DriftReport(
            measure=MEASURE, score=scored.score if scored else 0.0,
            threshold=self.policy.threshold, threshold_source=self.policy.threshold_source,
            alarm=bool(alarm_since), alarm_since=alarm_since, window_rows=window,
            rows_in_window=filled, sampled_batches=counters[0], sampled_rows=counters[1],
            dropped_samples=counters[2], probe_errors=counters[3],
            sample_rate=self.policy.sample_rate, layers=tuple(layers),
            history=tuple(HistoryPoint(now - at, score, scores) for at, score, scores in history),
            message="; ".join(messages))

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Until no probe runs (tests; a recalibration that wants a settled window)."""
        if self._busy.acquire(timeout=timeout):
            self._busy.release()
            return True
        return False

    def close(self) -> None:
        """No more probes; one still running finishes in its thread, which nothing waits for."""
        self._closed = True
        self._worker.shutdown(wait=False, cancel_futures=True)
