"""Refuse graphs whose BatchNormalization would normalize with the batch's own statistics.

A BatchNormalization node in training mode computes mean and variance over the batch it
is given. Behind a dynamic batcher that batch is made of other users' requests, so one
user's answer would depend on what others sent. Such a model is never served.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import onnx


def _walk(nodes: Sequence[onnx.NodeProto]) -> Iterator[onnx.NodeProto]:
    for node in nodes:
        yield node
        for attribute in node.attribute:  # If/Loop/Scan bodies
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _walk(attribute.g.node)
            for subgraph in attribute.graphs:
                yield from _walk(subgraph.node)


def batchnorm_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """BatchNormalization nodes in the graph, its subgraphs and its local functions.

    The exporter (bnserve.training.verify) counts and checks with this same walk, so a
    model that passes export is one the server accepts.
    """
    bodies = [model.graph.node, *(function.node for function in model.functions)]
    return [n for body in bodies for n in _walk(body) if n.op_type == "BatchNormalization"]


def _training_mode_flag(node: onnx.NodeProto) -> bool:
    return any(a.name == "training_mode" and a.i != 0 for a in node.attribute)


def _emits_statistics(node: onnx.NodeProto) -> bool:
    # Before opset 14 the extra running-statistics outputs existed only in training.
    return len([o for o in node.output if o]) > 1


def is_training_mode(node: onnx.NodeProto) -> bool:
    """True when the node normalizes with the batch's own statistics."""
    return _training_mode_flag(node) or _emits_statistics(node)


def training_mode_batchnorms(model: onnx.ModelProto) -> list[str]:
    """Descriptions of the BatchNormalization nodes that use batch statistics."""
    found = []
    for node in batchnorm_nodes(model):
        if is_training_mode(node):
            label = node.name or f"with output {node.output[0]!r}"
            how = "has training_mode=1" if _training_mode_flag(node) else "emits running statistics"
            found.append(f"BatchNormalization node {label} {how}")
    return found


def check_inference_batchnorm(path: Path) -> list[str]:
    return training_mode_batchnorms(onnx.load(str(path), load_external_data=False))
