"""tensor codec: encode and decode are inverse for every datatype; errors name the tensor."""

from __future__ import annotations

import numpy as np
import pytest

from bnserve.proto import open_inference_pb2 as pb
from bnserve.proto.tensors import (
    DATATYPES,
    TensorCodecError,
    datatype_of,
    decode_contents,
    decode_raw,
    encode_contents,
    encode_raw,
)


def sample(datatype: str) -> np.ndarray:
    if datatype == "BOOL":
        return np.array([[True, False, True], [False, False, True]])
    if datatype == "BYTES":
        return np.array([[b"a", b"", b"\x00\xff"], [b"hello", b"x", b"yz"]], dtype=object)
    dtype = DATATYPES[datatype].dtype
    info = np.iinfo(dtype) if dtype.kind in "iu" else np.finfo(dtype)
    return np.array([[info.min, 0, 1], [info.max, 2, 3]], dtype=dtype)


@pytest.mark.parametrize("datatype", sorted(DATATYPES))
def test_raw_round_trip(datatype):
    array = sample(datatype)
    assert datatype_of(array.dtype) == datatype
    back = decode_raw(encode_raw(array), datatype, array.shape, name="t")
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


@pytest.mark.parametrize("datatype", sorted(d for d in DATATYPES if DATATYPES[d].contents_field))
def test_typed_contents_round_trip(datatype):
    array = sample(datatype)
    contents = pb.InferTensorContents()
    encode_contents(array, contents)
    back = decode_contents(contents, datatype, array.shape, name="t")
    assert back.dtype == array.dtype
    np.testing.assert_array_equal(back, array)


def test_raw_is_little_endian_row_major():
    big_endian = np.array([[1, 2], [3, 4]], dtype=">i4")
    assert encode_raw(big_endian) == np.array([1, 2, 3, 4], "<i4").tobytes()
    assert encode_raw(np.asfortranarray(big_endian)) == encode_raw(big_endian)


def test_bytes_raw_layout_is_length_prefixed():
    assert encode_raw(np.array([b"ab", b""], dtype=object)) == b"\x02\x00\x00\x00ab\x00\x00\x00\x00"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: decode_raw(b"\0" * 5, "FP32", [2], name="input 'x'"),
         "input 'x': raw contents hold 5 bytes, but FP32 with shape [2] needs 8"),
        (lambda: decode_raw(b"", "FP8", [1], name="input 'x'"), "unsupported datatype 'FP8'"),
        (lambda: decode_raw(b"\x05\0\0\0ab", "BYTES", [1], name="input 's'"), "runs past the end"),
        (lambda: decode_contents(pb.InferTensorContents(fp32_contents=[1.0]), "FP32", [2],
                                 name="input 'x'"), "holds 1 values, shape [2] needs 2"),
        (lambda: decode_contents(pb.InferTensorContents(uint_contents=[256]), "UINT8", [1],
                                 name="input 'x'"), "out of UINT8 range"),
        (lambda: decode_contents(pb.InferTensorContents(), "FP16", [1], name="input 'x'"),
         "must be sent as raw contents"),
    ],
)
def test_decoding_errors_name_the_tensor_and_the_expectation(call, message):
    with pytest.raises(TensorCodecError, match=message.replace("[", r"\[").replace("]", r"\]")):
        call()
