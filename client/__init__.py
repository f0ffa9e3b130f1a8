"""bnserve's client SDK: numpy in, numpy out, over the Open Inference Protocol (gRPC).

    from bnserve.client import Client
    with Client("localhost:8001") as c:
        probabilities = c.predict("digits", images)

Needs only grpcio, protobuf and numpy.
"""

from bnserve.client.aio import AsyncClient
from bnserve.client.errors import (
    BnserveError,
    DeadlineExceededError,
    InvalidRequestError,
    ModelNotFoundError,
    ServerBusyError,
    ServerError,
    ServerUnavailableError,
)
from bnserve.client.messages import ModelMetadata, TensorInfo
from bnserve.client.sync import Client

__all__ = [
    "AsyncClient",
    "BnserveError",
    "Client",
    "DeadlineExceededError",
    "InvalidRequestError",
    "ModelMetadata",
    "ModelNotFoundError",
    "ServerBusyError",
    "ServerError",
    "ServerUnavailableError",
    "TensorInfo",
]
