"""What the exporter writes into ``model.onnx`` itself (its ``metadata_props``), so a graph
copied without its card still says what it answers and how to feed it:

    bnserve.labels      the class labels as a JSON list of strings, one per class of the
                        output's last axis (the card's ``labels``)
    bnserve.tokenizer   a text model's tokenizer spec, JSON (``bnserve.proto.tokenizer``):
                        vocabulary, lower-casing, word splitting, padding and unknown ids,
                        sequence length, truncation. Only here: the graph is its one home

The exporter writes them before the card's sha256 is taken, so the checksum covers them.
The server reads the labels for a version whose card has none (or that has no card), and
the tokenizer always; a malformed entry refuses the version. onnxruntime shows them too
(``InferenceSession.get_modelmeta().custom_metadata_map``). A graph derived from a served
one (recalibration) keeps them: ``copy_graph_metadata``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import onnx

from bnserve.proto.tokenizer import TOKENIZER_KEY, Tokenizer, TokenizerError
from bnserve.repository.card import CardError, parse_labels

LABELS_KEY = "bnserve.labels"
PREFIX = "bnserve."  # every key bnserve writes into a graph


def _entry(model: onnx.ModelProto, key: str) -> str | None:
    return next((p.value for p in model.metadata_props if p.key == key), None)


def _replace(model: onnx.ModelProto, key: str, value: str) -> None:
    kept = [p for p in model.metadata_props if p.key != key]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=key, value=value)


def graph_labels(model: onnx.ModelProto) -> tuple[str, ...]:
    """The labels in the graph's metadata, () when it has none; CardError when malformed."""
    text = _entry(model, LABELS_KEY)
    if text is None:
        return ()
    try:
        return parse_labels(json.loads(text))
    except (ValueError, CardError) as exc:  # json's errors are ValueErrors
        raise CardError(f"model.onnx metadata {LABELS_KEY!r} must be a JSON list of label "
                        f"strings ({exc})") from None


def set_graph_labels(model: onnx.ModelProto, labels: Sequence[str]) -> None:
    """Record ``labels`` in the graph's metadata (replacing any there)."""
    parse_labels(list(labels))
    _replace(model, LABELS_KEY, json.dumps(list(labels), ensure_ascii=False))


def graph_tokenizer(model: onnx.ModelProto) -> Tokenizer | None:
    """The tokenizer in the graph's metadata, None when it has none; TokenizerError (its
    message names the key and the field) when it is malformed, oversized or inconsistent."""
    text = _entry(model, TOKENIZER_KEY)
    if text is None:
        return None
    try:
        return Tokenizer.from_json(text)
    except TokenizerError as exc:
        raise TokenizerError(f"model.onnx metadata {TOKENIZER_KEY!r} is not a tokenizer spec: "
                             f"{exc}") from None


def set_graph_tokenizer(model: onnx.ModelProto, tokenizer: Tokenizer) -> None:
    """Record ``tokenizer`` in the graph's metadata (replacing any there)."""
    _replace(model, TOKENIZER_KEY, tokenizer.to_json())


def copy_graph_metadata(source: onnx.ModelProto, target: onnx.ModelProto) -> None:
    """Every ``bnserve.*`` entry of ``source``'s metadata into ``target`` (replacing those)."""
    for prop in source.metadata_props:
        if prop.key.startswith(PREFIX):
            _replace(target, prop.key, prop.value)
