"""Prometheus metrics of the server (exposed over HTTP when ``metrics_port`` is set)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from bnserve.server.batcher import BatchRecord

REQUESTS = Counter(
    "bnserve_infer_requests_total", "ModelInfer calls by model and gRPC status", ["model", "code"]
)
REJECTED = Counter(
    "bnserve_rejected_calls_total",
    "Calls refused before any model saw them, by RPC method and reason (malformed, "
    "unauthenticated, permission_denied, response_too_large, response_memory, ...)",
    ["method", "reason"],
)
IN_FLIGHT = Gauge("bnserve_inflight_requests", "Inference requests being answered", ["model"])
QUEUE_DEPTH = Gauge("bnserve_queue_depth", "Requests waiting in a model's queue", ["model"])
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
