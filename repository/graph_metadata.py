"""What the exporter writes into ``model.onnx`` itself (its ``metadata_props``), so a graph
copied without its card still says what it answers:

    bnserve.labels    the class labels as a JSON list of strings, one per class of the
                      output's last axis (the card's ``labels``)

The exporter writes it before the card's sha256 is taken; the server reads it for a
version whose card has no labels (or that has no card). onnxruntime shows it too
(``InferenceSession.get_modelmeta().custom_metadata_map``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import onnx

from bnserve.repository.card import CardError, parse_labels

LABELS_KEY = "bnserve.labels"


def graph_labels(model: onnx.ModelProto) -> tuple[str, ...]:
    """The labels in the graph's metadata, () when it has none; CardError when malformed."""
    text = next((p.value for p in model.metadata_props if p.key == LABELS_KEY), None)
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
    kept = [p for p in model.metadata_props if p.key != LABELS_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=LABELS_KEY, value=json.dumps(list(labels), ensure_ascii=False))
