"""onnxruntime, wrapped: provider selection, session options, graph-derived tensor metadata, ``run``.

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

GRAPH_LEVELS = {"disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
EXECUTION_MODES = {"sequential": ort.ExecutionMode.ORT_SEQUENTIAL,
                   "parallel": ort.ExecutionMode.ORT_PARALLEL}


@dataclass(frozen=True)
class SessionTuning:
    """The onnxruntime session options bnserve sets; one instance's share of the cores."""

    intra_op_threads: int = 0  # 0: onnxruntime's choice (the host's cores)
    # Inter-op parallelism helps only graphs with parallel branches (and only in parallel
    # mode); 1 by default, so concurrent runs (instance_group.count) do not fight over cores.
    inter_op_threads: int = 1
    graph_optimization_level: str = "all"  # a key of GRAPH_LEVELS
    execution_mode: str = "sequential"  # a key of EXECUTION_MODES
    intra_op_spinning: bool = True  # onnxruntime's default
    inter_op_spinning: bool = True

    def options(self) -> ort.SessionOptions:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.intra_op_threads
        options.inter_op_num_threads = self.inter_op_threads
        options.graph_optimization_level = GRAPH_LEVELS[self.graph_optimization_level]
        options.execution_mode = EXECUTION_MODES[self.execution_mode]
        options.add_session_config_entry("session.intra_op.allow_spinning",
                                         "1" if self.intra_op_spinning else "0")
        options.add_session_config_entry("session.inter_op.allow_spinning",
                                         "1" if self.inter_op_spinning else "0")
        return options


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


def uses_io_binding(providers: Sequence[str]) -> bool:
    """Bind inputs and outputs when the session runs on CUDA: the inputs are copied to the
    device once, and onnxruntime writes the outputs into host buffers it allocates itself,
    instead of ``run`` copying each output back through an intermediate device tensor. On
    the CPU provider there is no copy to save, and ``run`` stays the faster call."""
    return bool(providers) and providers[0] == CUDA


def _spec(arg: ort.NodeArg) -> TensorSpec:
    datatype = BY_ORT_TYPE.get(arg.type)
    if datatype is None:
        raise ModelLoadError(f"tensor {quoted(arg.name)} has type {arg.type[:32]}, which bnserve "
                             "cannot serve")
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape or ())
    return TensorSpec(arg.name, datatype.name, shape)


class OnnxRuntimeSession:
    """One onnxruntime InferenceSession and the metadata derived from its graph."""

    def __init__(self, path: Path, *, device: str = "cpu",
                 tuning: SessionTuning | None = None) -> None:
        tuning = tuning or SessionTuning()
        options = tuning.options()
        self.tuning = tuning
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
        self.io_binding = uses_io_binding(self.providers)
        log.debug("loaded %s on %s (io binding %s)", path, self.providers, self.io_binding)

    def run(
        self, feeds: dict[str, np.ndarray], output_names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        names = list(output_names) if output_names else [o.name for o in self.outputs]
        try:
            results = self._bound_run(names, feeds) if self.io_binding else (
                self._session.run(names, feeds))
        except InvalidArgument as exc:
            # Values the graph cannot take (a token id past the vocabulary, say): the
            # client's input, not a server fault.
            raise InvalidInputError(f"the model rejected the input: {_short(exc)}") from exc
        return dict(zip(names, results, strict=True))


    def _bound_run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        # One binding per run: concurrent instances never share one.
        binding = self._session.io_binding()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        for name in names:
            binding.bind_output(name, "cpu")
        self._session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()


def _short(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text.split(" : ", 3)[-1][:300]  # drop onnxruntime's "[ONNXRuntimeError] : 2 : ..."


def available_providers() -> list[str]:
    return list(ort.get_available_providers())
