"""The unlabeled inputs of a recalibration, checked against the model before any work.

What a client sent must be what the model takes: every input by name and no other, the
model's dtype, its fixed axes, one batch axis of the same length everywhere, between
``MIN_ROWS`` and ``MAX_ROWS`` rows, finite floats, integers inside the card's ``range``
(token ids: onnxruntime would fail deep inside a Gather, or read another row). Messages
name the field and what was expected; they go to gRPC clients as they are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bnserve.proto.datatypes import BY_NAME
from bnserve.repository.card import ModelCard, TensorSignature
from bnserve.server.errors import RecalibrationDataError, quoted

MIN_ROWS = 2  # a variance needs two values
# Far past where the estimate has converged (a few hundred rows); bounds a request's time
# and memory: the statistics pass holds one chunk of activations, the inputs stay whole.
MAX_ROWS = 1 << 16


def check_inputs(declared: Sequence[TensorSignature], inputs: Mapping[str, Any],
                 card: ModelCard | None = None) -> dict[str, np.ndarray]:
    """``inputs`` as the model takes them, or ``RecalibrationDataError`` saying what does not fit."""
    if not isinstance(inputs, Mapping) or not inputs:
        raise RecalibrationDataError("inputs: expected a non-empty map from input name to array")
    wanted = [t.name for t in declared]
    missing = [n for n in wanted if n not in inputs]
    unknown = [n for n in inputs if n not in wanted]
    if missing or unknown:
        parts = []
        if missing:
            parts.append("missing " + ", ".join(quoted(n) for n in missing[:8]))
        if unknown:
            parts.append("unknown " + ", ".join(quoted(str(n)) for n in unknown[:8]))
        raise RecalibrationDataError(f"inputs: {'; '.join(parts)} (the model takes "
                                     f"{', '.join(quoted(n) for n in wanted[:8])})")
    ranges = {t.name: t.value_range for t in card.inputs} if card else {}
    checked: dict[str, np.ndarray] = {}
    rows = None
    for spec in declared:
        array = inputs[spec.name]
        field = f"inputs[{quoted(spec.name)}]"
        if not isinstance(array, np.ndarray):
            raise RecalibrationDataError(f"{field}: expected an array")
        dtype = BY_NAME[spec.datatype].dtype
        if array.dtype != dtype:
            raise RecalibrationDataError(f"{field}: dtype {array.dtype.name}, the model takes "
                                         f"{spec.datatype} ({dtype.name})")
        if not spec.shape or spec.shape[0] >= 0:
            raise RecalibrationDataError(f"{field}: the model gives this input no free batch "
                                         "axis; recalibration needs one")
        if array.ndim != len(spec.shape) or any(
                want >= 0 and got != want for want, got in zip(spec.shape[1:], array.shape[1:],
                                                                strict=True)):
            raise RecalibrationDataError(f"{field}: shape {list(array.shape)}, expected "
                                         f"{_expected_shape(spec.shape)}")
        if rows is None:
            rows = len(array)
        elif len(array) != rows:
            raise RecalibrationDataError(f"{field}: {len(array)} rows, other inputs have {rows}")
        if not MIN_ROWS <= len(array) <= MAX_ROWS:
            raise RecalibrationDataError(f"{field}: {len(array)} rows, expected {MIN_ROWS} to "
                                         f"{MAX_ROWS}")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise RecalibrationDataError(f"{field}: holds NaN or infinite values")
        value_range = ranges.get(spec.name)
        if value_range is not None and array.dtype.kind in "iu" and array.size and (
                array.min() < value_range[0] or array.max() > value_range[1]):
            raise RecalibrationDataError(f"{field}: values from {array.min()} to {array.max()}, "
                                         f"expected {value_range[0]} to {value_range[1]}")
        checked[spec.name] = np.ascontiguousarray(array)
    return checked


def _expected_shape(shape: Sequence[int]) -> str:
    return "[" + ", ".join("N" if i == 0 else ("any" if d < 0 else str(d))
                           for i, d in enumerate(shape)) + "]"
