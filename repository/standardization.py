"""The input standardization in front of an exported graph: ``(input - mean) / std``.

The exporter (``bnserve.training.export.InferenceModel``) puts the training split's
per-channel mean and std into the graph, so clients send raw inputs::

    input --Sub(input, mean)--> --Div(_, std)--> network        (mean, std: initializers)

Like BatchNorm's running statistics these are frozen from training data; recalibration
re-estimates them (``estimate_standardization``) the way training computed them
(``InputStatistics.from_data``: per channel, over the batch and every other axis, the
population std, a constant channel left unscaled). Token-id inputs have none.

Imports onnx and numpy only: the exporter's contract, read by the server.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from bnserve.repository.graph import InitializerCopies

MIN_STD = 1e-6  # below this a channel is constant and left unscaled (as training does)


@dataclass(frozen=True)
class InputStandardization:
    """One graph input's ``(input - mean) / std``, with the constants as float64."""

    input: str  # the graph input
    mean_name: str  # initializer names
    std_name: str
    mean: np.ndarray  # the stored shape, broadcast on one sample: (C, 1, 1), (C, 1) or (F,)
    std: np.ndarray


def input_standardization(model: onnx.ModelProto) -> list[InputStandardization]:
    """Each graph input whose only consumer is ``Sub(input, mean)`` followed by nothing but
    ``Div(_, std)``, both constants initializers; [] when the graph has none."""
    initializers = {t.name: t for t in model.graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found = []
    for graph_input in model.graph.input:
        if graph_input.name in initializers:
            continue
        users = consumers.get(graph_input.name, [])
        if len(users) != 1 or users[0].op_type != "Sub" or list(users[0].input[:1]) != [graph_input.name]:
            continue
        sub = users[0]
        after = consumers.get(sub.output[0], [])
        if len(after) != 1 or after[0].op_type != "Div" or after[0].input[0] != sub.output[0]:
            continue
        mean_name, std_name = sub.input[1], after[0].input[1]
        if mean_name not in initializers or std_name not in initializers:
            continue
        mean = numpy_helper.to_array(initializers[mean_name]).astype(np.float64)
        std = numpy_helper.to_array(initializers[std_name]).astype(np.float64)
        if mean.shape != std.shape or not (np.isfinite(mean).all() and (std > 0).all()):
            continue
        found.append(InputStandardization(graph_input.name, mean_name, std_name, mean, std))
    return found


def unshare_standardization(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose standardization constants are used by their Sub/Div alone: the exporter
    deduplicates equal initializers, and a new input mean must change nothing else."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    copies = InitializerCopies(model)
    for found in input_standardization(model):
        for op, name in (("Sub", found.mean_name), ("Div", found.std_name)):
            if not copies.shared(name):
                continue
            fresh = copies.copy(name, f"__standardize_{found.input}")
            node = next(n for n in model.graph.node if n.op_type == op and n.input[1] == name
                        and (op == "Div" or n.input[0] == found.input))
            node.input[1] = fresh
    return model


def estimate_standardization(x: np.ndarray, like: InputStandardization
                             ) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population std of raw ``x`` (N, *sample_shape), shaped as ``like``'s: over the
    batch axis and every sample axis where the stored shape is 1 (or absent)."""
    shape = like.mean.shape
    sample_ndim = x.ndim - 1
    if len(shape) > sample_ndim:
        raise ValueError(f"the stored mean has shape {shape}, more axes than a sample "
                         f"{x.shape[1:]}")
    aligned = (1,) * (sample_ndim - len(shape)) + shape  # right-aligned, as broadcasting is
    if any(d not in (1, n) for d, n in zip(aligned, x.shape[1:], strict=True)):
        raise ValueError(f"the stored mean has shape {shape}, which does not broadcast on a "
                         f"sample {x.shape[1:]}")
    axes = (0, *(1 + i for i, d in enumerate(aligned) if d == 1))
    mean = x.mean(axis=axes, dtype=np.float64, keepdims=True)
    std = x.std(axis=axes, dtype=np.float64, keepdims=True)
    std = np.where(std > MIN_STD, std, 1.0)
    return mean.reshape(shape), std.reshape(shape)
