"""The one datatype table: protocol name <-> numpy dtype <-> ONNX element type <->
onnxruntime type string <-> Triton ``config.pbtxt`` DataType.

Every other module looks datatypes up here (the codec, the server's runtime and config
checks, the exporter's model card), so a datatype is added or fixed in one place.
Plain data, importable by the thin client: no onnx or onnxruntime import.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Datatype:
    name: str  # the protocol's spelling, e.g. "FP32"
    dtype: np.dtype  # little-endian numpy dtype; object for BYTES
    contents_field: str | None  # InferTensorContents field; None: raw contents only
    onnx_type: int  # onnx.TensorProto.DataType value
    ort_type: str  # what onnxruntime's NodeArg.type says
    config_type: str  # Triton's ModelConfig DataType enum name


_TABLE = [
    Datatype("BOOL", np.dtype(np.bool_), "bool_contents", 9, "tensor(bool)", "TYPE_BOOL"),
    Datatype("UINT8", np.dtype("<u1"), "uint_contents", 2, "tensor(uint8)", "TYPE_UINT8"),
    Datatype("UINT16", np.dtype("<u2"), "uint_contents", 4, "tensor(uint16)", "TYPE_UINT16"),
    Datatype("UINT32", np.dtype("<u4"), "uint_contents", 12, "tensor(uint32)", "TYPE_UINT32"),
    Datatype("UINT64", np.dtype("<u8"), "uint64_contents", 13, "tensor(uint64)", "TYPE_UINT64"),
    Datatype("INT8", np.dtype("<i1"), "int_contents", 3, "tensor(int8)", "TYPE_INT8"),
    Datatype("INT16", np.dtype("<i2"), "int_contents", 5, "tensor(int16)", "TYPE_INT16"),
    Datatype("INT32", np.dtype("<i4"), "int_contents", 6, "tensor(int32)", "TYPE_INT32"),
    Datatype("INT64", np.dtype("<i8"), "int64_contents", 7, "tensor(int64)", "TYPE_INT64"),
    # FP16 travels as raw contents only: the typed message has no 16-bit float field.
    Datatype("FP16", np.dtype("<f2"), None, 10, "tensor(float16)", "TYPE_FP16"),
    Datatype("FP32", np.dtype("<f4"), "fp32_contents", 1, "tensor(float)", "TYPE_FP32"),
    Datatype("FP64", np.dtype("<f8"), "fp64_contents", 11, "tensor(double)", "TYPE_FP64"),
    Datatype("BYTES", np.dtype(np.object_), "bytes_contents", 8, "tensor(string)", "TYPE_STRING"),
]

BY_NAME: dict[str, Datatype] = {d.name: d for d in _TABLE}
BY_ONNX_TYPE: dict[int, Datatype] = {d.onnx_type: d for d in _TABLE}
BY_ORT_TYPE: dict[str, Datatype] = {d.ort_type: d for d in _TABLE}
BY_CONFIG_TYPE: dict[str, Datatype] = {d.config_type: d for d in _TABLE}
_BY_KIND: dict[tuple[str, int], Datatype] = {
    (d.dtype.kind, d.dtype.itemsize): d for d in _TABLE if d.name != "BYTES"
}


def for_numpy(dtype: np.dtype | type) -> Datatype | None:
    """The datatype of a numpy dtype (str/bytes/object arrays are BYTES); None if it has none."""
    dtype = np.dtype(dtype)
    if dtype.kind in "OSU":
        return BY_NAME["BYTES"]
    return _BY_KIND.get((dtype.kind, dtype.itemsize))
