"""Large ModelInfer messages without one long step holding the interpreter.

protobuf parses and serializes a message in one C call that holds the GIL: 60 MiB of raw
contents cost about 100 ms in ``FromString`` and as much again in ``SerializeToString``,
time in which no other thread, the event loop included, runs. The raw tensor bytes need no
parsing at all, so for large messages:

- ``split_infer_request`` walks the top-level fields of a ModelInferRequest (a handful of
  tags, in Python), hands ``raw_input_contents`` back as zero-copy views of the received
  bytes, and lets protobuf parse only the rest (names, shapes, parameters);
- ``join_infer_response`` takes a ModelInferResponse serialized without its id and raw
  outputs (``ResponseHeaders``: built once per distinct model, version and output shapes,
  not per answer) and appends the id and each raw output as length-delimited fields 3 and
  6, which protobuf reads as the same message (fields may come in any order on the wire).

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
_RESPONSE_ID_FIELD = pb.ModelInferResponse.DESCRIPTOR.fields_by_name["id"].number  # 3
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


_RAW_TAG = encode_varint(_RESPONSE_RAW_FIELD << 3 | _LENGTH_DELIMITED)
_ID_TAG = encode_varint(_RESPONSE_ID_FIELD << 3 | _LENGTH_DELIMITED)


def join_infer_response(header: bytes, request_id: str, raw_outputs: list[bytes]) -> bytes:
    """A ModelInferResponse: ``header`` (its fields but the id and raw outputs, serialized),
    the request's id, then each raw output."""
    parts = [header]
    if request_id:
        encoded = request_id.encode("utf-8")
        parts += [_ID_TAG, encode_varint(len(encoded)), encoded]
    for raw in raw_outputs:
        parts += [_RAW_TAG, encode_varint(len(raw)), raw]
    return b"".join(parts)


OutputHeader = tuple[str, str, tuple[int, ...]]  # name, datatype, shape


class ResponseHeaders:
    """Serialized ModelInferResponse headers (model, version, each output's name, datatype
    and shape), kept per distinct header: a steady flow of same-shaped answers builds no
    message at all. Bounded: past ``limit`` distinct headers the cache starts over."""

    def __init__(self, limit: int = 4096) -> None:
        self.limit = limit
        self._headers: dict[tuple[str, str, tuple[OutputHeader, ...]], bytes] = {}

    def __len__(self) -> int:
        return len(self._headers)

    def header(self, model: str, version: str, outputs: tuple[OutputHeader, ...]) -> bytes:
        key = (model, version, outputs)
        found = self._headers.get(key)
        if found is None:
            response = pb.ModelInferResponse(model_name=model, model_version=version)
            for name, datatype, shape in outputs:
                response.outputs.add(name=name, datatype=datatype, shape=shape)
            found = response.SerializeToString()
            if len(self._headers) >= self.limit:
                self._headers.clear()
            self._headers[key] = found
        return found
