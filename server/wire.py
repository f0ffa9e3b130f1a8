"""ModelInferRequest -> checked headers and numpy inputs; metadata answers. Pure functions
(the answers' bytes are assembled by ``bnserve.server.codec``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bnserve.proto import open_inference_pb2 as pb
from bnserve.proto.tensors import (
    TensorCodecError,
    check_shape,
    decode_contents,
    decode_raw,
    dtype_of,
    has_contents,
)
from bnserve.repository.layout import PLATFORM
from bnserve.server.errors import InvalidInputError, quoted
from bnserve.server.model import Header, RequestedOutput, ServedModel


def input_headers(request: pb.ModelInferRequest, raw: Sequence[bytes | memoryview]
                  ) -> dict[str, Header]:
    """Each input's datatype and shape, checked before any data is decoded."""
    if raw and len(raw) != len(request.inputs):
        raise InvalidInputError(
            f"raw_input_contents has {len(raw)} entries but the request has "
            f"{len(request.inputs)} inputs; send one entry per input, in order"
        )
    headers: dict[str, Header] = {}
    for index, tensor in enumerate(request.inputs):
        if not tensor.name:
            raise InvalidInputError(f"inputs[{index}] has no name")
        name = f"input {quoted(tensor.name, 128)}"
        if tensor.name in headers:
            raise InvalidInputError(f"{name} appears twice in the request")
        try:
            shape = check_shape(tensor.shape, name=name)
            dtype_of(tensor.datatype, name=name)
        except TensorCodecError as exc:
            raise InvalidInputError(str(exc)) from None
        headers[tensor.name] = (tensor.datatype, shape)
    return headers


def decode_inputs(request: pb.ModelInferRequest, raw: Sequence[bytes | memoryview]
                  ) -> dict[str, np.ndarray]:
    """Decode every input tensor; raise InvalidInputError naming the one that is wrong."""
    decoded: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        name = f"input {quoted(tensor.name, 128)}"
        try:
            if raw:
                if has_contents(tensor.contents):
                    raise InvalidInputError(
                        f"{name} has typed contents but the request also uses "
                        "raw_input_contents; use one or the other"
                    )
                # A view of the request's bytes: onnxruntime only reads it, and a merged
                # batch is copied once by the batcher's concatenate.
                array = decode_raw(raw[index], tensor.datatype, tensor.shape, name=name,
                                   copy=False)
            elif has_contents(tensor.contents) or _is_empty_shape(tensor.shape):
                array = decode_contents(tensor.contents, tensor.datatype, tensor.shape, name=name)
            else:
                raise InvalidInputError(
                    f"{name} has no data: fill contents or raw_input_contents"
                )
        except TensorCodecError as exc:
            raise InvalidInputError(str(exc)) from None
        decoded[tensor.name] = array
    return decoded


def _is_empty_shape(shape) -> bool:
    return any(d == 0 for d in shape)


def _integer(parameter: pb.InferParameter) -> int | None:
    """An InferParameter's integer value; None when it holds something else."""
    kind = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, kind) if kind in ("int64_param", "uint64_param") else None


MAX_TIMEOUT_US = 3600 * 10**6  # an hour: a longer queue timeout is no timeout at all


def request_timeout(request: pb.ModelInferRequest) -> float | None:
    """Triton's ``timeout`` request parameter (microseconds in the queue) in seconds; 0 or
    absent: the model's own queue timeout."""
    if "timeout" not in request.parameters:
        return None
    value = _integer(request.parameters["timeout"])
    if value is None or not 0 <= value <= MAX_TIMEOUT_US:
        raise InvalidInputError(
            f"parameters['timeout'] must be an integer number of microseconds from 0 to "
            f"{MAX_TIMEOUT_US}")
    return value / 1e6 if value else None


MAX_CLASSIFICATION = 1_000_000


def requested_outputs(request: pb.ModelInferRequest) -> list[RequestedOutput]:
    """The outputs asked for, each with its classification K when it has one."""
    outputs = []
    for output in request.outputs:
        k = None
        if "classification" in output.parameters:
            value = _integer(output.parameters["classification"])
            if value is None or not 1 <= value <= MAX_CLASSIFICATION:
                raise InvalidInputError(
                    f"output {quoted(output.name, 128)}: parameter 'classification' must be an integer "
                    f"from 1 to {MAX_CLASSIFICATION} (the number of top classes)")
            k = int(value)
        outputs.append(RequestedOutput(output.name, k))
    return outputs


def metadata_response(model: ServedModel, versions: list[int]) -> pb.ModelMetadataResponse:
    response = pb.ModelMetadataResponse(name=model.name, versions=[str(v) for v in versions],
                                        platform=PLATFORM)
    for spec in model.inputs:
        response.inputs.add(name=spec.name, datatype=spec.datatype, shape=spec.shape)
    for spec in model.outputs:
        response.outputs.add(name=spec.name, datatype=spec.datatype, shape=spec.shape)
    return response


