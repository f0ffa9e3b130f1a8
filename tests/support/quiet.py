"""Measuring latency from inside pytest's own process, which by then holds every object the
earlier tests made: a full garbage collection there takes tens of milliseconds and would
show up as the server's latency. ``no_collection_pauses`` moves what exists out of the
collector's reach (gc.freeze) for the duration of a measurement."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def no_collection_pauses() -> Iterator[None]:
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
