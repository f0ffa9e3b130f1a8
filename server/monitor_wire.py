"""Plain monitor data to ``bnserve.v1`` messages, every answer bounded by the send limit.

Pure functions: the servicer (``bnserve.server.monitor_servicer``) calls them with what the
monitor, the capture or a recalibration gave.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from bnserve.proto import monitor_pb2 as mpb
from bnserve.proto.tensors import datatype_of, encode_raw
from bnserve.server.drift import DriftReport
from bnserve.server.errors import ResponseTooLargeError

HEADROOM_BYTES = 64 * 1024  # names, counters and framing around the large fields
BYTES_PER_DOUBLE = 9  # a packed double, with room for the tags around it


def drift_report_response(name: str, version: str, report: DriftReport, *,
                          include_channels: bool, max_bytes: int) -> mpb.DriftReportResponse:
    """``max_bytes``: the send limit. Per-channel moments that cannot fit are refused
    (RESOURCE_EXHAUSTED, saying so); the history keeps its most recent points that fit."""
    budget = max_bytes - HEADROOM_BYTES - len(report.layers) * 256
    if include_channels:
        values = sum(4 * layer.channels for layer in report.layers)
        if values * BYTES_PER_DOUBLE > budget // 2:
            raise ResponseTooLargeError(
                f"include_channels: {values} per-channel values would not fit the server's "
                f"send limit of {max_bytes} bytes; ask without include_channels")
        budget -= values * BYTES_PER_DOUBLE
    keep = max(budget, 0) // (32 + len(report.layers) * BYTES_PER_DOUBLE)
    history = report.history[len(report.history) - keep:] if keep else ()
    response = mpb.DriftReportResponse(
        model_name=name, model_version=version, measure=report.measure, score=report.score,
        threshold=report.threshold, threshold_source=report.threshold_source,
        alarm=report.alarm, alarm_since=report.alarm_since, window_rows=report.window_rows,
        rows_in_window=report.rows_in_window, sampled_batches=report.sampled_batches,
        sampled_rows=report.sampled_rows, sample_rate=report.sample_rate,
        dropped_samples=report.dropped_samples, message=report.message)
    for layer in report.layers:
        out = response.layers.add(name=layer.name, input=layer.input, channels=layer.channels,
                                  score=layer.score, mean_shift=layer.mean_shift,
                                  std_ratio=layer.std_ratio)
        if include_channels:
            out.reference_mean.extend(layer.reference_mean.tolist())
            out.reference_var.extend(layer.reference_var.tolist())
            if layer.live_mean is not None and layer.live_var is not None:
                out.live_mean.extend(layer.live_mean.tolist())
                out.live_var.extend(layer.live_var.tolist())
    for point in history:
        response.history.add(seconds_ago=point.seconds_ago, score=point.score,
                             layer_scores=point.layer_scores)
    return response


def rows_that_fit(rows: Mapping[str, np.ndarray], max_bytes: int) -> int:
    """How many of the last (most recent) rows of ``rows`` fit in one answer of at most
    ``max_bytes``."""
    count = next(iter(rows.values())).shape[0] if rows else 0
    if count == 0:
        return 0
    per_row = np.zeros(count, dtype=np.int64)
    for array in rows.values():
        if array.dtype == object:  # BYTES: 4-byte length + UTF-8 per element
            lengths = np.vectorize(lambda v: 4 + len(v.encode("utf-8") if isinstance(v, str)
                                                     else bytes(v)), otypes=[np.int64])(array)
            per_row += lengths.reshape(count, -1).sum(axis=1)
        else:
            per_row += array[0].nbytes
    budget = max_bytes - HEADROOM_BYTES
    return int(np.searchsorted(np.cumsum(per_row[::-1]), budget, side="right"))


def captured_inputs_response(name: str, version: str, rows: Mapping[str, np.ndarray],
                             rows_seen: int) -> mpb.CapturedInputsResponse:
    count = next(iter(rows.values())).shape[0] if rows else 0
    response = mpb.CapturedInputsResponse(model_name=name, model_version=version, rows=count,
                                          rows_seen=rows_seen)
    for tensor, array in rows.items():
        response.inputs.add(name=tensor, datatype=datatype_of(array.dtype),
                            shape=list(array.shape), raw_contents=encode_raw(array))
    return response
