"""An onnxruntime session whose frozen statistics are fed at run time, not baked in.

Recalibration runs the same graph many times with other statistics (layer after layer,
and the report for every sample size); rebuilding a session each time would cost more
than the runs. An initializer that is also listed as a graph input is one onnxruntime
lets a caller override (and never constant-folds), so::

    session = FedSession(model, overridable=["bn0.running_mean", ...])
    session.run({"input": x}, {"bn0.running_mean": new_mean})   # others keep their values

Data goes through in chunks of ``chunk_rows`` rows, so memory stays bounded whatever N is.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

# Rows per onnxruntime run: big enough to amortize a run's overhead on small graphs, small
# enough that the activations of the digits CNN stay a few MB.
CHUNK_ROWS = 256
# What onnxruntime raises when it cannot build or run a session (plain Exceptions, not
# RuntimeError); callers turn them into their own errors.
ORT_ERRORS: tuple[type[Exception], ...] = (
    _ort_state.Fail, _ort_state.InvalidArgument, _ort_state.InvalidGraph,
    _ort_state.InvalidProtobuf, _ort_state.RuntimeException, _ort_state.NotImplemented,
)


def initializers_as_inputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of ``model`` in which the initializers ``names`` are also graph inputs."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    initializers = {t.name: t for t in model.graph.initializer}
    declared = {i.name for i in model.graph.input}
    for name in names:
        if name in declared:
            continue
        tensor = initializers[name]
        model.graph.input.append(helper.make_tensor_value_info(name, tensor.data_type,
                                                               list(tensor.dims)))
        declared.add(name)
    return model


class FedSession:
    """One onnxruntime session of ``model`` with ``overridable`` initializers fed per run."""

    def __init__(self, model: onnx.ModelProto, overridable: Sequence[str], *,
                 intra_op_threads: int = 1, chunk_rows: int = CHUNK_ROWS) -> None:
        fed = initializers_as_inputs(model, overridable)
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        # Its warning that fed initializers are not constant-folded is this class's point.
        options.log_severity_level = 3
        self._session = ort.InferenceSession(fed.SerializeToString(), options,
                                             providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self._session.get_outputs()]
        initializers = {t.name: t for t in model.graph.initializer}
        # The dtype and shape each override must have (float32 for exported statistics).
        self.overridable = {name: (helper.tensor_dtype_to_np_dtype(initializers[name].data_type),
                                   tuple(initializers[name].dims)) for name in overridable}
        self.chunk_rows = chunk_rows

    def run_chunks(self, inputs: Mapping[str, np.ndarray],
                   overrides: Mapping[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        """The outputs of each chunk of rows of ``inputs``, with ``overrides`` fed."""
        fed = {}
        for name, value in overrides.items():
            dtype, shape = self.overridable[name]
            fed[name] = np.asarray(value, dtype=dtype).reshape(shape)
        rows = len(next(iter(inputs.values())))
        for start in range(0, rows, self.chunk_rows):
            chunk = {n: a[start:start + self.chunk_rows] for n, a in inputs.items()}
            answers = self._session.run(self.output_names, {**chunk, **fed})
            yield dict(zip(self.output_names, answers, strict=True))

    def run(self, inputs: Mapping[str, np.ndarray],
            overrides: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """All rows' outputs, chunks concatenated along the batch axis."""
        chunks = list(self.run_chunks(inputs, overrides))
        return {n: np.concatenate([c[n] for c in chunks]) for n in self.output_names}
