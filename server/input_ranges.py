"""The values an integer input may take (token ids), resolved at load and checked per request.

A token id outside its vocabulary gets no answer: ONNX's Gather wraps a negative id to a
row from the end of the table (a confident answer to a wrong question) and fails a run on
one past it (which would fail every request batched with it). So each integer input that
indexes a table gets a range at load, and a request whose ids fall outside it is refused
with INVALID_ARGUMENT before it is queued:

- the model card's ``range`` for the input (the exporter records ``[0, vocab_size - 1]``),
- else the table's size from the graph (``bnserve.repository.graph.index_input_bounds``),
- both: the values both allow (a card cannot widen what the graph can look up).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from bnserve.repository.card import ModelCard
from bnserve.repository.graph import index_input_bounds
from bnserve.server.errors import InvalidInputError, ModelLoadError
from bnserve.server.runtime import TensorSpec

Range = tuple[int, int]  # lowest and highest valid value, both included

_INTEGER = ("INT", "UINT")


def input_ranges(inputs: Sequence[TensorSpec], graph: onnx.ModelProto,
                 card: ModelCard | None) -> dict[str, Range]:
    """Integer input -> its valid values, from the card and the graph's lookups."""
    declared = {t.name: t.value_range for t in card.inputs if t.value_range} if card else {}
    tables = index_input_bounds(graph)
    ranges: dict[str, Range] = {}
    for spec in inputs:
        if not spec.datatype.startswith(_INTEGER):
            continue
        found = declared.get(spec.name)
        if spec.name in tables:
            table = (0, tables[spec.name] - 1)
            found = table if found is None else (max(found[0], 0), min(found[1], table[1]))
            if found[0] > found[1]:
                raise ModelLoadError(
                    f"metadata.json gives input {spec.name!r} the range "
                    f"{list(declared[spec.name])}, but it indexes a table of "
                    f"{tables[spec.name]} rows")
        if found is not None:
            ranges[spec.name] = found
    return ranges


def check_ranges(inputs: Mapping[str, np.ndarray], ranges: Mapping[str, Range]) -> None:
    """InvalidInputError naming the input, a value outside its range and the range; one
    min and one max per checked input."""
    for name, (low, high) in ranges.items():
        array = inputs.get(name)
        if array is None or not array.size:
            continue
        lowest, highest = int(array.min()), int(array.max())
        if lowest < low or highest > high:
            bad = lowest if lowest < low else highest
            raise InvalidInputError(f"input {name!r}: value {bad} is outside the valid range "
                                    f"[{low}, {high + 1}) of the model (token ids index its "
                                    "vocabulary)")
