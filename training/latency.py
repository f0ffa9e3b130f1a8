"""What BatchNorm costs at inference, measured: onnxruntime latency of exported variants.

    measure_latency({"folded": a.onnx, "unfolded": b.onnx, "no_bn": c.onnx}, samples)
      -> {"folded": {"ort_optimized": {"1": ms, "32": ms}, "ort_disabled": {...}}, ...}

Each figure is the median wall time of ``runs`` calls of ``session.run`` on one batch,
after ``warmup`` calls, with one intra-op thread (stable numbers on a shared machine). Two
onnxruntime settings are timed: ``ort_optimized`` (ORT_ENABLE_ALL, what the server uses:
onnxruntime fuses a Conv + BatchNormalization pair itself at load time) and
``ort_disabled`` (ORT_DISABLE_ALL: the graph runs as written, so an unfolded BatchNorm
costs its own pass over the activations).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

BATCH_SIZES = (1, 32)
RUNS = 200
WARMUP = 20
LEVELS = {"ort_optimized": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
          "ort_disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}


def _session(path: Path, level: ort.GraphOptimizationLevel) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = level
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def median_latency_ms(session: ort.InferenceSession, batch: np.ndarray, *, runs: int = RUNS,
                      warmup: int = WARMUP) -> float:
    """Median milliseconds of ``session.run`` on ``batch`` over ``runs`` timed calls."""
    feed = {session.get_inputs()[0].name: batch}
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def measure_latency(graphs: Mapping[str, Path], samples: np.ndarray, *,
                    batch_sizes: Sequence[int] = BATCH_SIZES, runs: int = RUNS,
                    warmup: int = WARMUP) -> dict[str, Any]:
    """Latency of every graph at every batch size under both onnxruntime settings.

    ``samples`` (N, *sample_shape) are repeated or cut to each batch size; all graphs get
    the same batches. Returns variant -> setting -> str(batch size) -> milliseconds, plus
    the measuring conditions under ``"settings"``.
    """
    batches = {b: samples[np.arange(b) % len(samples)] for b in batch_sizes}
    figures: dict[str, Any] = {}
    for variant, path in graphs.items():
        figures[variant] = {
            setting: {str(b): round(median_latency_ms(_session(Path(path), level), batch,
                                                      runs=runs, warmup=warmup), 4)
                      for b, batch in batches.items()}
            for setting, level in LEVELS.items()
        }
    figures["settings"] = {"statistic": "median", "unit": "ms", "runs": runs, "warmup": warmup,
                           "intra_op_threads": 1, "onnxruntime_version": ort.__version__}
    return figures


def format_latency_table(latency: Mapping[str, Any]) -> str:
    """The figures as a small fixed-width table, one row per variant."""
    variants = [v for v, f in latency.items() if isinstance(f, dict) and "ort_optimized" in f]
    sizes = list(latency[variants[0]]["ort_optimized"])
    header = "  ".join(f"{f'{s} batch {b}':>22}" for s in LEVELS for b in sizes)
    lines = [f"{'variant':<10}{header}"]
    for variant in variants:
        cells = "  ".join(f"{latency[variant][s][b]:>19.3f} ms" for s in LEVELS for b in sizes)
        lines.append(f"{variant:<10}{cells}")
    settings = latency["settings"]
    lines.append(f"(median of {settings['runs']} runs after {settings['warmup']} warm-up, "
                 f"{settings['intra_op_threads']} intra-op thread, onnxruntime "
                 f"{settings['onnxruntime_version']})")
    return "\n".join(lines)
