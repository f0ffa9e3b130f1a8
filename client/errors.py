"""Client exceptions: every failed call raises one of these, keeping the gRPC status.

    BnserveError                    (base: .code is the grpc.StatusCode, .details the message)
     +-- ModelNotFoundError         NOT_FOUND: unknown model or version
     +-- InvalidRequestError        INVALID_ARGUMENT: the request does not fit the model
     +-- ServerUnavailableError     UNAVAILABLE: no server reachable, or it is shutting down
     |                              (also CANCELLED, which a stopping server may answer)
     +-- ServerBusyError            RESOURCE_EXHAUSTED: the model's queue is full; retry later
     +-- DeadlineExceededError      DEADLINE_EXCEEDED: the call's timeout passed
     +-- UnauthenticatedError       UNAUTHENTICATED / PERMISSION_DENIED: a call without a
     |                              token the server accepts, or an inference token on the
     |                              repository API
     +-- FailedPreconditionError    FAILED_PRECONDITION: refused in the server's state (load
     |                              outside explicit mode, a model that failed to load)
     +-- ServerError                INTERNAL and anything else

``translate_rpc_errors()`` is the one place a ``grpc.RpcError`` becomes one of these; the
original error stays reachable as ``__cause__``. An item of ``stream()`` that the server
answers with an error raises the class unary ``infer()`` would, chosen by the status name a
bnserve server puts beside the message (``ServerError`` with code UNKNOWN from a server that
sends only the message, such as Triton), with ``.index`` the item's position in the stream.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import grpc

__all__ = [
    "BnserveError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "InvalidRequestError",
    "ModelNotFoundError",
    "ServerBusyError",
    "ServerError",
    "ServerUnavailableError",
    "UnauthenticatedError",
    "translate_rpc_errors",
]


class BnserveError(Exception):
    def __init__(self, code: grpc.StatusCode, details: str, *, index: int | None = None) -> None:
        where = "" if index is None else f" (stream item {index})"
        super().__init__(f"{code.name}: {details}{where}")
        self.code = code
        self.details = details
        self.index = index  # the failed item's position in a stream; None outside streams


class ModelNotFoundError(BnserveError):
    pass


class InvalidRequestError(BnserveError):
    pass


class ServerUnavailableError(BnserveError):
    pass


class ServerBusyError(BnserveError):
    pass


class DeadlineExceededError(BnserveError):
    pass


class UnauthenticatedError(BnserveError):
    pass


class FailedPreconditionError(BnserveError):
    pass


class ServerError(BnserveError):
    pass


# Codes after which a call moves on to the client's next address: UNAVAILABLE (that server is
# down or draining) and CANCELLED, which a stopping server answers for calls it had received
# but not started (grpc/grpc#41785); the client never cancels a call of its own that way.
RETRY_ELSEWHERE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)

_BY_CODE: dict[grpc.StatusCode, type[BnserveError]] = {
    grpc.StatusCode.NOT_FOUND: ModelNotFoundError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequestError,
    grpc.StatusCode.UNAVAILABLE: ServerUnavailableError,
    grpc.StatusCode.CANCELLED: ServerUnavailableError,  # see RETRY_ELSEWHERE
    grpc.StatusCode.RESOURCE_EXHAUSTED: ServerBusyError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: UnauthenticatedError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
}


def error_from_rpc(exc: grpc.RpcError) -> BnserveError:
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = (exc.details() if hasattr(exc, "details") else None) or str(exc)
    return _BY_CODE.get(code, ServerError)(code, details)


def error_from_stream(message: str, status: str, index: int) -> BnserveError:
    """A stream item's error response: ``status`` is the gRPC status name, "" when unknown."""
    code = grpc.StatusCode.__members__.get(status, grpc.StatusCode.UNKNOWN)
    return _BY_CODE.get(code, ServerError)(code, message, index=index)


@contextlib.contextmanager
def translate_rpc_errors() -> Iterator[None]:
    try:
        yield
    except grpc.RpcError as exc:
        raise error_from_rpc(exc) from exc
