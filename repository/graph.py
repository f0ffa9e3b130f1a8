"""Walks of an ONNX graph that the exporter and the server both rely on.

- ``batchnorm_nodes`` / ``is_training_mode``: the BatchNormalization nodes of a graph, its
  subgraphs and its local functions, and whether one normalizes with the batch's own
  statistics. The exporter counts and checks with this walk, so a model that passes export
  is one the server accepts.
- ``external_data_locations``: every file a graph's tensors name as external data, so the
  server can check them before onnxruntime opens any.
- ``tensor_signature``: a graph input or output as the model card describes it.
- ``index_input_bounds``: the integer graph inputs that index a table (an embedding's
  Gather), and the table's size: the exporter records it as the input's range in the card,
  the server refuses ids outside it (ONNX's Gather would wrap a negative id silently).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import onnx

from bnserve.proto.datatypes import BY_ONNX_TYPE
from bnserve.repository.card import TensorSignature


def _walk(nodes: Sequence[onnx.NodeProto]) -> Iterator[onnx.NodeProto]:
    for node in nodes:
        yield node
        for attribute in node.attribute:  # If/Loop/Scan bodies
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _walk(attribute.g.node)
            for subgraph in attribute.graphs:
                yield from _walk(subgraph.node)


def all_nodes(model: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    """Every node: the main graph, its subgraphs, and the bodies of its local functions."""
    for body in (model.graph.node, *(function.node for function in model.functions)):
        yield from _walk(body)


def batchnorm_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """BatchNormalization nodes in the graph, its subgraphs and its local functions."""
    return [n for n in all_nodes(model) if n.op_type == "BatchNormalization"]


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


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attribute in node.attribute:
            yield from _attribute_tensors(attribute)


def _attribute_tensors(attribute: onnx.AttributeProto) -> Iterator[onnx.TensorProto]:
    if attribute.HasField("t"):
        yield attribute.t
    yield from attribute.tensors
    if attribute.HasField("sparse_tensor"):
        yield attribute.sparse_tensor.values
        yield attribute.sparse_tensor.indices
    for sparse in attribute.sparse_tensors:
        yield sparse.values
        yield sparse.indices
    if attribute.HasField("g"):
        yield from _graph_tensors(attribute.g)
    for subgraph in attribute.graphs:
        yield from _graph_tensors(subgraph)


def external_data_locations(model: onnx.ModelProto) -> list[str]:
    """The ``location`` of every tensor stored outside the model file, as written in it.

    An external tensor without a location is reported as "" (onnxruntime would reject it;
    the caller refuses it first).
    """
    tensors = list(_graph_tensors(model.graph))
    for function in model.functions:
        for node in function.node:
            for attribute in node.attribute:
                tensors.extend(_attribute_tensors(attribute))
    found = []
    for tensor in tensors:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            entries = {e.key: e.value for e in tensor.external_data}
            found.append(entries.get("location", ""))
    return found


def tensor_signature(value: onnx.ValueInfoProto) -> TensorSignature:
    """A graph input/output: name, protocol datatype, shape (-1 for a symbolic axis)."""
    tensor_type = value.type.tensor_type
    datatype = BY_ONNX_TYPE.get(tensor_type.elem_type)
    if datatype is None:
        raise ValueError(f"tensor {value.name!r} has an element type bnserve cannot serve")
    shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim)
    return TensorSignature(value.name, datatype.name, shape)


# Ops that pass integer values through unchanged, between a graph input and its Gather.
_VALUE_PRESERVING = {"Identity", "Cast", "Reshape", "Flatten", "Squeeze", "Unsqueeze"}


def index_input_bounds(model: onnx.ModelProto) -> dict[str, int]:
    """Integer graph input -> the size of the smallest table it indexes: the first (axis)
    dimension of the initializer a Gather looks it up in, directly or through reshapes and
    casts. An input feeding no such Gather is absent. The main graph only."""
    graph = model.graph
    integer = {v.name for v in graph.input
               if v.type.tensor_type.elem_type in _INTEGER_TYPES}
    tables = {t.name: tuple(t.dims) for t in graph.initializer}
    origin = {name: name for name in integer}  # tensor -> the input its values are
    bounds: dict[str, int] = {}
    for node in graph.node:  # topologically sorted, as ONNX requires
        if node.op_type in _VALUE_PRESERVING and node.domain in ("", "ai.onnx") \
                and node.input and node.input[0] in origin and node.output:
            origin[node.output[0]] = origin[node.input[0]]
        elif (node.op_type == "Gather" and node.domain in ("", "ai.onnx")
              and len(node.input) == 2 and node.input[1] in origin
              and node.input[0] in tables):
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            dims = tables[node.input[0]]
            if -len(dims) <= axis < len(dims):
                name = origin[node.input[1]]
                bounds[name] = min(bounds.get(name, dims[axis]), dims[axis])
    return bounds


_INTEGER_TYPES = {t for t, d in BY_ONNX_TYPE.items() if d.dtype.kind in "iu"}


class InitializerCopies:
    """Give one consumer of a shared initializer a copy of its own (exporters deduplicate
    equal initializers; a rewrite of one layer's must never change another's)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self._model = model
        self.initializers = {t.name: t for t in model.graph.initializer}
        self.users: dict[str, int] = {}
        for node in model.graph.node:
            for name in node.input:
                self.users[name] = self.users.get(name, 0) + 1
        self._taken = set(self.initializers) | {v.name for v in model.graph.value_info}
        self._taken |= {o for n in model.graph.node for o in n.output}
        self._taken |= {i.name for i in model.graph.input}

    def shared(self, name: str) -> bool:
        return name in self.initializers and self.users.get(name, 0) > 1

    def copy(self, name: str, suffix: str) -> str:
        """A new initializer equal to ``name``, for one of its users; its name."""
        fresh = f"{name}{suffix}"
        while fresh in self._taken:
            fresh += "_"
        tensor = onnx.TensorProto()
        tensor.CopyFrom(self.initializers[name])
        tensor.name = fresh
        self._model.graph.initializer.append(tensor)
        self._taken.add(fresh)
        self.users[name] -= 1
        return fresh
