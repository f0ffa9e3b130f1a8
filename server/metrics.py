"""Prometheus metrics of the server (exposed over HTTP when ``metrics_port`` is set)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from bnserve.server.batcher import BatchRecord

REQUESTS = Counter(
    "bnserve_infer_requests_total", "ModelInfer calls by model and gRPC status", ["model", "code"]
)
REJECTED = Counter(
    "bnserve_rejected_calls_total",
    "Calls refused before any model saw them, by RPC method and reason (malformed, "
    "unauthenticated, permission_denied)",
    ["method", "reason"],
)
BATCH_ROWS = Histogram(
    "bnserve_batch_rows",
    "Rows per onnxruntime run",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
BATCH_REQUESTS = Histogram(
    "bnserve_batch_requests",
    "Requests merged into one onnxruntime run",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
QUEUE_WAIT = Histogram(
    "bnserve_queue_wait_seconds", "Longest queue wait in a batch", ["model"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5),
)
RUN_TIME = Histogram(
    "bnserve_run_seconds", "onnxruntime run time per batch", ["model"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0),
)


class _Children:
    """Each label set's child metric, looked up once: ``labels()`` validates and hashes
    its arguments under a lock, a cost every request and every run would pay again.
    Bounded like the family's own series, which are never removed either (model names an
    operator serves, fixed codes)."""

    def __init__(self, family) -> None:
        self._family = family
        self._children: dict[tuple[str, ...], object] = {}

    def __call__(self, *labels: str):
        child = self._children.get(labels)
        if child is None:
            child = self._children[labels] = self._family.labels(*labels)
        return child


_REQUESTS = _Children(REQUESTS)
_BATCH = tuple(_Children(family) for family in (BATCH_ROWS, BATCH_REQUESTS, QUEUE_WAIT,
                                                RUN_TIME))


def observe_batch(model: str, record: BatchRecord) -> None:
    rows, requests, queue_wait, run_time = (children(model) for children in _BATCH)
    rows.observe(record.rows)
    requests.observe(record.requests)
    queue_wait.observe(record.queue_wait_s)
    run_time.observe(record.run_s)


def count_request(model: str, code: str) -> None:
    _REQUESTS(model, code).inc()


def count_rejected(method: str, reason: str) -> None:
    """``method``: the RPC's short name (ModelInfer); ``reason``: a fixed word, never client text."""
    REJECTED.labels(method, reason).inc()


# A layer label per BatchNorm layer: bounded by the models an operator serves, and again
# here (the model's score covers every layer; ResNet-152 has 155).
MAX_LAYER_SERIES = 256


class _ModelGauges:
    """In-flight requests and queue depth per model version, and each drift monitor's
    scores, alarm and sampling counts, read from the models when Prometheus scrapes (the
    batchers and monitors keep the figures; the request path pays nothing)."""

    def __init__(self) -> None:
        self.sources: list[Callable[[], Iterable[Any]]] = []

    def collect(self):
        in_flight = GaugeMetricFamily(
            "bnserve_inflight_requests",
            "Requests a model version has taken and not yet answered (decoding, queued, "
            "running)", labels=["model", "version"])
        depth = GaugeMetricFamily(
            "bnserve_queue_depth", "Requests waiting for a run of a model version",
            labels=["model", "version"])
        models = [model for source in list(self.sources) for model in _snapshot(source)]
        for model in models:
            in_flight.add_metric([model.name, model.version], model.batcher.in_flight)
            depth.add_metric([model.name, model.version], model.batcher.queued)
        yield in_flight
        yield depth
        yield from _drift_families(models)


def _drift_families(models: list[Any]):
    labels = ["model", "version"]
    layer = GaugeMetricFamily(
        "bnserve_bn_drift", "Drift of the activations entering a BatchNorm layer: mean over "
        "channels of KL(live || reference) over the monitor's window, nats",
        labels=[*labels, "layer"])
    score = GaugeMetricFamily("bnserve_bn_drift_score", "A model version's drift score: the "
                              "mean of its BatchNorm layers' drift", labels=labels)
    threshold = GaugeMetricFamily("bnserve_bn_drift_threshold", "The drift score above which "
                                  "the monitor raises its alarm", labels=labels)
    alarm = GaugeMetricFamily("bnserve_bn_drift_alarm", "1 while the drift score of a full "
                              "window is above the threshold", labels=labels)
    batches = CounterMetricFamily("bnserve_bn_drift_sampled_batches", "Batches the drift "
                                  "monitor measured", labels=labels)
    rows = CounterMetricFamily("bnserve_bn_drift_sampled_rows", "Rows the drift monitor "
                               "measured", labels=labels)
    dropped = CounterMetricFamily("bnserve_bn_drift_dropped_samples", "Sampled batches the "
                                  "monitor dropped (a probe was running or its CPU budget "
                                  "was spent)", labels=labels)
    cpu = CounterMetricFamily("bnserve_bn_drift_probe_cpu_seconds", "CPU time the drift "
                              "probes took (the monitor's cost)", labels=labels)
    for model in models:
        monitor = model.monitoring.monitor
        if monitor is None:
            continue
        key = [model.name, model.version]
        for name, value in monitor.layer_scores()[:MAX_LAYER_SERIES]:
            layer.add_metric([*key, name], value)
        score.add_metric(key, monitor.score)
        threshold.add_metric(key, monitor.policy.threshold)
        alarm.add_metric(key, 1.0 if monitor.alarm else 0.0)
        batches.add_metric(key, monitor.sampled_batches)
        rows.add_metric(key, monitor.sampled_rows)
        dropped.add_metric(key, monitor.dropped_samples)
        cpu.add_metric(key, monitor.probe_cpu_s)
    yield from (layer, score, threshold, alarm, batches, rows, dropped, cpu)


def _snapshot(source: Callable[[], Iterable[Any]]) -> list[Any]:
    # The scrape runs in the HTTP server's thread while the event loop may change the
    # registry: a read that races a change is simply taken again.
    for _ in range(3):
        try:
            return list(source())
        except RuntimeError:
            continue
    return []


MODEL_GAUGES = _ModelGauges()
REGISTRY.register(MODEL_GAUGES)


def watch_models(source: Callable[[], Iterable[Any]]) -> Callable[[], None]:
    """Report the models ``source`` returns in the gauges; call the result to stop."""
    MODEL_GAUGES.sources.append(source)

    def unwatch() -> None:
        if source in MODEL_GAUGES.sources:
            MODEL_GAUGES.sources.remove(source)

    return unwatch
