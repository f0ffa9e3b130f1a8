"""numpy <-> Open Inference Protocol tensors, shared by the client and the server.

Pure functions, symmetric pairs:

- ``datatype_of(dtype)`` / ``dtype_of(datatype)``: numpy dtype <-> protocol datatype string;
- ``encode_raw(array)`` / ``decode_raw(raw, datatype, shape, name)``: raw contents;
- ``encode_contents(array, contents)`` / ``decode_contents(contents, datatype, shape, name)``:
  the typed ``InferTensorContents`` fields.

Every decoding error raises ``TensorCodecError`` with a message that names the tensor and
says what was expected; the server answers it with INVALID_ARGUMENT.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

import numpy as np

from bnserve.proto import open_inference_pb2 as pb
from bnserve.proto.datatypes import BY_NAME, Datatype, for_numpy


class TensorCodecError(ValueError):
    """A tensor in a message does not match its declared datatype or shape."""


DATATYPES: dict[str, Datatype] = BY_NAME  # protocol name -> Datatype (bnserve.proto.datatypes)
CONTENTS_FIELDS = tuple(pb.InferTensorContents.DESCRIPTOR.fields_by_name)


def datatype_of(dtype: np.dtype | type) -> str:
    """The protocol datatype for a numpy dtype (str/bytes/object arrays are BYTES)."""
    found = for_numpy(dtype)
    if found is None:
        raise TensorCodecError(f"numpy dtype {dtype} has no Open Inference Protocol datatype")
    return found.name


def dtype_of(datatype: str, *, name: str = "tensor") -> np.dtype:
    """The numpy dtype for a protocol datatype, or TensorCodecError naming the tensor."""
    try:
        return DATATYPES[datatype].dtype
    except KeyError:
        known = ", ".join(DATATYPES)
        raise TensorCodecError(
            f"{name}: unsupported datatype {datatype[:32]!r}; expected one of {known}"
        ) from None


# Far above any model's, low enough that no shape can make numpy (or a message) explode.
MAX_RANK = 16
MAX_DIMENSION = 2**31 - 1


def check_shape(shape: Sequence[int], *, name: str) -> tuple[int, ...]:
    if len(shape) > MAX_RANK:
        raise TensorCodecError(f"{name}: shape has rank {len(shape)}; at most {MAX_RANK}")
    dims = tuple(shape)  # protobuf's repeated int64: Python ints already
    # min/max over a tuple of ints run in C: this is on every request's path.
    if dims and min(dims) < 0:
        raise TensorCodecError(f"{name}: shape {list(dims)} has a negative dimension")
    if dims and max(dims) > MAX_DIMENSION:
        raise TensorCodecError(
            f"{name}: shape {list(dims)} has a dimension above {MAX_DIMENSION}")
    return dims


def element_count(shape: Sequence[int]) -> int:
    # Python ints: np.prod in int64 wraps around for huge shapes and would pass size checks.
    return math.prod(int(d) for d in shape)


# ---- raw contents -------------------------------------------------------------------------


def encode_raw(array: np.ndarray) -> bytes:
    """Row-major, little-endian bytes; BYTES elements as 4-byte length + payload."""
    if datatype_of(array.dtype) == "BYTES":
        parts = []
        for item in np.asarray(array).ravel(order="C"):
            data = item.encode("utf-8") if isinstance(item, str) else bytes(item)
            parts.append(struct.pack("<I", len(data)) + data)
        return b"".join(parts)
    little = np.ascontiguousarray(array.astype(array.dtype.newbyteorder("<"), copy=False))
    if little.nbytes <= _CHUNK_BYTES:
        return little.tobytes()
    # tobytes() holds the GIL for the whole copy (60 ms for 60 MiB here), bytes.join of
    # bytes releases it: chunks, then one join.
    flat = little.reshape(-1).view(np.uint8)
    return b"".join(flat[i : i + _CHUNK_BYTES].tobytes()
                    for i in range(0, flat.size, _CHUNK_BYTES))


def decode_raw(raw: bytes, datatype: str, shape: Sequence[int], *, name: str,
               copy: bool = True) -> np.ndarray:
    """``copy=False``: a read-only view of ``raw`` (the server's inputs, which only
    onnxruntime reads and a merged batch copies anyway); callers keep a writable copy."""
    dims = check_shape(shape, name=name)
    dtype = dtype_of(datatype, name=name)
    count = element_count(dims)
    if datatype == "BYTES":
        return _decode_raw_bytes(raw, dims, count, name=name)
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise TensorCodecError(
            f"{name}: raw contents hold {len(raw)} bytes, but {datatype} with shape "
            f"{list(dims)} needs {expected}"
        )
    array = np.frombuffer(raw, dtype=dtype).reshape(dims)
    return array.copy() if copy else array


def _decode_raw_bytes(raw: bytes, dims: tuple[int, ...], count: int, *, name: str) -> np.ndarray:
    out = np.empty(count, dtype=object)
    if count and _equal_length_items(raw, count, out):
        return out.reshape(dims)
    items: list[bytes] = []
    offset, size = 0, len(raw)
    unpack = struct.Struct("<I").unpack_from
    while offset < size:
        if offset + 4 > size:
            raise TensorCodecError(f"{name}: BYTES raw contents end inside a length prefix")
        if len(items) == count:
            break  # more elements than the shape holds: reported below
        (length,) = unpack(raw, offset)
        offset += 4
        if offset + length > size:
            raise TensorCodecError(f"{name}: BYTES element {len(items)} runs past the end")
        items.append(bytes(raw[offset : offset + length]))
        offset += length
    if len(items) != count or offset != size:
        found = f"{len(items)}" if offset == size else f"more than {count}"
        raise TensorCodecError(
            f"{name}: raw contents hold {found} BYTES elements, shape {list(dims)} "
            f"needs {count}"
        )
    out[:] = items
    return out.reshape(dims)


def _equal_length_items(raw: bytes, count: int, out: np.ndarray) -> bool:
    """Fill ``out`` without a Python loop over the prefixes when every element has the
    length of the first (fixed-width tokens, padded text: the common large case)."""
    if len(raw) < 4 or len(raw) % count:
        return False
    stride = len(raw) // count
    (length,) = struct.unpack_from("<I", raw, 0)
    if length != stride - 4:
        return False
    table = np.frombuffer(raw, dtype=np.uint8).reshape(count, stride)
    if not np.all(table[:, :4].copy().view("<u4") == length):
        return False
    items = table[:, 4:]
    for start in range(0, count, _CHUNK_ELEMENTS):  # bytes objects, a chunk at a time
        part = items[start : start + _CHUNK_ELEMENTS]
        out[start : start + len(part)] = [row.tobytes() for row in part]
    return True


_CHUNK_BYTES = 4 << 20

# Typed contents and BYTES items become numpy a chunk at a time: each step is one short C
# call, so a worker thread decoding 60 MiB lets the event loop run between chunks.
_CHUNK_ELEMENTS = 1 << 18


# ---- typed contents -----------------------------------------------------------------------


def encode_contents(array: np.ndarray, contents: pb.InferTensorContents) -> None:
    """Fill the typed field of ``contents`` that matches the array's datatype."""
    datatype = DATATYPES[datatype_of(array.dtype)]
    if datatype.contents_field is None:
        raise TensorCodecError(f"{datatype.name} travels only as raw contents")
    flat = np.asarray(array).ravel(order="C")
    if datatype.name == "BYTES":
        values = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in flat]
    else:
        values = flat.tolist()
    getattr(contents, datatype.contents_field).extend(values)


def decode_contents(
    contents: pb.InferTensorContents, datatype: str, shape: Sequence[int], *, name: str
) -> np.ndarray:
    dims = check_shape(shape, name=name)
    dtype = dtype_of(datatype, name=name)
    field = DATATYPES[datatype].contents_field
    if field is None:
        raise TensorCodecError(f"{name}: {datatype} data must be sent as raw contents")
    for other in CONTENTS_FIELDS:
        if other != field and len(getattr(contents, other)):
            raise TensorCodecError(
                f"{name}: {datatype} data goes in contents.{field}, not contents.{other}"
            )
    values = getattr(contents, field)
    count = element_count(dims)
    if len(values) != count:
        raise TensorCodecError(
            f"{name}: contents.{field} holds {len(values)} values, shape {list(dims)} "
            f"needs {count}"
        )
    out = np.empty(count, dtype=object if datatype == "BYTES" else dtype)
    for start in range(0, count, _CHUNK_ELEMENTS):
        part = values[start : start + _CHUNK_ELEMENTS]
        out[start : start + len(part)] = (
            part if datatype == "BYTES" else _typed_chunk(part, dtype, field, datatype, name))
    return out.reshape(dims)


# Each typed field's values fit these (int_contents is int32, uint64_contents uint64, ...).
_WIDE = {"f": np.float64, "i": np.int64, "u": np.uint64, "b": np.bool_}


def _typed_chunk(part, dtype: np.dtype, field: str, datatype: str, name: str) -> np.ndarray:
    out_of_range = f"{name}: a value in contents.{field} is out of {datatype} range"
    try:
        # The typed fields are wider than small ints: refuse values that would wrap.
        wide = np.asarray(part, dtype=_WIDE[dtype.kind])
        array = wide.astype(dtype)
        if dtype.kind in "iu" and len(part) and not np.array_equal(array, wide):
            raise TensorCodecError(out_of_range)
    except OverflowError:
        raise TensorCodecError(out_of_range) from None
    return array


def has_contents(contents: pb.InferTensorContents) -> bool:
    # Every field is repeated: ListFields() names the non-empty ones (one C call instead of
    # a getattr per field on every request). Not ByteSize(), which upb computes by
    # serializing: a copy of the whole payload on every typed-contents request.
    return bool(contents.ListFields())
