"""Per-version inference statistics with Triton's meanings (what ModelStatistics answers and
what ``perf_analyzer`` reads for its server-side breakdown).

- success / fail: requests, and their time in the server from arrival at the model to
  their answer (queue + compute);
- queue: time from arrival to the start of the run that took them;
- compute_input / compute_infer / compute_output: merging the batch, onnxruntime's run,
  splitting the answers; a request is charged its whole batch's durations (as Triton does);
- inference_count: rows answered; execution_count: onnxruntime runs;
- batch_stats: per batch size (rows of one run), runs and their compute durations.

Updated on the event loop only (the batcher and the model call it there), so no lock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += int(seconds * 1e9) * count


@dataclass
class BatchSizeStatistics:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass
class InferenceStatistics:
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0  # wall-clock milliseconds since the epoch; 0: never
    batches: dict[int, BatchSizeStatistics] = field(default_factory=dict)

    def record_request(self, *, ok: bool, seconds: float, rows: int) -> None:
        (self.success if ok else self.fail).add(seconds)
        if ok:
            self.inference_count += rows
        self.last_inference_ms = int(time.time() * 1000)  # a timestamp, not a duration

    def record_run(self, *, requests: int, rows: int, queue_waits: list[float],
                   input_s: float, infer_s: float, output_s: float) -> None:
        self.execution_count += 1
        for wait in queue_waits:
            self.queue.add(wait)
        self.compute_input.add(input_s, requests)
        self.compute_infer.add(infer_s, requests)
        self.compute_output.add(output_s, requests)
        size = self.batches.setdefault(rows, BatchSizeStatistics())
        size.compute_input.add(input_s)
        size.compute_infer.add(infer_s)
        size.compute_output.add(output_s)
