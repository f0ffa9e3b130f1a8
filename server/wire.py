"""ModelInferRequest -> numpy inputs, numpy outputs -> ModelInferResponse. Pure functions."""

from __future__ import annotations

import numpy as np

from bnserve.proto import open_inference_pb2 as pb
from bnserve.proto.tensors import (
    TensorCodecError,
    datatype_of,
    decode_contents,
    decode_raw,
    encode_raw,
    has_contents,
)
from bnserve.repository.layout import PLATFORM
from bnserve.server.errors import InvalidInputError, quoted
from bnserve.server.model import RequestedOutput, ServedModel


def inputs_from_request(request: pb.ModelInferRequest) -> dict[str, np.ndarray]:
    """Decode every input tensor; raise InvalidInputError naming the one that is wrong."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInputError(
            f"raw_input_contents has {len(raw)} entries but the request has "
            f"{len(request.inputs)} inputs; send one entry per input, in order"
        )
    decoded: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        name = f"input {tensor.name!r}"
        if not tensor.name:
            raise InvalidInputError(f"inputs[{index}] has no name")
        if tensor.name in decoded:
            raise InvalidInputError(f"{name} appears twice in the request")
        try:
            if raw:
                if has_contents(tensor.contents):
                    raise InvalidInputError(
                        f"{name} has typed contents but the request also uses "
                        "raw_input_contents; use one or the other"
                    )
                array = decode_raw(raw[index], tensor.datatype, tensor.shape, name=name)
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


MAX_CLASSIFICATION = 1_000_000


def requested_outputs(request: pb.ModelInferRequest) -> list[RequestedOutput]:
    """The outputs asked for, each with its classification K when it has one."""
    outputs = []
    for output in request.outputs:
        k = None
        if "classification" in output.parameters:
            parameter = output.parameters["classification"]
            kind = parameter.WhichOneof("parameter_choice")
            value = getattr(parameter, kind) if kind in ("int64_param", "uint64_param") else None
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



def response_from_outputs(
    request: pb.ModelInferRequest, model_name: str, version: str, outputs: dict[str, np.ndarray]
) -> pb.ModelInferResponse:
    """Outputs travel as raw contents, as Triton sends them, in the order requested."""
    response = pb.ModelInferResponse(model_name=model_name, model_version=version, id=request.id)
    for name, array in outputs.items():
        response.outputs.add(name=name, datatype=datatype_of(array.dtype), shape=array.shape)
        response.raw_output_contents.append(encode_raw(array))
    return response
