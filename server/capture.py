"""The input capture of one served version: the most recent sampled rows, in memory only.

Opt-in (``--capture-rows N``, 0 = off). A ring of the N most recent rows the sampler picked
(``bnserve.server.sampling``), per input, allocated on the first rows. A ring, not a
reservoir over everything since load: after an alarm, recalibration wants the distribution
traffic has now; a reservoir would keep pre-drift rows for ever. The sampler spreads the
rows over many batches (and so over time and clients), so a ring of sampled rows is not one
client's burst either.

Never written to disk; dropped with the version (``clear`` when it is unloaded); read only
through the admin-token-protected ``CapturedInputs``. Its memory is N rows of every input
(``row_bytes`` x N). Rows whose shape differs from the ring's (a graph with free non-batch
axes) start a new ring: a capture holds rows of one shape.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

import numpy as np


class InputCapture:
    def __init__(self, max_rows: int) -> None:
        if max_rows < 1:
            raise ValueError("max_rows must be at least 1")
        self.max_rows = max_rows
        self._lock = threading.Lock()  # several executor threads may add at once
        self._rings: dict[str, np.ndarray] = {}
        self._next = 0
        self._held = 0
        self.rows_seen = 0

    def add(self, rows: Mapping[str, np.ndarray]) -> None:
        count = next(iter(rows.values())).shape[0]
        if count == 0:
            return
        with self._lock:
            self.rows_seen += count
            if not self._fits(rows):
                self._rings = {name: np.empty((self.max_rows, *a.shape[1:]), dtype=a.dtype)
                               for name, a in rows.items()}
                self._next = self._held = 0
            keep = min(count, self.max_rows)
            slots = (self._next + np.arange(keep)) % self.max_rows
            for name, array in rows.items():
                self._rings[name][slots] = array[count - keep:]
            self._next = int((self._next + keep) % self.max_rows)
            self._held = min(self._held + keep, self.max_rows)

    def _fits(self, rows: Mapping[str, np.ndarray]) -> bool:
        return rows.keys() == self._rings.keys() and all(
            self._rings[n].shape[1:] == a.shape[1:] and self._rings[n].dtype == a.dtype
            for n, a in rows.items())

    @property
    def rows(self) -> int:
        return self._held

    def snapshot(self, max_rows: int | None = None) -> dict[str, np.ndarray]:
        """Copies of the most recent ``max_rows`` rows held (all when None), oldest first."""
        with self._lock:
            take = self._held if max_rows is None else min(max_rows, self._held)
            slots = (self._next - take + np.arange(take)) % self.max_rows
            return {name: ring[slots] for name, ring in self._rings.items()}

    def clear(self) -> None:
        with self._lock:
            self._rings = {}
            self._next = self._held = 0
