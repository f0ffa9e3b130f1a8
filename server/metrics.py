"""Prometheus metrics of the server (exposed over HTTP when ``metrics_port`` is set)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

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


def observe_batch(model: str, record: BatchRecord) -> None:
    BATCH_ROWS.labels(model).observe(record.rows)
    BATCH_REQUESTS.labels(model).observe(record.requests)
    QUEUE_WAIT.labels(model).observe(record.queue_wait_s)
    RUN_TIME.labels(model).observe(record.run_s)


def count_request(model: str, code: str) -> None:
    REQUESTS.labels(model, code).inc()


def count_rejected(method: str, reason: str) -> None:
    """``method``: the RPC's short name (ModelInfer); ``reason``: a fixed word, never client text."""
    REJECTED.labels(method, reason).inc()


class _ModelGauges:
    """In-flight requests and queue depth per model version, read from the models when
    Prometheus scrapes (the batchers keep the counts; the request path pays nothing)."""

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
        for source in list(self.sources):
            for model in _snapshot(source):
                in_flight.add_metric([model.name, model.version], model.batcher.in_flight)
                depth.add_metric([model.name, model.version], model.batcher.queued)
        yield in_flight
        yield depth


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
