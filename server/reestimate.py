"""Re-estimate a graph's frozen statistics on unlabeled inputs, with onnxruntime alone.

    unfolded graph --unshare--> statistics graph (per-row moments of every BatchNorm input,
                                running mean/var and input mean/std fed as inputs)
    inputs --input mean/std re-estimated (optional)-->
           pass 1: moments under the base statistics               -> drift before
           pass k: layers whose upstream BatchNorms are all done   -> their mean/var
           last pass: moments under the new statistics             -> drift after

Layer k is estimated on what enters it once the layers before it already hold their new
statistics, which is what PyTorch's train-mode pass gives (each layer normalizes with the
batch's statistics on the way through). Layers that do not depend on each other (a
residual block's two branches) share a pass. The variance is the unbiased one, as
BatchNorm's running variance is.

``prior_strength`` N0 (Schneider et al. 2020, "Improving robustness against common
corruptions by covariate shift adaptation"): new = (N0 * base + n * estimate) / (N0 + n)
for each mean and variance, n the number of rows; N0 = 0 replaces the statistics.

Imports onnx, onnxruntime and numpy (no torch): it runs in the serving image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import onnx

from bnserve.repository.batchnorm import (
    BatchNormLayer,
    RowMoments,
    batchnorm_layers,
    moments_mean_var,
    row_moments,
    statistics_graph,
    unshare_statistics,
)
from bnserve.repository.drift import layer_drift, model_score
from bnserve.repository.standardization import (
    InputStandardization,
    estimate_standardization,
    input_standardization,
    unshare_standardization,
)
from bnserve.server.fed_session import CHUNK_ROWS, FedSession


@dataclass(frozen=True)
class Statistics:
    """What recalibration may change: running mean/var per BatchNorm layer, mean/std per
    standardized input. Everything else in the graph stays bit for bit."""

    layers: tuple[BatchNormLayer, ...]
    standardization: tuple[InputStandardization, ...]

    def values(self) -> dict[str, np.ndarray]:
        """Initializer name -> value (float64), for feeding or for writing into the graph."""
        out: dict[str, np.ndarray] = {}
        for layer in self.layers:
            out[layer.mean_name], out[layer.var_name] = layer.mean, layer.var
        for s in self.standardization:
            out[s.mean_name], out[s.std_name] = s.mean, s.std
        return out


@dataclass(frozen=True)
class LayerChange:
    """How far one BatchNorm layer moved, and how far the data was from it before and after."""

    name: str
    mean_shift: float  # mean over channels of |new mean - old mean| / old std
    std_ratio: float  # median over channels of new std / old std
    drift_before: float  # the data against the base statistics (nats, repository.drift)
    drift_after: float  # the data against the new ones

    def to_dict(self) -> dict[str, float | str]:
        return dict(vars(self))


@dataclass(frozen=True)
class Estimate:
    base: Statistics
    new: Statistics
    rows: int
    prior_strength: float
    input_statistics: str  # "re-estimated", "kept" or "none" (the graph standardizes nothing)
    passes: int  # runs over the data
    layers: tuple[LayerChange, ...]
    drift_before: float  # model score (mean of the layers' scores)
    drift_after: float
    # Per layer, the inputs' per-row moments under the new statistics: what a drift
    # threshold for the new reference is calibrated on.
    after: tuple[RowMoments, ...]


def blend(base: np.ndarray, estimate: np.ndarray, rows: int, prior_strength: float) -> np.ndarray:
    """(N0 * base + n * estimate) / (N0 + n): the base counts as N0 rows already seen."""
    if prior_strength == 0:
        return estimate
    return (prior_strength * base + rows * estimate) / (prior_strength + rows)


def batchnorm_levels(model: onnx.ModelProto, layers: Sequence[BatchNormLayer]) -> list[list[int]]:
    """Layer indices grouped by pass: a layer's level is the longest chain of BatchNorm
    layers upstream of its input, so every layer of a level has its upstream ones done."""
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
           for n in model.graph.node for a in n.attribute):
        # A subgraph can read any outer tensor; the walk below would miss those edges.
        return [[layer.index] for layer in layers]
    positions = [i for i, n in enumerate(model.graph.node) if n.op_type == "BatchNormalization"]
    bn_index = {position: layer.index for position, layer in zip(positions, layers, strict=True)}
    depth: dict[str, int] = {}
    level: dict[int, int] = {}
    for position, node in enumerate(model.graph.node):  # ONNX keeps nodes in topological order
        reached = max((depth.get(name, 0) for name in node.input if name), default=0)
        if position in bn_index:
            reached = depth.get(node.input[0], 0)
            level[bn_index[position]] = reached
            reached += 1
        for name in node.output:
            depth[name] = reached
    groups: dict[int, list[int]] = {}
    for index, at in level.items():
        groups.setdefault(at, []).append(index)
    return [sorted(groups[k]) for k in sorted(groups)]


class Reestimator:
    """One statistics session on ``reference`` (an unfolded graph), reusable for many data sets.

    ``self.model`` is the graph the estimates' initializer names refer to (statistics
    unshared): write new statistics into it, not into ``reference``.
    """

    def __init__(self, reference: onnx.ModelProto, *, intra_op_threads: int = 1,
                 chunk_rows: int = CHUNK_ROWS) -> None:
        self.model = unshare_standardization(unshare_statistics(reference))
        layers = batchnorm_layers(self.model)
        if not layers:
            raise ValueError("the graph has no BatchNormalization nodes")
        self.base = Statistics(tuple(layers), tuple(input_standardization(self.model)))
        self.levels = batchnorm_levels(self.model, layers)
        graph = statistics_graph(self.model, layers, statistics_as_inputs=True)
        names = list(self.base.values())
        self.session = FedSession(graph, names, intra_op_threads=intra_op_threads,
                                  chunk_rows=chunk_rows)

    def moments(self, inputs: Mapping[str, np.ndarray], statistics: Statistics
                ) -> list[list[RowMoments]]:
        """Per layer, the per-row moments of its input, one RowMoments per chunk."""
        per_layer: list[list[RowMoments]] = [[] for _ in statistics.layers]
        for outputs in self.session.run_chunks(inputs, statistics.values()):
            for k, m in enumerate(row_moments(outputs, statistics.layers)):
                per_layer[k].append(m)
        return per_layer

    def reestimate(self, inputs: Mapping[str, np.ndarray], *, prior_strength: float = 0.0,
                   input_statistics: bool = True) -> Estimate:
        """New statistics for ``inputs`` (checked by the caller: names, dtypes, >= 2 rows)."""
        if not prior_strength >= 0 or not np.isfinite(prior_strength):
            raise ValueError("prior_strength must be a finite number >= 0")
        rows = len(next(iter(inputs.values())))
        base = self.base
        current = base
        if input_statistics and base.standardization:
            refit = []
            for s in base.standardization:
                mean, std = estimate_standardization(np.asarray(inputs[s.input]), s)
                var = blend(s.std ** 2, std ** 2, rows, prior_strength)
                refit.append(replace(s, mean=blend(s.mean, mean, rows, prior_strength),
                                     std=np.sqrt(var)))
            current = replace(current, standardization=tuple(refit))
        before = self.moments(inputs, base)
        passes = 1
        layers = list(current.layers)
        for k, level in enumerate(self.levels):
            if k == 0 and current is base:
                seen = before  # nothing upstream of the first level has changed
            else:
                seen = self.moments(inputs, replace(current, layers=tuple(layers)))
                passes += 1
            for index in level:
                old = base.layers[index]
                mean, var, _ = moments_mean_var(seen[index], unbiased=True)
                layers[index] = replace(old, mean=blend(old.mean, mean, rows, prior_strength),
                                        var=blend(old.var, var, rows, prior_strength))
        new = replace(current, layers=tuple(layers))
        after = self.moments(inputs, new)
        passes += 1
        drifts_before = [layer_drift(layer, m) for layer, m in zip(base.layers, before, strict=True)]
        drifts_after = [layer_drift(layer, m) for layer, m in zip(new.layers, after, strict=True)]
        changes = tuple(
            _change(old, fresh, b.score, a.score)
            for old, fresh, b, a in zip(base.layers, new.layers, drifts_before, drifts_after,
                                        strict=True)
        )
        return Estimate(
            base=base, new=new, rows=rows, prior_strength=float(prior_strength),
            input_statistics=("none" if not base.standardization
                              else "re-estimated" if input_statistics else "kept"),
            passes=passes, layers=changes, drift_before=model_score(drifts_before),
            drift_after=model_score(drifts_after), after=tuple(_joined(m) for m in after),
        )


def _change(old: BatchNormLayer, new: BatchNormLayer, before: float, after: float) -> LayerChange:
    old_std = np.sqrt(old.var + old.epsilon)
    new_std = np.sqrt(new.var + new.epsilon)
    return LayerChange(name=old.name, mean_shift=float((np.abs(new.mean - old.mean) / old_std).mean()),
                       std_ratio=float(np.median(new_std / old_std)), drift_before=before,
                       drift_after=after)


def _joined(chunks: Sequence[RowMoments]) -> RowMoments:
    return RowMoments(np.concatenate([c.sum for c in chunks]),
                      np.concatenate([c.sumsq for c in chunks]), chunks[0].positions)
