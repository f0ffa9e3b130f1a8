"""Which served batches the drift monitor and the input capture see.

    ServedModel._run, after the runtime call --> BatchSampler.offer(feeds)
        not sampled (1 - sample_rate of batches): one random draw, nothing else
        sampled: up to rows_per_sample contiguous rows from a random offset, copied (the
                 batch itself is freed as usual)
            --> InputCapture.add(rows)    when --capture-rows is set
            --> DriftMonitor.offer(rows)  when the version has a monitor

Both see the same rows: the capture holds the population the drift window was measured on,
which is what a recalibration after an alarm wants. The draw is per batch, not per row, so
that an unsampled batch costs one call to ``random()``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from bnserve.server.capture import InputCapture
from bnserve.server.drift import DriftMonitor


class BatchSampler:
    def __init__(self, sample_rate: float, rows_per_sample: int, *,
                 monitor: DriftMonitor | None = None, capture: InputCapture | None = None,
                 batched: bool = True, seed: int | None = None) -> None:
        if not 0 < sample_rate <= 1:
            raise ValueError("sample_rate must lie in (0, 1]")
        if rows_per_sample < 1:
            raise ValueError("rows_per_sample must be at least 1")
        self.sample_rate = sample_rate
        self.rows_per_sample = rows_per_sample
        self.monitor = monitor
        self.capture = capture
        self._batched = batched  # False: the graph has no batch axis; a sample is the whole run
        self._random = random.Random(seed)
        self.sampled_batches = 0  # batches drawn (measured or not)

    def offer(self, feeds: Mapping[str, np.ndarray]) -> None:
        """Called with every batch's runtime inputs once its run has succeeded."""
        if self._random.random() >= self.sample_rate:
            return
        self.sampled_batches += 1
        # A probe still running (or the CPU budget spent) drops the sample: find out before
        # copying rows nobody would read.
        measure = self.monitor is not None and self.monitor.would_accept(count_drop=True)
        if self.capture is None and not measure:
            return
        rows = self._rows(feeds)
        if self.capture is not None:
            self.capture.add(rows)
        if measure:
            self.monitor.offer(rows)

    def _rows(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self._batched:
            return {name: array.copy() for name, array in feeds.items()}
        total = next(iter(feeds.values())).shape[0]
        start = self._random.randrange(max(total - self.rows_per_sample, 0) + 1)
        stop = start + min(self.rows_per_sample, total)
        return {name: array[start:stop].copy() for name, array in feeds.items()}


@dataclass(frozen=True)
class Monitoring:
    """What watches one version's traffic; the loader builds it, ServedModel holds it."""

    sampler: BatchSampler | None = None  # None: nothing is sampled
    drift_problem: str = ""  # why the version has no drift monitor ("" when it has one)

    @property
    def monitor(self) -> DriftMonitor | None:
        return self.sampler.monitor if self.sampler is not None else None

    @property
    def capture(self) -> InputCapture | None:
        return self.sampler.capture if self.sampler is not None else None

    def close(self) -> None:
        """The version stops serving: no more probes, captured rows dropped."""
        if self.monitor is not None:
            self.monitor.close()
        if self.capture is not None:
            self.capture.clear()
