"""The BatchNorm layers of an ONNX graph, and a graph that measures what enters them.

A BatchNormalization node in inference mode holds the training distribution's fingerprint:
its running mean and variance are what its input looked like in training. Both the drift
monitor (``bnserve.server.drift``) and recalibration (``bnserve.server.recalibration``)
compare that reference with live activations, which ``statistics_graph`` computes::

    unfolded graph (BatchNormalization nodes kept)
      --batchnorm_layers--> [BatchNormLayer: name, input tensor, mean, var, gamma, beta, eps]
      --statistics_graph--> the same graph whose outputs are, per layer k and per row,
                            the sum and the sum of squares over each channel of the tensor
                            entering layer k (float64), and its shape

Per-row sums (not a batch mean) let a caller add rows up any way it likes: a sliding
window, a bootstrap of windows, a whole data set. Only the main graph's BatchNormalization
nodes are layers; ones inside If/Loop bodies or local functions are not measured.

Imports onnx and numpy only (no onnxruntime): the exporter, the server and tests use it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bnserve.repository.graph import InitializerCopies

MAX_LAYERS = 1024  # more BatchNorm layers than any real network has; bounds what is measured
OUTPUT_PREFIX = "bnserve_bn"


class BatchNormGraphError(ValueError):
    """A BatchNormalization node whose parameters are not constant initializers."""


@dataclass(frozen=True)
class BatchNormLayer:
    """One BatchNormalization node in inference mode, with its parameters as float64."""

    index: int  # position among the graph's BatchNormalization nodes (topological order)
    name: str  # readable: the module path ("stem.1") when the exporter kept one, else the node's
    node: str  # the node's name in the graph ("" when it has none)
    input: str  # the tensor entering the layer
    mean_name: str  # initializer names of the running mean and variance
    var_name: str
    epsilon: float
    mean: np.ndarray  # (C,) running mean
    var: np.ndarray  # (C,) running variance
    scale: np.ndarray  # (C,) gamma
    bias: np.ndarray  # (C,) beta

    @property
    def channels(self) -> int:
        return int(self.mean.shape[0])

    def output_names(self) -> tuple[str, str, str]:
        """The statistics graph's outputs for this layer: per-row sum, sum of squares, shape."""
        stem = f"{OUTPUT_PREFIX}{self.index}"
        return f"{stem}_sum", f"{stem}_sumsq", f"{stem}_shape"


_MODULE_SUFFIX = re.compile(r"\.running_mean$")


def _readable_name(node: onnx.NodeProto, mean_name: str, index: int) -> str:
    # The dynamo exporter names the running mean after the module ("net.stem.1.running_mean");
    # "net." is bnserve's wrapper (training.export.InferenceModel), not the user's module.
    if _MODULE_SUFFIX.search(mean_name):
        name = _MODULE_SUFFIX.sub("", mean_name)
        return name[len("net."):] if name.startswith("net.") else name
    return node.name or f"batchnorm{index}"


def batchnorm_layers(model: onnx.ModelProto) -> list[BatchNormLayer]:
    """The main graph's BatchNormalization nodes, in graph (topological) order.

    ``BatchNormGraphError`` when one of them takes its parameters from anything but an
    initializer (then nothing could be re-estimated or compared), or there are too many.
    """
    initializers = {t.name: t for t in model.graph.initializer}
    layers: list[BatchNormLayer] = []
    seen_names: set[str] = set()
    for node in model.graph.node:
        if node.op_type != "BatchNormalization":
            continue
        if len(layers) >= MAX_LAYERS:
            raise BatchNormGraphError(f"the graph has more than {MAX_LAYERS} BatchNormalization "
                                      "nodes")
        index = len(layers)
        if len(node.input) != 5:
            raise BatchNormGraphError(f"BatchNormalization node {index} has {len(node.input)} "
                                      "inputs, expected 5")
        params = []
        for role, tensor in zip(("scale", "bias", "mean", "var"), node.input[1:], strict=True):
            if tensor not in initializers:
                raise BatchNormGraphError(f"BatchNormalization node {index}: its {role} is not a "
                                          "constant initializer")
            value = numpy_helper.to_array(initializers[tensor]).astype(np.float64).reshape(-1)
            params.append(value)
        scale, bias, mean, var = params
        if not (len(scale) == len(bias) == len(mean) == len(var)) or not len(mean):
            raise BatchNormGraphError(f"BatchNormalization node {index}: its parameters have "
                                      "different lengths")
        if not all(np.isfinite(p).all() for p in params) or (var < 0).any():
            raise BatchNormGraphError(f"BatchNormalization node {index}: its parameters hold "
                                      "NaN, infinity or a negative variance")
        epsilon = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        name = _readable_name(node, node.input[3], index)
        if name in seen_names:  # two layers must never share a label
            name = f"{name}#{index}"
        seen_names.add(name)
        layers.append(BatchNormLayer(index=index, name=name, node=node.name, input=node.input[0],
                                     mean_name=node.input[3], var_name=node.input[4],
                                     epsilon=float(epsilon), mean=mean, var=var, scale=scale,
                                     bias=bias))
    return layers


def unshare_statistics(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy in which every BatchNormalization node has running-mean and running-variance
    initializers of its own: the exporter deduplicates equal initializers, and a layer's
    new statistics must never change another's."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    copies = InitializerCopies(model)
    for index, node in enumerate(n for n in model.graph.node if n.op_type == "BatchNormalization"):
        for slot, role in ((3, "running_mean"), (4, "running_var")):
            if copies.shared(node.input[slot]):
                node.input[slot] = copies.copy(node.input[slot], f"__bn{index}_{role}")
    return model


def statistics_graph(model: onnx.ModelProto, layers: Sequence[BatchNormLayer], *,
                     statistics_as_inputs: bool = False) -> onnx.ModelProto:
    """``model`` with the per-row moments of each layer's input as its only outputs.

    For layer k (``layer.output_names()``): ``_sum`` and ``_sumsq`` (N, C) float64, the sum
    and the sum of squares over the positions of each row and channel; ``_shape`` (3,)
    int64, (N, C, positions per row). The original outputs are dropped, so onnxruntime
    runs only the nodes the layers need. ``statistics_as_inputs``: the layers' running mean
    and variance also become graph inputs (their values the defaults), so one session can
    be fed new statistics layer after layer (recalibration). Call on a graph that went
    through ``unshare_statistics``.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    del graph.output[:]
    keep_all_dims = f"{OUTPUT_PREFIX}_keep_dims"
    graph.initializer.append(numpy_helper.from_array(np.array([0, 0, -1], np.int64),
                                                     keep_all_dims))
    positions_axis = f"{OUTPUT_PREFIX}_positions_axis"
    graph.initializer.append(numpy_helper.from_array(np.array([2], np.int64), positions_axis))
    for layer in layers:
        sum_name, sumsq_name, shape_name = layer.output_names()
        stem = f"{OUTPUT_PREFIX}{layer.index}"
        graph.node.extend([
            # (N, C, ...) -> (N, C, positions): BatchNorm normalizes over all axes but 1.
            helper.make_node("Reshape", [layer.input, keep_all_dims], [f"{stem}_flat"]),
            helper.make_node("Cast", [f"{stem}_flat"], [f"{stem}_double"], to=TensorProto.DOUBLE),
            helper.make_node("ReduceSum", [f"{stem}_double", positions_axis], [sum_name],
                             keepdims=0),
            helper.make_node("Mul", [f"{stem}_double", f"{stem}_double"], [f"{stem}_square"]),
            helper.make_node("ReduceSum", [f"{stem}_square", positions_axis], [sumsq_name],
                             keepdims=0),
            helper.make_node("Shape", [f"{stem}_flat"], [shape_name]),
        ])
        graph.output.extend([
            helper.make_tensor_value_info(sum_name, TensorProto.DOUBLE, ["N", layer.channels]),
            helper.make_tensor_value_info(sumsq_name, TensorProto.DOUBLE, ["N", layer.channels]),
            helper.make_tensor_value_info(shape_name, TensorProto.INT64, [3]),
        ])
    if statistics_as_inputs:
        initializers = {t.name: t for t in graph.initializer}
        declared = {i.name for i in graph.input}
        for layer in layers:
            for name in (layer.mean_name, layer.var_name):
                if name in declared:
                    continue
                tensor = initializers[name]
                graph.input.append(helper.make_tensor_value_info(name, tensor.data_type,
                                                                 list(tensor.dims)))
                declared.add(name)
    return model


@dataclass(frozen=True)
class RowMoments:
    """Per-row moments of one layer's input: what ``statistics_graph`` gives for a batch."""

    sum: np.ndarray  # (N, C) float64
    sumsq: np.ndarray  # (N, C) float64
    positions: int  # values per row and channel (1 for (N, C), H*W for images)

    @property
    def rows(self) -> int:
        return int(self.sum.shape[0])


def row_moments(outputs: dict[str, np.ndarray], layers: Sequence[BatchNormLayer]
                ) -> list[RowMoments]:
    """The statistics graph's outputs, per layer."""
    found = []
    for layer in layers:
        sum_name, sumsq_name, shape_name = layer.output_names()
        found.append(RowMoments(outputs[sum_name], outputs[sumsq_name],
                                int(outputs[shape_name][2])))
    return found


def moments_mean_var(moments: Sequence[RowMoments], *, unbiased: bool = True
                     ) -> tuple[np.ndarray, np.ndarray, int]:
    """Channel mean and variance over all rows of ``moments`` (one layer, several batches),
    and the number of values each came from. ``unbiased``: divide by n - 1, as BatchNorm's
    running variance does."""
    total = sum(m.sum.sum(axis=0) for m in moments)
    total_sq = sum(m.sumsq.sum(axis=0) for m in moments)
    count = sum(m.rows * m.positions for m in moments)
    if count < 2:
        raise ValueError("at least 2 values per channel are needed for a variance")
    mean = total / count
    var = np.maximum(total_sq / count - mean * mean, 0.0)
    if unbiased:
        var = var * count / (count - 1)
    return mean, var, count
