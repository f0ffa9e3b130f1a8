"""Checks a recalibrated version passes before it is published (nothing is written otherwise).

- before: the base's reference graph answers as its served graph (``check_reference_matches``);
- ``onnx.checker`` (full check, with shape inference) accepts the served graph and the
  reference graph;
- refolding left as many BatchNormalization nodes as the base's served graph has;
- parity: the served (refolded) graph answers the recalibration inputs as the unfolded
  graph with the new statistics does, within ``PARITY_ATOL + PARITY_RTOL * |unfolded|``;
- batch independence (``bnserve.server.independence``): rows of the data sent alone are
  answered as in one batch, as the loader will check again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from bnserve.repository.graph import batchnorm_nodes
from bnserve.server.errors import RecalibrationRefused
from bnserve.server.independence import PROBE_ROWS, check_batch_independence

# Folding rescales conv weights by gamma / sqrt(var + eps) in float32: the exporter's
# folded and unfolded digits graphs differ by ~2e-7 in probabilities. New statistics can
# shrink a variance (a scale change), so allow 500x that before calling it a wrong fold.
PARITY_ATOL = 1e-4
PARITY_RTOL = 1e-4
PARITY_ROWS = 256  # rows of the recalibration data compared; more only takes longer


@dataclass(frozen=True)
class Verification:
    checker_passed: bool
    served_batchnorm_nodes: int
    reference_batchnorm_nodes: int
    parity_rows: int  # 0: the served graph is the reference (nothing to compare)
    parity_max_abs_diff: float | None
    batch_independence_rows: int
    batch_independence_max_abs_diff: float

    def to_dict(self) -> dict[str, Any]:
        return {**vars(self), "parity_atol": PARITY_ATOL, "parity_rtol": PARITY_RTOL}


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def _runner(session: ort.InferenceSession):
    names = [o.name for o in session.get_outputs()]
    return lambda feeds: dict(zip(names, session.run(names, dict(feeds)), strict=True))


def check_reference_matches(served: onnx.ModelProto, reference: onnx.ModelProto,
                            inputs: Mapping[str, np.ndarray]) -> float:
    """Before anything is estimated: the base's reference graph answers the inputs as its
    served graph does (they are the same weights, folded or not). Returns the max |diff|."""
    feeds = {n: a[:PARITY_ROWS] for n, a in inputs.items()}
    got, want = _runner(_session(served))(feeds), _runner(_session(reference))(feeds)
    largest = 0.0
    for name, value in want.items():
        if value.dtype.kind != "f" or name not in got:
            continue
        diff = np.abs(got[name].astype(np.float64) - value)
        if (diff > PARITY_ATOL + PARITY_RTOL * np.abs(value)).any():
            raise RecalibrationRefused(f"the base's reference graph does not answer as its served "
                                       f"graph (output {name!r} differs by up to "
                                       f"{float(np.nanmax(diff)):.3g})")
        largest = max(largest, float(diff.max()))
    return largest


def verify_recalibrated(served: onnx.ModelProto, reference: onnx.ModelProto | None,
                        inputs: Mapping[str, np.ndarray], *, expected_batchnorm_nodes: int
                        ) -> Verification:
    """Run the module docstring's checks; ``RecalibrationRefused`` names the first that fails.

    ``reference``: the recalibrated unfolded graph when ``served`` is its refolded copy,
    None when the served graph is the unfolded one itself.
    """
    for graph, what in ((served, "served graph"), (reference, "unfolded graph")):
        if graph is None:
            continue
        try:
            onnx.checker.check_model(graph, full_check=True)
        except Exception:  # onnx raises several types; all mean the same here
            raise RecalibrationRefused(f"the recalibrated {what} fails onnx.checker") from None
    served_bn = len(batchnorm_nodes(served))
    reference_bn = len(batchnorm_nodes(reference if reference is not None else served))
    if served_bn != expected_batchnorm_nodes:
        raise RecalibrationRefused(f"refolding left {served_bn} BatchNormalization nodes; the "
                                   f"base's served graph has {expected_batchnorm_nodes}")
    run = _runner(_session(served))
    rows = len(next(iter(inputs.values())))
    parity_rows, parity = 0, None
    if reference is not None:
        parity_rows = min(rows, PARITY_ROWS)
        feeds = {n: a[:parity_rows] for n, a in inputs.items()}
        got, want = run(feeds), _runner(_session(reference))(feeds)
        parity = 0.0
        for name, value in want.items():
            if value.dtype.kind != "f":
                continue
            diff = np.abs(got[name].astype(np.float64) - value)
            if not np.isfinite(got[name]).all() or (
                    diff > PARITY_ATOL + PARITY_RTOL * np.abs(value)).any():
                raise RecalibrationRefused(
                    f"the refolded graph's output {name!r} differs from the unfolded graph's "
                    f"by up to {float(np.nanmax(diff)):.3g} (tolerance {PARITY_ATOL:g})")
            parity = max(parity, float(diff.max()))
    probe = {n: a[:PROBE_ROWS] for n, a in inputs.items()}
    independence = check_batch_independence(run, probe, batched=True)
    if not independence.independent:
        raise RecalibrationRefused(f"the recalibrated graph fails the batch-independence check: "
                                   f"{independence.reason}")
    return Verification(checker_passed=True, served_batchnorm_nodes=served_bn,
                        reference_batchnorm_nodes=reference_bn, parity_rows=parity_rows,
                        parity_max_abs_diff=parity,
                        batch_independence_rows=independence.rows,
                        batch_independence_max_abs_diff=independence.max_abs_diff)
