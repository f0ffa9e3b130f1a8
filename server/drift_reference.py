"""The drift monitor's reference, built once when a version loads.

    card.reference_graph (e.g. unfolded.onnx: the served graph with BatchNorm kept)
      or, for an ONNX model bnserve did not export, the served model.onnx itself
      --file_checks: a plain file inside the version folder, external data checked
      --no BatchNormalization in training mode; each layer's statistics are initializers
      --the same inputs as the served graph (names, element types)
      --a reference graph other than model.onnx answers as model.onnx does on generated
        inputs (a stale unfolded.onnx would make every score meaningless)
      --statistics graph (bnserve.repository.batchnorm) in its own onnxruntime session,
        one thread, CPU: the probes never compete with serving for more than one core
      --> DriftReference (layers + measure(feeds) -> per-row moments)

A reference that fails any step is not a reason to refuse the version: the served graph
passed its own checks, and the monitor only watches it. ``build_reference`` then returns
the short, client-safe reason (the drift report answers it) and logs the detail once;
nothing of a refused file is read past the check that refused it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import external_data_helper

from bnserve.proto.datatypes import BY_NAME
from bnserve.repository.batchnorm import (
    BatchNormGraphError,
    BatchNormLayer,
    RowMoments,
    batchnorm_layers,
    row_moments,
    statistics_graph,
    unshare_statistics,
)
from bnserve.repository.card import ModelCard
from bnserve.repository.graph import external_data_locations, training_mode_batchnorms
from bnserve.repository.layout import MODEL_FILE
from bnserve.server.errors import ModelLoadError
from bnserve.server.file_checks import read_checked_graph
from bnserve.server.runtime import TensorSpec

log = logging.getLogger(__name__)

# The reference graph must answer as model.onnx does: folding BatchNorm moves answers by
# float32 rounding (~1e-7 on the digits CNN); this is far above that, far below a mismatch.
ANSWER_TOLERANCE = 1e-3


class ReferenceProblem(Exception):
    """Why a version has no monitor: ``reason`` for clients, ``detail`` for the log."""

    def __init__(self, reason: str, detail: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail or reason


@dataclass(frozen=True)
class DriftReference:
    """The BatchNorm layers of a version and the session that measures what enters them."""

    layers: tuple[BatchNormLayer, ...]
    source: str  # the file the layers came from ("unfolded.onnx", "model.onnx")
    session: Any  # onnxruntime.InferenceSession of the statistics graph
    input_names: tuple[str, ...]

    def measure(self, feeds: Mapping[str, np.ndarray]) -> list[RowMoments]:
        """Per-row moments of each layer's input for the rows of ``feeds``."""
        names = [name for layer in self.layers for name in layer.output_names()]
        results = self.session.run(names, {n: feeds[n] for n in self.input_names})
        return row_moments(dict(zip(names, results, strict=True)), self.layers)


def build_reference(directory: Path, card: ModelCard | None, served_graph: onnx.ModelProto,
                    served_inputs: Sequence[TensorSpec], probe: Mapping[str, np.ndarray],
                    probe_answers: Mapping[str, np.ndarray]) -> DriftReference | str:
    """The reference of the version in ``directory``, or why it has none (a short reason).

    ``served_graph``: model.onnx as read by the loader (no external data); ``probe``:
    generated inputs and ``probe_answers`` the served session's outputs for them.
    """
    try:
        return _build(directory, card, served_graph, served_inputs, probe, probe_answers)
    except ReferenceProblem as exc:
        log.warning("%s: serving without a drift monitor: %s", directory, exc.detail)
        return exc.reason


def _build(directory: Path, card: ModelCard | None, served_graph: onnx.ModelProto,
           served_inputs: Sequence[TensorSpec], probe: Mapping[str, np.ndarray],
           probe_answers: Mapping[str, np.ndarray]) -> DriftReference:
    source = card.reference_graph if card is not None else None
    if source is not None:
        try:
            graph = read_checked_graph(directory, source)
        except ModelLoadError as exc:
            raise ReferenceProblem(f"the reference graph {exc.reason}", exc.detail) from None
    else:
        source, graph = MODEL_FILE, onnx.ModelProto()
        graph.CopyFrom(served_graph)  # the loader's copy stays without external data
    if external_data_locations(graph):  # file_checks passed: every location is inside
        try:
            external_data_helper.load_external_data_for_model(graph, str(directory))
        except Exception as exc:  # noqa: BLE001 - a truncated or unreadable data file
            raise ReferenceProblem(f"the external data of {source} cannot be read",
                                   f"{directory / source}: {exc}") from None
    problems = training_mode_batchnorms(graph)
    if problems:
        raise ReferenceProblem(f"{source}: {problems[0]}: its statistics are not frozen")
    try:
        unshared = unshare_statistics(graph)
        layers = tuple(batchnorm_layers(unshared))
    except BatchNormGraphError as exc:
        raise ReferenceProblem(f"{source}: {exc}") from None
    if not layers:
        raise ReferenceProblem(_no_layers_reason(card, source))
    _check_inputs(graph, served_inputs, source)
    if source != MODEL_FILE:
        _check_answers(graph, probe, probe_answers, source, directory)
    stats = statistics_graph(unshared, layers)
    session = _session(stats, source, directory)
    reference = DriftReference(layers, source, session, tuple(s.name for s in served_inputs))
    try:
        moments = reference.measure(probe)
    except Exception as exc:  # noqa: BLE001 - onnxruntime's untyped errors
        raise ReferenceProblem(f"the statistics graph of {source} cannot run on generated "
                               "inputs (see the server log)", f"{directory / source}: {exc}"
                               ) from None
    for layer, found in zip(layers, moments, strict=True):
        if found.sum.ndim != 2 or found.sum.shape[1] != layer.channels:
            raise ReferenceProblem(f"{source}: layer {layer.name!r} has {layer.channels} "
                                   f"channels, but its input has shape {list(found.sum.shape)} "
                                   "per row")
    return reference


def _no_layers_reason(card: ModelCard | None, source: str) -> str:
    folded = card.extra.get("batchnorm", {}).get("folded") if card is not None else None
    if isinstance(folded, int) and folded > 0:
        return (f"its {folded} BatchNorm layer(s) were folded into the layers before them at "
                "export and the version has no unfolded reference graph (re-export it with "
                "this bnserve, which writes one)")
    return f"the model has no BatchNormalization layers ({source})"


def _check_inputs(graph: onnx.ModelProto, served: Sequence[TensorSpec], source: str) -> None:
    initializers = {t.name for t in graph.graph.initializer}
    graph_inputs = {i.name: i.type.tensor_type.elem_type for i in graph.graph.input
                    if i.name not in initializers}
    for spec in served:
        want = BY_NAME[spec.datatype].onnx_type
        if graph_inputs.get(spec.name) != want:
            raise ReferenceProblem(f"{source} does not take the served input {spec.name!r} "
                                   f"as {spec.datatype}")
    extra = sorted(set(graph_inputs) - {s.name for s in served})
    if extra:
        raise ReferenceProblem(f"{source} needs an input the served graph does not have "
                               f"({extra[0][:64]!r})")


def _options() -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # its warnings about unused initializers are not ours
    return options


def _session(model: onnx.ModelProto, source: str, directory: Path) -> Any:
    try:
        return ort.InferenceSession(model.SerializeToString(), _options(),
                                    providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime (or protobuf's 2 GiB limit)
        raise ReferenceProblem(f"onnxruntime could not load the statistics graph of {source} "
                               "(see the server log)", f"{directory / source}: {exc}") from None


def _check_answers(graph: onnx.ModelProto, probe: Mapping[str, np.ndarray],
                   served: Mapping[str, np.ndarray], source: str, directory: Path) -> None:
    """The reference graph must be this version's: same answers as model.onnx."""
    session = _session(graph, source, directory)
    names = [o.name for o in session.get_outputs() if o.name in served]
    if not names:
        raise ReferenceProblem(f"{source} has none of the served graph's outputs")
    try:
        answers = dict(zip(names, session.run(names, dict(probe)), strict=True))
    except Exception as exc:  # noqa: BLE001
        raise ReferenceProblem(f"{source} cannot run on generated inputs (see the server log)",
                               f"{directory / source}: {exc}") from None
    for name in names:
        want, got = np.asarray(served[name]), np.asarray(answers[name])
        if want.dtype == object or got.dtype == object:
            same = want.shape == got.shape and bool((want == got).all())
            gap = 0.0 if same else float("inf")
        elif want.shape != got.shape:
            gap = float("inf")
        else:
            scale = 1.0 + float(np.abs(want).max(initial=0.0))
            gap = float(np.abs(want.astype(np.float64) - got.astype(np.float64)).max(initial=0.0)
                        ) / scale
        if not gap <= ANSWER_TOLERANCE:
            raise ReferenceProblem(f"{source} answers differently from {MODEL_FILE} (output "
                                   f"{name!r}): it is not this version's reference graph")
