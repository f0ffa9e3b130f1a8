"""Write new statistics into an unfolded graph, and fold its BatchNorm layers again.

    unfolded graph (BatchNormalization nodes) --with_statistics--> same graph, new running
        mean/var and input mean/std (same names, dtypes and shapes; nothing else touched)
    --refold--> the served graph: each BatchNorm folded into the Conv/Gemm before it

``refold`` is the exporter's own folding step (``bnserve.training.export``: the folded
variant is ``onnxscript.optimizer.optimize`` of the trace), so a recalibrated version is
folded exactly as an exported one; on the exporter's unfolded graph with unchanged
statistics it gives the exporter's folded graph back (tests/server/test_onnxruntime_recalibration.py).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping

import numpy as np
import onnx
from onnx import numpy_helper


def with_statistics(model: onnx.ModelProto, values: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``model`` whose initializers ``values`` names hold the new values, cast to
    the initializer's own dtype and shape."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    by_name = {t.name: t for t in model.graph.initializer}
    for name, value in values.items():
        old = by_name[name]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(old.data_type)
        array = np.asarray(value, dtype=np.float64).reshape(tuple(old.dims)).astype(dtype)
        old.CopyFrom(numpy_helper.from_array(array, name))
    return model


def refold(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with BatchNorm folded, by the exporter's optimizer call."""
    import onnx_ir as ir
    from onnxscript import optimizer

    quiet = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:  # its pass-by-pass chatter is not the server's log
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=DeprecationWarning)
            graph = ir.serde.deserialize_model(model)
            optimizer.optimize(graph)
            return ir.serde.serialize_model(graph)
    finally:
        for lg, level in zip(quiet, levels, strict=True):
            lg.setLevel(level)
