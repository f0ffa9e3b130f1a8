"""Domain errors of the server, each carrying the gRPC status it is answered with.

    ServingError                      (base; never raised itself)
     +-- ModelNotFoundError           NOT_FOUND: unknown model or version
     +-- InvalidInputError            INVALID_ARGUMENT: a request that does not fit the model
     +-- ModelNotReadyError           UNAVAILABLE: not loaded (yet), failed to load, draining,
     |                                or the server is shutting down
     +-- QueueFullError               RESOURCE_EXHAUSTED: the model's queue is full
     +-- QueueTimeoutError            DEADLINE_EXCEEDED: still queued at the model's (or the
     |                                request's) queue timeout
     +-- ResponseTooLargeError        RESOURCE_EXHAUSTED: the answer exceeds the send limit, or
     |                                unread answers already hold the server's response memory
     +-- UnauthenticatedError         UNAUTHENTICATED: a call without a token the server
     |                                accepts (inference or admin token, as the API needs)
     +-- PermissionDeniedError        PERMISSION_DENIED: a valid token without the right: an
     |                                inference token on the repository API
     +-- UnimplementedError           UNIMPLEMENTED: a declared method this server does not
     |                                offer (yet)
     +-- PreconditionError            FAILED_PRECONDITION: an admin call this server refuses
     |    |                           in its mode (load/unload outside explicit mode, no
     |    |                           admin token configured); a drift report for a version
     |    |                           without a monitor, captured inputs with capture off
     |    +-- ModelLoadError          a version that must not be served; ``reason`` is short
     |         +-- ConfigError        and safe to show a client, ``detail`` goes to the log
     |                                only (it may hold host paths or onnxruntime's text)
     +-- RecalibrationFailed          (base of recalibration's refusals; never raised itself)
          +-- RecalibrationDataError      INVALID_ARGUMENT: the unlabeled inputs do not fit
          |                               the model (names, dtype, shape, values, row count)
          +-- RecalibrationSourceMissing  NOT_FOUND: no such model or version to start from
          +-- RecalibrationRefused        FAILED_PRECONDITION: the version cannot be
                                          recalibrated (no BatchNorm graph, unreadable card,
                                          a result that fails its checks, version taken)

Only ``bnserve.server.transport`` turns these into gRPC statuses (and
``bnserve.server.streaming`` into a stream response's ``error_message``; ``auth``'s
interceptor answers token refusals before any handler runs), both through
``client_message``; anything else that escapes a handler is a server bug and is answered
INTERNAL with a generic message and a request id.
"""

from __future__ import annotations

import grpc


def quoted(text: str, limit: int = 64) -> str:
    """A name from a request or a file, quoted for a message, never longer than ``limit``:
    a client's 1 MB model name must not come back in a status."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


MAX_STATUS_CHARS = 1024  # a status message is a sentence, never a dump


class ServingError(Exception):
    status_code: grpc.StatusCode = grpc.StatusCode.INTERNAL


def client_message(exc: ServingError) -> str:
    """What a client is told about ``exc``: its message, never longer than MAX_STATUS_CHARS."""
    message = str(exc)
    if len(message) > MAX_STATUS_CHARS:
        message = message[:MAX_STATUS_CHARS] + "..."
    return message


class ModelNotFoundError(ServingError):
    status_code = grpc.StatusCode.NOT_FOUND


class InvalidInputError(ServingError):
    status_code = grpc.StatusCode.INVALID_ARGUMENT


class ModelNotReadyError(ServingError):
    status_code = grpc.StatusCode.UNAVAILABLE


class QueueFullError(ServingError):
    status_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class QueueTimeoutError(ServingError):
    status_code = grpc.StatusCode.DEADLINE_EXCEEDED


class ResponseTooLargeError(ServingError):
    status_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class UnauthenticatedError(ServingError):
    status_code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDeniedError(ServingError):
    status_code = grpc.StatusCode.PERMISSION_DENIED


class UnimplementedError(ServingError):
    status_code = grpc.StatusCode.UNIMPLEMENTED


class PreconditionError(ServingError):
    status_code = grpc.StatusCode.FAILED_PRECONDITION


class ModelLoadError(PreconditionError):
    """Why a model version is not served. ``str(exc)`` is the short, client-safe reason."""

    def __init__(self, reason: str, detail: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail or reason  # for the log: may name paths and library errors


class ConfigError(ModelLoadError):
    """A config.pbtxt (or a load request's config) that cannot be honoured."""


class RecalibrationFailed(ServingError):
    """Why recalibration published nothing (``bnserve.server.recalibration``). The message
    is short and safe for a client: field names and what was expected, never host paths,
    class names or library text."""


class RecalibrationDataError(RecalibrationFailed, InvalidInputError):
    """The unlabeled inputs do not fit the model."""


class RecalibrationSourceMissing(RecalibrationFailed, ModelNotFoundError):
    """The model or version to recalibrate is not in the repository."""


class RecalibrationRefused(RecalibrationFailed, PreconditionError):
    """The version cannot be recalibrated, or the result failed its checks."""
