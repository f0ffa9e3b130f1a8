"""onnxruntime, wrapped: provider selection, graph-derived tensor metadata, ``run``.

The only module of the server that imports onnxruntime.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from bnserve.proto.datatypes import BY_ORT_TYPE
from bnserve.server.errors import InvalidInputError, ModelLoadError, quoted

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"

@dataclass(frozen=True)
class TensorSpec:
    """A model input or output as the protocol describes it."""

    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 marks a dimension the graph leaves free


def select_providers(device: str, available: Sequence[str]) -> list[str]:
    """Execution providers for a device setting, given what this onnxruntime build offers."""
    if device == "cpu":
        return [CPU]
    if device == "cuda":
        if CUDA not in available:
            raise ModelLoadError(
                "device=cuda was asked for, but this onnxruntime has no CUDAExecutionProvider "
                f"(available: {', '.join(available)}); install onnxruntime-gpu or use device=cpu"
            )
        return [CUDA, CPU]
    if device == "auto":
        return [CUDA, CPU] if CUDA in available else [CPU]
    raise ValueError(f"device must be cpu, cuda or auto, not {device!r}")


def _spec(arg: ort.NodeArg) -> TensorSpec:
    datatype = BY_ORT_TYPE.get(arg.type)
    if datatype is None:
        raise ModelLoadError(f"tensor {quoted(arg.name)} has type {arg.type[:32]}, which bnserve "
                             "cannot serve")
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape or ())
    return TensorSpec(arg.name, datatype.name, shape)


class OnnxRuntimeSession:
    """One onnxruntime InferenceSession and the metadata derived from its graph."""

    def __init__(self, path: Path, *, device: str = "cpu", intra_op_threads: int = 0,
                 inter_op_threads: int = 1) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        # Inter-op parallelism helps only graphs with parallel branches; 1 by default, so
        # concurrent runs (instance_group.count) do not fight over cores.
        options.inter_op_num_threads = inter_op_threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = select_providers(device, ort.get_available_providers())
        try:
            self._session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            # Its text names host paths and C++ internals: the log gets it, a client does not.
            raise ModelLoadError("onnxruntime could not load the graph",
                                 f"onnxruntime cannot load {path}: {exc}") from exc
        self.providers: list[str] = self._session.get_providers()
        if device == "cuda" and CUDA not in self.providers:
            # onnxruntime falls back to CPU when the CUDA libraries fail to load.
            raise ModelLoadError("device=cuda was asked for, but onnxruntime fell back to the CPU",
                                 f"onnxruntime runs {path} on {self.providers}; check the "
                                 "CUDA/cuDNN libraries")
        self.inputs = [_spec(a) for a in self._session.get_inputs()]
        self.outputs = [_spec(a) for a in self._session.get_outputs()]
        log.debug("loaded %s on %s", path, self.providers)

    def run(
        self, feeds: dict[str, np.ndarray], output_names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        names = list(output_names) if output_names else [o.name for o in self.outputs]
        try:
            results = self._session.run(names, feeds)
        except InvalidArgument as exc:
            # Values the graph cannot take (a token id past the vocabulary, say): the
            # client's input, not a server fault.
            raise InvalidInputError(f"the model rejected the input: {_short(exc)}") from exc
        return dict(zip(names, results, strict=True))


def _short(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text.split(" : ", 3)[-1][:300]  # drop onnxruntime's "[ONNXRuntimeError] : 2 : ..."


def available_providers() -> list[str]:
    return list(ort.get_available_providers())
