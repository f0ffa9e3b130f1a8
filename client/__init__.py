"""bnserve's client SDK: numpy in, numpy out, over the Open Inference Protocol (gRPC).

    from bnserve.client import Client
    with Client("localhost:8001") as c:
        probabilities = c.predict("digits", images)
        ranked = c.classify("text", c.tokenizer("text").encode(["the team won the final"]))

Needs only grpcio, protobuf and numpy.
"""

from bnserve.client.aio import AsyncClient
from bnserve.client.errors import (
    BnserveError,
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidRequestError,
    ModelNotFoundError,
    ServerBusyError,
    ServerError,
    ServerUnavailableError,
    UnauthenticatedError,
)
from bnserve.client.messages import ClassScore, ModelMetadata, RepositoryModel, TensorInfo
from bnserve.client.monitor import DriftPoint, DriftReport, LayerDrift, Recalibration
from bnserve.client.sync import Client
from bnserve.proto.tokenizer import TextEncodingError, Tokenizer, TokenizerError

__all__ = [
    "AsyncClient",
    "BnserveError",
    "ClassScore",
    "Client",
    "DeadlineExceededError",
    "DriftPoint",
    "DriftReport",
    "FailedPreconditionError",
    "InvalidRequestError",
    "LayerDrift",
    "ModelMetadata",
    "ModelNotFoundError",
    "Recalibration",
    "RepositoryModel",
    "ServerBusyError",
    "ServerError",
    "ServerUnavailableError",
    "TensorInfo",
    "TextEncodingError",
    "Tokenizer",
    "TokenizerError",
    "UnauthenticatedError",
]
