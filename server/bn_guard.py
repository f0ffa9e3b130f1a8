"""Refuse graphs whose BatchNormalization would normalize with the batch's own statistics.

A BatchNormalization node in training mode computes mean and variance over the batch it
is given. Behind a dynamic batcher that batch is made of other users' requests, so one
user's answer would depend on what others sent. Such a model is never served.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import onnx


def _nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attribute in node.attribute:  # If/Loop/Scan bodies
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _nodes(attribute.g)
            for subgraph in attribute.graphs:
                yield from _nodes(subgraph)


def training_mode_batchnorms(model: onnx.ModelProto) -> list[str]:
    """Descriptions of the BatchNormalization nodes that use batch statistics."""
    found = []
    for node in _nodes(model.graph):
        if node.op_type != "BatchNormalization":
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        label = node.name or f"with output {node.output[0]!r}"
        if attrs.get("training_mode", 0) == 1:
            found.append(f"BatchNormalization node {label} has training_mode=1")
        elif len([o for o in node.output if o]) > 1:
            # Before opset 14 the extra mean/var outputs existed only in training.
            found.append(f"BatchNormalization node {label} emits running statistics")
    return found


def check_inference_batchnorm(path: Path) -> list[str]:
    return training_mode_batchnorms(onnx.load(str(path), load_external_data=False))
