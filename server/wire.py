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
from bnserve.server.errors import InvalidInputError


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


def requested_outputs(request: pb.ModelInferRequest) -> list[str]:
    return [output.name for output in request.outputs]


def response_from_outputs(
    request: pb.ModelInferRequest, model_name: str, version: str, outputs: dict[str, np.ndarray]
) -> pb.ModelInferResponse:
    """Outputs travel as raw contents, as Triton sends them, in the order requested."""
    response = pb.ModelInferResponse(model_name=model_name, model_version=version, id=request.id)
    for name, array in outputs.items():
        response.outputs.add(name=name, datatype=datatype_of(array.dtype), shape=array.shape)
        response.raw_output_contents.append(encode_raw(array))
    return response
