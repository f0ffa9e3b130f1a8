"""Bearer tokens: the inference token file, its reload, and the interceptor that checks them.

With ``--auth-token-file`` every RPC of ``inference.GRPCInferenceService`` (liveness,
readiness and metadata included) and of ``bnserve.v1.BatchNormMonitor`` needs gRPC
metadata ``authorization: Bearer <token>`` with one of the file's tokens, or the admin
token (an operator can call everything with it); anything else is answered UNAUTHENTICATED.
The gRPC health service and reflection stay open: Kubernetes probes carry no token.

The file: one token per line; blank lines and lines starting with ``#`` are ignored; a token
is 1 to 4096 printable ASCII characters without spaces. It is re-read when it changes: the
request path looks at its inode, size and mtime at most once a second. A file that becomes
unreadable, empty or invalid keeps the tokens read before and logs one warning (per change
of the file), so a half-written or briefly missing file never locks every client out; to
revoke a token, write the file without it.

Tokens are held only as SHA-256 digests of the whole header value ``Bearer <token>``. A
call's header is hashed once and compared with every digest by ``hmac.compare_digest``,
without stopping at a match: the time taken tells neither which token matched nor how much
of one did (nor its length). Tokens are never logged; status messages say what is expected,
never what was sent.

``TokenInterceptor`` is installed only when a token file (inference or admin) is
configured. It also answers the token refusals of the admin calls (the repository API and
the monitor's CapturedInputs and Recalibrate, through ``AdminGuard``), so each refusal is
counted under its RPC's name in ``bnserve_rejected_calls_total``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from bnserve.server.errors import PermissionDeniedError, UnauthenticatedError

if TYPE_CHECKING:
    from bnserve.server.admin import AdminGuard

log = logging.getLogger(__name__)

MAX_TOKEN_CHARS = 4096
MAX_FILE_BYTES = 1 << 20  # a token file is a few lines, never a megabyte
RECHECK_S = 1.0  # the request path stats the token file at most this often
REPOSITORY_METHODS = frozenset({"RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload"})
MONITOR_ADMIN_METHODS = frozenset({"CapturedInputs", "Recalibrate"})

Metadata = Iterable[tuple[str, str | bytes]] | None


def token_digest(token: bytes) -> bytes:
    """The digest a call's header must hash to for ``token``."""
    return hashlib.sha256(b"Bearer " + token).digest()


def presented(metadata: Metadata) -> bytes:
    """The digest of the call's one ``authorization`` header (of b"" when it sent none or
    several: never equal to a token's)."""
    sent = [value for key, value in metadata or () if key.lower() == "authorization"]
    value = sent[0] if len(sent) == 1 else b""
    if isinstance(value, str):
        value = value.encode("utf-8", "replace")
    return hashlib.sha256(value).digest()


def matches_any(digest: bytes, digests: Iterable[bytes]) -> bool:
    """Constant-time membership: every digest is compared, whichever matches."""
    found = False
    for candidate in digests:
        found |= hmac.compare_digest(digest, candidate)
    return found


def valid_token(token: bytes) -> bool:
    return 0 < len(token) <= MAX_TOKEN_CHARS and all(0x21 <= b <= 0x7E for b in token)


def parse_tokens(data: bytes, path: Path) -> tuple[bytes, ...]:
    """The digests of the tokens in a token file's ``data``; ValueError (naming the line
    number, never its text) when a line is not a token or there is none."""
    digests: dict[bytes, None] = {}  # ordered and without repeats
    for number, raw in enumerate(data.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(b"#"):
            continue
        if not valid_token(line):
            raise ValueError(f"the auth token file {path}: line {number} is not a token of 1 to "
                             f"{MAX_TOKEN_CHARS} printable ASCII characters without spaces")
        digests[token_digest(line)] = None
    if not digests:
        raise ValueError(f"the auth token file {path} holds no token (one per line)")
    return tuple(digests)


def _signature(path: Path) -> tuple[int, int, int, int]:
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


class TokenFile:
    """The inference tokens of ``path``, re-read when the file changes.

    ``reserved``: the admin token's digest; a file holding it is refused (at start with
    ValueError, on a reload with a warning): one secret must not open both APIs by accident.
    """

    def __init__(self, path: Path, *, reserved: bytes | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._reserved = reserved
        self._clock = clock
        try:
            self._signature: tuple[int, int, int, int] | None = _signature(path)
        except OSError as exc:
            raise ValueError(f"cannot read the auth token file {path}: {exc.strerror}") from None
        self._digests = self._read()
        self._checked = clock()
        log.info("auth token file %s: %d token(s)", path, len(self._digests))

    def _read(self) -> tuple[bytes, ...]:
        try:
            with open(self.path, "rb") as handle:
                data = handle.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise ValueError(f"cannot read the auth token file {self.path}: {exc.strerror}") from None
        if len(data) > MAX_FILE_BYTES:
            raise ValueError(f"the auth token file {self.path} is larger than {MAX_FILE_BYTES} bytes")
        digests = parse_tokens(data, self.path)
        if self._reserved is not None and matches_any(self._reserved, digests):
            raise ValueError(f"the auth token file {self.path} holds the admin token: use "
                             "different tokens for inference and for the repository API")
        return digests

    def digests(self) -> tuple[bytes, ...]:
        """The current tokens' digests; looks at the file at most once per ``RECHECK_S``."""
        now = self._clock()
        if now - self._checked >= RECHECK_S:
            self._checked = now
            self._refresh()
        return self._digests

    def _refresh(self) -> None:
        try:
            signature: tuple[int, int, int, int] | None = _signature(self.path)
            problem = ""
        except OSError as exc:
            signature, problem = None, f"cannot read the auth token file {self.path}: {exc.strerror}"
        if signature == self._signature:
            return
        self._signature = signature  # one warning per change, not one per second
        try:
            if signature is None:
                raise ValueError(problem)
            self._digests = self._read()
        except ValueError as exc:
            log.warning("%s; keeping the %d token(s) read before", exc, len(self._digests))
            return
        log.info("auth token file %s changed: %d token(s)", self.path, len(self._digests))


def _refusal(handler: grpc.RpcMethodHandler, code: grpc.StatusCode,
             message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that aborts with ``code``. It has no
    deserializer: the request bytes are never decoded."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Checks the bearer token of every call to ``services`` before its handler runs.

    ``services``: full service name -> its admin-only methods. ``tokens``: the inference
    tokens (None: those services are open, only the admin methods need a token). Admin
    calls are decided by ``admin`` when it has a token: the admin token passes, an
    inference token is PERMISSION_DENIED, anything else UNAUTHENTICATED. ``on_reject(method,
    reason)`` counts each refusal.
    """

    def __init__(self, services: dict[str, frozenset[str]], tokens: TokenFile | None,
                 admin: AdminGuard, *, on_reject: Callable[[str, str], None]) -> None:
        self._services = {f"/{service}/": (service, methods)
                          for service, methods in services.items()}
        self._tokens = tokens
        self._admin = admin
        self._on_reject = on_reject

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        prefix = method[:method.rfind("/") + 1] if isinstance(method, str) else ""
        # Other services (health, reflection) are exempt; an unknown method stays
        # UNIMPLEMENTED and is not counted (its name is client text, not a label).
        if handler is None or prefix not in self._services:
            return handler
        service, admin_methods = self._services[prefix]
        name = method[len(prefix):]
        try:
            self._check(service, name, name in admin_methods,
                        handler_call_details.invocation_metadata)
        except (UnauthenticatedError, PermissionDeniedError) as exc:
            reason = "permission_denied" if isinstance(exc, PermissionDeniedError) else "unauthenticated"
            self._on_reject(name, reason)
            return _refusal(handler, exc.status_code, str(exc))
        return handler

    def _check(self, service: str, method: str, admin_only: bool, metadata: Metadata) -> None:
        digest = presented(metadata)
        if admin_only and self._admin.has_token:
            self._admin.verify(digest, api="the repository API" if method in REPOSITORY_METHODS
                               else method)
            return
        if self._tokens is None:
            return
        inference = matches_any(digest, self._tokens.digests())
        admin = self._admin.matches(digest)
        if not (inference | admin):
            raise UnauthenticatedError(f"{service} needs metadata 'authorization: "
                                       "Bearer <token>' with a token this server accepts")
