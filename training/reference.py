"""What export writes for the drift monitor and recalibration: the BatchNorm reference.

    unfolded graph (BatchNormalization nodes kept)  --> REPOSITORY/NAME/<v>/unfolded.onnx
      --batchnorm_layers--> the card's batchnorm.layers: name, node, input tensor, channels
      --statistics graph on clean held-out rows (onnxruntime)
      --calibrate_threshold--> the card's drift: the score clean windows of window_rows rows
                               exceed with probability false_alarm_rate

The running statistics themselves stay in the graph (one source of truth); the card only
names the layers, so a person reads what the monitor will report without opening it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from bnserve.repository.batchnorm import (
    RowMoments,
    batchnorm_layers,
    row_moments,
    statistics_graph,
    unshare_statistics,
)
from bnserve.repository.drift import (
    DEFAULT_FALSE_ALARM_RATE,
    DEFAULT_WINDOW_ROWS,
    calibrate_threshold,
)

logger = logging.getLogger(__name__)

CHUNK_ROWS = 256  # rows per onnxruntime run while measuring the held-out data


def layer_table(unfolded: Path) -> list[dict[str, Any]]:
    """The card's ``batchnorm.layers``: what the monitor will report, layer by layer."""
    return [{"name": layer.name, "node": layer.node, "input": layer.input,
             "channels": layer.channels}
            for layer in batchnorm_layers(onnx.load(str(unfolded)))]


def measure_rows(unfolded: Path, feeds: dict[str, np.ndarray]) -> list[RowMoments]:
    """Per-row moments of every BatchNorm layer's input over ``feeds`` (N rows each)."""
    import onnxruntime as ort

    model = unshare_statistics(onnx.load(str(unfolded)))
    layers = batchnorm_layers(model)
    session = ort.InferenceSession(statistics_graph(model, layers).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    rows = len(next(iter(feeds.values())))
    parts = []
    for start in range(0, rows, CHUNK_ROWS):
        out = session.run(names, {k: v[start:start + CHUNK_ROWS] for k, v in feeds.items()})
        parts.append(row_moments(dict(zip(names, out, strict=True)), layers))
    return [RowMoments(np.concatenate([p[k].sum for p in parts]),
                       np.concatenate([p[k].sumsq for p in parts]), parts[0][k].positions)
            for k in range(len(layers))]


def calibrate_drift(unfolded: Path, feeds: dict[str, np.ndarray], *,
                    window_rows: int = DEFAULT_WINDOW_ROWS,
                    false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE) -> dict[str, Any] | None:
    """The card's ``drift`` section from clean held-out inputs, or None when there are fewer
    rows than one window (a threshold from fewer would mostly measure those few rows)."""
    rows = len(next(iter(feeds.values())))
    if rows < window_rows:
        logger.warning("only %d held-out rows (a window is %d): no drift threshold calibrated; "
                       "the server will use its default", rows, window_rows)
        return None
    layers = batchnorm_layers(unshare_statistics(onnx.load(str(unfolded))))
    if not layers:
        return None
    calibration = calibrate_threshold(layers, measure_rows(unfolded, feeds),
                                      window_rows=window_rows, false_alarm_rate=false_alarm_rate)
    return calibration.to_dict()
