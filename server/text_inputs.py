"""The tokenizer a text model ships (``bnserve.tokenizer`` in its graph's metadata), read at
load and checked against what the version serves, so a client that encodes with it sends
ids the model takes.

Refused, with the reason (the version is not served; the log and RepositoryIndex say why):

- a spec that is malformed, over its size limits or inconsistent in itself
  (``bnserve.proto.tokenizer``);
- one whose ``input`` is not an integer input of the graph, whose ``sequence_length`` is not
  the input's fixed length, or whose vocabulary holds ids outside the input's valid range
  (``bnserve.server.input_ranges``): every text using such an id would be refused.

Why refuse rather than serve the ids without it: a malformed spec means a damaged or foreign
artifact, refused like a malformed card or ``bnserve.labels``; dropping it would tell text
clients that the model has no vocabulary, which is false, and a spec that disagrees with the
graph would turn texts into ids the model refuses or misreads. A new version refused this
way leaves the older one serving (``bnserve.server.controller``); the fix is a re-export.
"""

from __future__ import annotations

import onnx

from bnserve.proto.tokenizer import Tokenizer, TokenizerError
from bnserve.repository.graph_metadata import graph_tokenizer
from bnserve.server.errors import ModelLoadError, quoted
from bnserve.server.input_ranges import Range
from bnserve.server.runtime import TensorSpec


def read_tokenizer(graph: onnx.ModelProto) -> Tokenizer | None:
    """The graph's tokenizer, None without one; ModelLoadError when it is malformed."""
    try:
        return graph_tokenizer(graph)
    except TokenizerError as exc:
        raise ModelLoadError(str(exc)) from None


def check_tokenizer(tokenizer: Tokenizer, inputs: tuple[TensorSpec, ...],
                    ranges: dict[str, Range]) -> None:
    """ModelLoadError when ``tokenizer``'s ids cannot go into the input it names."""
    where = f"model.onnx metadata 'bnserve.tokenizer': input {quoted(tokenizer.input)}"
    spec = next((s for s in inputs if s.name == tokenizer.input), None)
    if spec is None or not spec.datatype.startswith(("INT", "UINT")):
        names = ", ".join(quoted(s.name) for s in inputs[:10])
        raise ModelLoadError(f"{where} is not an integer input of the model (it has {names})")
    if len(spec.shape) != 2:
        raise ModelLoadError(f"{where} has shape {list(spec.shape)[:8]}; token ids go in rows "
                             "(batch, sequence_length)")
    if spec.shape[1] not in (-1, tokenizer.sequence_length):
        raise ModelLoadError(f"{where} takes rows of {spec.shape[1]} ids, but the tokenizer "
                             f"makes rows of {tokenizer.sequence_length}")
    low, high = ranges.get(spec.name, (0, tokenizer.vocab_size - 1))
    if low > 0 or high < tokenizer.vocab_size - 1:
        raise ModelLoadError(f"{where} takes ids in [{low}, {high}], but the tokenizer's "
                             f"{tokenizer.vocab_size} words have ids 0 to "
                             f"{tokenizer.vocab_size - 1}")
