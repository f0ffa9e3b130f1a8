"""Build protocol requests from numpy and read numpy back from responses."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format
from numpy.typing import ArrayLike

from bnserve.client.errors import ServerError, error_from_stream
from bnserve.proto import open_inference_pb2 as pb
from bnserve.proto.tensors import datatype_of, decode_contents, decode_raw, dtype_of, encode_raw
from bnserve.proto.tokenizer import TOKENIZER_KEY, Tokenizer

__all__ = ["ClassScore", "ModelMetadata", "RepositoryModel", "TensorInfo"]


@dataclass(frozen=True)
class TensorInfo:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1: any size

    @property
    def dtype(self) -> np.dtype:
        return dtype_of(self.datatype, name=self.name)


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]


def metadata_from_response(response: pb.ModelMetadataResponse) -> ModelMetadata:
    def infos(tensors) -> tuple[TensorInfo, ...]:
        return tuple(TensorInfo(t.name, t.datatype, tuple(t.shape)) for t in tensors)

    return ModelMetadata(
        name=response.name,
        versions=tuple(response.versions),
        platform=response.platform,
        inputs=infos(response.inputs),
        outputs=infos(response.outputs),
    )


def infer_request(
    model: str,
    inputs: Mapping[str, ArrayLike],
    *,
    version: str = "",
    outputs: Sequence[str] | None = None,
    request_id: str = "",
    classification: int | None = None,
) -> pb.ModelInferRequest:
    """Inputs go as raw contents: the compact encoding, and the one every server accepts.
    ``classification``: each named output is asked for as its top K classes (Triton's
    classification extension)."""
    request = pb.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    for name, value in inputs.items():
        array = np.asarray(value)
        request.inputs.add(name=name, datatype=datatype_of(array.dtype), shape=array.shape)
        request.raw_input_contents.append(encode_raw(array))
    for name in outputs or ():
        output = request.outputs.add(name=name)
        if classification is not None:
            output.parameters["classification"].int64_param = classification
    return request


@dataclass(frozen=True)
class ClassScore:
    """One of a row's top classes, as the classification extension answers it."""

    index: int
    score: float
    label: str = ""  # "" when the server has no label for the class


def classes_from_output(array: np.ndarray) -> list[list[ClassScore]]:
    """Rows of ``"score:index"`` or ``"score:index:label"`` BYTES (the classification
    extension's answer) as rows of ClassScore, best first."""
    if array.dtype != object or array.ndim != 2:
        raise ServerError(grpc.StatusCode.UNKNOWN,
                          f"the server answered {array.dtype} {list(array.shape)} where the "
                          "classification extension gives rows of BYTES; it may not implement it")
    rows = []
    for row in array:
        classes = []
        for item in row:
            text = item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)
            score, _, rest = text.partition(":")
            index, _, label = rest.partition(":")
            try:
                classes.append(ClassScore(int(index), float(score), label))
            except ValueError:
                raise ServerError(grpc.StatusCode.UNKNOWN, "the server answered a class "
                                  f"{text[:64]!r}, not 'score:index[:label]'") from None
        rows.append(classes)
    return rows


def outputs_from_response(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    raw = response.raw_output_contents
    result = {}
    for index, tensor in enumerate(response.outputs):
        if raw:
            array = decode_raw(raw[index], tensor.datatype, tensor.shape, name=tensor.name)
        else:
            array = decode_contents(tensor.contents, tensor.datatype, tensor.shape, name=tensor.name)
        result[tensor.name] = array
    return result


# One item of stream(): named arrays, sent as they are (like infer), or one array for a
# one-input model, cast to its input's dtype (like predict).
StreamItem = Mapping[str, ArrayLike] | ArrayLike

STATUS_PARAMETER = "bnserve_status"  # a bnserve error response's gRPC status name


def stream_request(
    model: str,
    item: StreamItem,
    *,
    index: int,
    version: str,
    outputs: Sequence[str] | None,
    meta: ModelMetadata | None,
) -> pb.ModelInferRequest:
    """The request for item ``index`` of a stream; its id is the index. ``meta`` (the model's
    metadata) is needed only when ``item`` is a bare array."""
    if isinstance(item, Mapping):
        inputs = item
    else:
        assert meta is not None, "a bare array needs the model's metadata"
        if len(meta.inputs) != 1:
            raise ValueError(f"model {meta.name!r} has {len(meta.inputs)} inputs; "
                             "stream dicts of named arrays")
        inputs = {meta.inputs[0].name: np.asarray(item, dtype=meta.inputs[0].dtype)}
    return infer_request(model, inputs, version=version, outputs=outputs, request_id=str(index))


def stream_result(response: pb.ModelStreamInferResponse, index: int) -> dict[str, np.ndarray]:
    """The outputs of item ``index``, or its error raised (a BnserveError with ``.index``)."""
    answer = response.infer_response
    if answer.id and answer.id != str(index):
        raise ServerError(grpc.StatusCode.UNKNOWN,
                          f"the server answered request {answer.id[:64]!r} in the place of "
                          f"{str(index)!r}: responses out of order", index=index)
    if response.error_message:
        status = answer.parameters[STATUS_PARAMETER].string_param \
            if STATUS_PARAMETER in answer.parameters else ""
        raise error_from_stream(response.error_message, status, index)
    return outputs_from_response(answer)


def predict_chunks(
    meta: ModelMetadata, array: ArrayLike, batch_size: int | None
) -> tuple[str, str, list[np.ndarray]]:
    """For ``predict``: the input and output names, and the array cast and split into requests."""
    if len(meta.inputs) != 1:
        raise ValueError(f"model {meta.name!r} has {len(meta.inputs)} inputs; use infer()")
    x = np.asarray(array, dtype=meta.inputs[0].dtype)
    step = batch_size or max(len(x), 1)
    chunks = [x[start : start + step] for start in range(0, max(len(x), 1), step)]
    return meta.inputs[0].name, meta.outputs[0].name, chunks


@dataclass(frozen=True)
class RepositoryModel:
    """One row of the repository index: a model version and its state."""

    name: str
    version: str  # "" for a row about the whole model
    state: str  # READY, LOADING, UNLOADING, UNAVAILABLE
    reason: str


def index_from_response(response: pb.RepositoryIndexResponse) -> list[RepositoryModel]:
    return [RepositoryModel(m.name, m.version, m.state, m.reason) for m in response.models]


def load_request(model: str, config: Mapping[str, Any] | str | None) -> pb.RepositoryModelLoadRequest:
    """``config``: a ModelConfig as a dict or JSON text, applied instead of config.pbtxt."""
    request = pb.RepositoryModelLoadRequest(model_name=model)
    if config is not None:
        text = config if isinstance(config, str) else json.dumps(dict(config))
        request.parameters["config"].string_param = text
    return request


def tokenizer_from_config(config: Any) -> Tokenizer | None:
    """The tokenizer a ModelConfig reports (parameter ``bnserve.tokenizer``), None when it
    reports none; ``TokenizerError`` when the spec is malformed."""
    if TOKENIZER_KEY not in config.parameters:
        return None
    return Tokenizer.from_json(config.parameters[TOKENIZER_KEY].string_value)


def as_dict(message: Any) -> dict[str, Any]:
    """A response message as plain data, with the .proto's field names."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def bearer_metadata(token: str | None) -> tuple[tuple[str, str], ...] | None:
    return None if token is None else (("authorization", f"Bearer {token}"),)
