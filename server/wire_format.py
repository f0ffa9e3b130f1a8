"""Large ModelInfer messages without one long step holding the interpreter.

protobuf parses and serializes a message in one C call that holds the GIL: 60 MiB of raw
contents cost about 100 ms in ``FromString`` and as much again in ``SerializeToString``,
time in which no other thread, the event loop included, runs. The raw tensor bytes need no
parsing at all, so for large messages:

- ``split_infer_request`` walks the top-level fields of a ModelInferRequest (a handful of
  tags, in Python), hands ``raw_input_contents`` back as zero-copy views of the received
  bytes, and lets protobuf parse only the rest (names, shapes, parameters);
- ``join_infer_response`` serializes a ModelInferResponse without its raw outputs and
  appends each one as a length-delimited field 6, which protobuf reads as the same message
  (repeated fields may come in any order on the wire).

Typed contents (``contents.fp32_contents`` ...) of a large request are still parsed by
protobuf (packed numbers parse at memory speed); turning them into numpy is chunked by the
codec (``bnserve.proto.tensors``).
"""

from __future__ import annotations

from google.protobuf.message import DecodeError

from bnserve.proto import open_inference_pb2 as pb

_REQUEST_RAW_FIELD = pb.ModelInferRequest.DESCRIPTOR.fields_by_name[
    "raw_input_contents"].number  # 7
_RESPONSE_RAW_FIELD = pb.ModelInferResponse.DESCRIPTOR.fields_by_name[
    "raw_output_contents"].number  # 6
_LENGTH_DELIMITED = 2


def _varint(data: memoryview, offset: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if offset >= len(data) or shift > 63:
            raise DecodeError("truncated or overlong varint")
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, offset
        shift += 7


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def split_infer_request(data: bytes) -> tuple[pb.ModelInferRequest, list[memoryview]]:
    """The request without its raw contents, and the raw contents as views of ``data``.
    DecodeError for bytes that are not a protobuf message."""
    view = memoryview(data)
    kept: list[memoryview] = []
    raw: list[memoryview] = []
    offset, size = 0, len(view)
    while offset < size:
        start = offset
        tag, offset = _varint(view, offset)
        field, wire_type = tag >> 3, tag & 7
        if field == 0:
            raise DecodeError("field number 0")
        if wire_type == 0:
            _, offset = _varint(view, offset)
        elif wire_type == 1:
            offset += 8
        elif wire_type == 5:
            offset += 4
        elif wire_type == _LENGTH_DELIMITED:
            length, offset = _varint(view, offset)
            if field == _REQUEST_RAW_FIELD:
                if offset + length > size:
                    raise DecodeError("field runs past the end")
                raw.append(view[offset:offset + length])
                offset += length
                continue
            offset += length
        else:  # groups (3, 4) are not in proto3 messages; 6, 7 do not exist
            raise DecodeError(f"wire type {wire_type}")
        if offset > size:
            raise DecodeError("field runs past the end")
        kept.append(view[start:offset])
    request = pb.ModelInferRequest.FromString(b"".join(kept))
    return request, raw


def join_infer_response(response: pb.ModelInferResponse, raw_outputs: list[bytes]) -> bytes:
    """``response`` (without raw_output_contents) serialized, then each raw output."""
    tag = encode_varint(_RESPONSE_RAW_FIELD << 3 | _LENGTH_DELIMITED)
    parts = [response.SerializeToString()]
    for raw in raw_outputs:
        parts += [tag, encode_varint(len(raw)), raw]
    return b"".join(parts)
