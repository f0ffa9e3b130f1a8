"""One line for a failed call of a client subcommand, naming the flag that would change it.

    ServerUnavailableError  --address A: no server answered (UNAVAILABLE: Connection refused); ...
    ModelNotFoundError      --model M: unknown model 'M'; served models: digits
    DeadlineExceededError   --address A: no answer within --timeout 30 s (DEADLINE_EXCEEDED)
    UnauthenticatedError    --address A: the server refused the call (...); expected a token ...
    InvalidRequestError     --input x.npy: refused by the server: INVALID_ARGUMENT: ...
    anything else           CODE: the server's message

The exception classes are ``bnserve.client.errors``'s (one translation from gRPC); this
only words them for the command line. Imported by the handlers, never by the library.
"""

from __future__ import annotations

from bnserve.client.errors import (
    BnserveError,
    DeadlineExceededError,
    InvalidRequestError,
    ModelNotFoundError,
    ServerUnavailableError,
    UnauthenticatedError,
)


def short_reason(details: str) -> str:
    """The last clause of a transport error: gRPC's "connections to all backends failing;
    last error: UNKNOWN: ipv4:127.0.0.1:1: Failed to connect to remote host: Connection
    refused" says "Connection refused"."""
    return details.rsplit(": ", 1)[-1].strip() or details


def explain_call_error(exc: BnserveError, *, address: str, model: str | None = None,
                       version: str | None = None, timeout: float | None = None,
                       subject: str | None = None,
                       token_flag: str = "--auth-token-file") -> str:
    """The message for ``exc``; ``subject`` is what the request carried (``--input x.npy``)."""
    code = exc.code.name
    if isinstance(exc, ServerUnavailableError):
        return (f"--address {address}: no server answered ({code}: {short_reason(exc.details)}); "
                "expected a running `bnserve serve` there")
    if isinstance(exc, ModelNotFoundError) and model:
        flag = f"--model {model}" + (f" --version {version}" if version else "")
        return f"{flag}: {exc.details}"
    if isinstance(exc, DeadlineExceededError) and timeout is not None:
        return f"--address {address}: no answer within --timeout {timeout:g} s ({code})"
    if isinstance(exc, UnauthenticatedError):
        return (f"--address {address}: the server refused the call ({code}: {exc.details}); "
                f"expected a token it accepts ({token_flag})")
    if isinstance(exc, InvalidRequestError) and subject:
        return f"{subject}: refused by the server: {code}: {exc.details}"
    return str(exc)
