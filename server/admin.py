"""Who may call the repository API (RepositoryIndex, RepositoryModelLoad/Unload) and the
monitor's admin calls (CapturedInputs, Recalibrate): the same admin token guards both.

With ``--admin-token-file`` the caller must send gRPC metadata ``authorization: Bearer
<token>`` (tritonclient: ``headers={"authorization": "Bearer ..."}``); the comparison is
constant-time and the token is never logged. Without a token file the repository API is
refused (FAILED_PRECONDITION) unless ``--allow-unauthenticated-admin`` opens it to anyone
who can reach the port.

An inference token (``--auth-token-file``, see ``bnserve.server.auth``) on a repository call
is PERMISSION_DENIED: the caller is known but may not change what is served. No token, or
one the server does not know, is UNAUTHENTICATED.
"""

from __future__ import annotations

import hmac
from pathlib import Path

from bnserve.server.auth import MAX_TOKEN_CHARS, Metadata, TokenFile, matches_any, presented, token_digest
from bnserve.server.errors import PermissionDeniedError, PreconditionError, UnauthenticatedError

MAX_TOKEN_BYTES = MAX_TOKEN_CHARS
REPOSITORY_API = "the repository API"


def read_token(path: Path) -> bytes:
    """The token in ``path`` (surrounding whitespace removed); ValueError when unusable."""
    try:
        data = path.read_bytes()[: MAX_TOKEN_BYTES + 1]
    except OSError as exc:
        raise ValueError(f"cannot read the admin token file {path}: {exc.strerror}") from None
    token = data.strip()
    if not token or len(token) > MAX_TOKEN_BYTES or any(b < 0x21 or b > 0x7E for b in token):
        raise ValueError(f"the admin token file {path} must hold one token of 1 to "
                         f"{MAX_TOKEN_BYTES} printable ASCII characters")
    return token


class AdminGuard:
    """``inference_tokens``: the inference token file, if any, to tell a known caller without
    the right (PERMISSION_DENIED) from an unknown one (UNAUTHENTICATED)."""

    def __init__(self, token: bytes | None, *, allow_unauthenticated: bool = False,
                 inference_tokens: TokenFile | None = None) -> None:
        self._digest = token_digest(token) if token is not None else None
        self._open = allow_unauthenticated
        self._inference = inference_tokens

    @property
    def has_token(self) -> bool:
        return self._digest is not None

    def matches(self, digest: bytes) -> bool:
        """Whether a call's header digest (``bnserve.server.auth.presented``) is the admin token."""
        return self._digest is not None and hmac.compare_digest(digest, self._digest)

    def check(self, metadata: Metadata, *, api: str = REPOSITORY_API) -> None:
        """Raise unless the call's metadata carries the admin token (or the API is open).
        ``api``: what the messages call the refused API."""
        if self._digest is None:
            if self._open:
                return
            raise PreconditionError(
                f"{api} is disabled: start the server with --admin-token-file "
                "(or --allow-unauthenticated-admin)")
        self.verify(presented(metadata), api=api)

    def verify(self, digest: bytes, *, api: str = REPOSITORY_API) -> None:
        """Raise unless ``digest`` is the admin token's (the server has one)."""
        # compare_digest, against the admin token and every inference token whatever
        # matches first: the time taken does not tell how much of a token matched.
        admin = self.matches(digest)
        inference = self._inference is not None and matches_any(digest, self._inference.digests())
        if admin:
            return
        if inference:
            raise PermissionDeniedError(f"an inference token may not call {api}: it needs "
                                        "metadata 'authorization: Bearer <admin token>'")
        raise UnauthenticatedError(f"{api} needs metadata 'authorization: Bearer <admin token>'")
