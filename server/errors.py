"""Domain errors of the server, each carrying the gRPC status it is answered with.

    ServingError                      (base; never raised itself)
     +-- ModelNotFoundError           NOT_FOUND: unknown model or version
     +-- InvalidInputError            INVALID_ARGUMENT: a request that does not fit the model
     +-- ModelNotReadyError           UNAVAILABLE: model not loaded, or server shutting down
     +-- QueueFullError               RESOURCE_EXHAUSTED: the model's queue is full
     +-- ModelLoadError               a model that must not be served (raised at load time)

Only ``bnserve.server.servicer`` turns these into gRPC statuses; anything else that escapes
a handler is a server bug and is answered INTERNAL with a generic message.
"""

from __future__ import annotations

import grpc


class ServingError(Exception):
    status_code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class ModelNotFoundError(ServingError):
    status_code = grpc.StatusCode.NOT_FOUND


class InvalidInputError(ServingError):
    status_code = grpc.StatusCode.INVALID_ARGUMENT


class ModelNotReadyError(ServingError):
    status_code = grpc.StatusCode.UNAVAILABLE


class QueueFullError(ServingError):
    status_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class ModelLoadError(ServingError):
    status_code = grpc.StatusCode.FAILED_PRECONDITION
