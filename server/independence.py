"""Proof, at load, that a row's answer does not depend on the rows it is batched with.

Behind a dynamic batcher a batch is made of other clients' requests. BatchNorm in
training mode couples its rows (it normalizes with the batch's own mean and variance),
so does any operation over the batch axis (a ReduceMean over axis 0, say), and Dropout
with ``training_mode=True`` makes answers random. None of these can be seen for sure
from the graph alone, so the loader runs the model:

    probe batch of PROBE_ROWS rows --run twice--> bitwise equal?      (randomness)
                                   --each row alone--> equal to its row in the batch,
                                      within |a - b| <= ATOL + RTOL * |b| ? (coupling)

The probe inputs are valid inputs for the model: floats near the model card's input
statistics when it has them (standard normal otherwise), integers inside the card's
``range`` (0 or 1 without one), booleans, short UTF-8 strings. A free non-batch axis
takes its size from config.pbtxt's dims, else the model card's shape, else
``FREE_AXIS``. The tolerance allows for onnxruntime choosing other kernels (other
summation orders) at other batch sizes; real coupling moves answers by far more.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from bnserve.proto.datatypes import BY_NAME
from bnserve.repository.card import ModelCard
from bnserve.server.runtime import TensorSpec

PROBE_ROWS = 8
FREE_AXIS = 4
RTOL = 1e-4
ATOL = 1e-5
SEED = 0

Tensors = dict[str, np.ndarray]


@dataclass(frozen=True)
class IndependenceResult:
    reason: str | None  # None: independent; else what differed, naming the first output
    rows: int  # rows in the probe batch (1: only the randomness check could run)
    max_abs_diff: float  # largest |batched - alone| over float outputs

    @property
    def independent(self) -> bool:
        return self.reason is None


def probe_inputs(specs: Sequence[TensorSpec], rows: int | None, card: ModelCard | None,
                 seed: int = SEED) -> Tensors:
    """Valid inputs for the model: ``rows`` rows on the batch axis, or the full shape (None)."""
    rng = np.random.default_rng(seed)
    by_name = {t.name: t for t in card.inputs} if card else {}
    statistics = card.input_statistics if card else None
    feeds = {}
    for spec in specs:
        declared = by_name.get(spec.name)
        known = declared.shape if declared and len(declared.shape) == len(spec.shape) else ()
        shape = [d if d >= 0 else (known[i] if known and known[i] >= 0 else FREE_AXIS)
                 for i, d in enumerate(spec.shape)]
        if rows is not None:
            shape[0] = rows
        dtype = BY_NAME[spec.datatype].dtype
        if spec.datatype == "BYTES":
            array = np.array([f"probe {i}" for i in range(int(np.prod(shape)))],
                             dtype=object).reshape(shape)
        elif spec.datatype == "BOOL":
            array = rng.integers(0, 2, size=shape).astype(bool)
        elif dtype.kind in "iu":
            low, high = declared.value_range if declared and declared.value_range else (0, 1)
            array = rng.integers(low, high + 1, size=shape).astype(dtype)
        else:
            array = rng.standard_normal(shape)
            if statistics is not None and len(specs) == 1:
                mean = np.asarray(statistics.mean, dtype=np.float64)
                std = np.asarray(statistics.std, dtype=np.float64)
                try:
                    array = array * std + mean  # broadcast over a sample, as the exporter stores it
                except ValueError:
                    pass  # statistics of another shape: keep standard normal
            array = array.astype(dtype)
        feeds[spec.name] = array
    return feeds


def check_batch_independence(run: Callable[[Tensors], Tensors], feeds: Tensors,
                             batched: bool) -> IndependenceResult:
    """Run the checks described in the module docstring on ``feeds``.

    ``batched``: the feeds' first axis is the batch axis (rows can be taken alone); when
    False only the randomness check runs.
    """
    first = run(feeds)
    second = run(feeds)
    for name, value in first.items():
        if not _same(value, second[name], exact=True):
            return IndependenceResult(
                f"output {name!r} differs between two runs of the same inputs (the graph is "
                "random, e.g. Dropout with training_mode=1)", 1, float("nan"))
    rows = len(next(iter(feeds.values()))) if batched else 1
    if not batched or rows < 2:
        return IndependenceResult(None, rows, 0.0)
    alone = [run({n: a[i:i + 1] for n, a in feeds.items()}) for i in range(rows)]
    largest = 0.0
    for name, value in first.items():
        if value.shape[:1] != (rows,):
            return IndependenceResult(
                f"output {name!r} has {value.shape[:1] or 'no'} rows for {rows} input rows: its "
                "first axis is not the batch axis", rows, float("inf"))
        for row in range(rows):
            single = alone[row][name]
            if single.shape != value[row:row + 1].shape or not _same(value[row:row + 1], single):
                diff = _diff(value[row:row + 1], single)
                return IndependenceResult(
                    f"output {name!r} of row {row} changes with the other rows of its batch "
                    f"(by up to {diff:.3g}): the graph computes across the batch axis, e.g. "
                    "BatchNorm with batch statistics or a mean over the batch", rows, diff)
            largest = max(largest, _diff(value[row:row + 1], single))
    return IndependenceResult(None, rows, largest)


def _same(a: np.ndarray, b: np.ndarray, *, exact: bool = False) -> bool:
    if a.shape != b.shape:
        return False
    if a.dtype.kind != "f" or exact:
        if a.dtype.kind == "f":
            return bool(np.array_equal(a, b, equal_nan=True))
        return bool(np.array_equal(a, b))
    return bool(np.allclose(a, b, rtol=RTOL, atol=ATOL, equal_nan=True))


def _diff(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return float("inf")
    if a.dtype.kind != "f":
        return 0.0 if np.array_equal(a, b) else float("inf")
    with np.errstate(invalid="ignore"):
        d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return float(np.nanmax(d)) if d.size else 0.0
