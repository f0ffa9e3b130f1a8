"""Who may call the repository API (RepositoryIndex, RepositoryModelLoad/Unload).

With ``--admin-token-file`` the caller must send gRPC metadata ``authorization: Bearer
<token>`` (tritonclient: ``headers={"authorization": "Bearer ..."}``); the comparison is
constant-time and the token is never logged. Without a token file the repository API is
refused (FAILED_PRECONDITION) unless ``--allow-unauthenticated-admin`` opens it to anyone
who can reach the port.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from pathlib import Path

from bnserve.server.errors import PreconditionError, UnauthenticatedError

MAX_TOKEN_BYTES = 4096


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
    def __init__(self, token: bytes | None, *, allow_unauthenticated: bool = False) -> None:
        self._expected = b"Bearer " + token if token is not None else None
        self._open = allow_unauthenticated

    def check(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> None:
        """Raise unless the call's metadata carries the admin token (or the API is open)."""
        if self._expected is None:
            if self._open:
                return
            raise PreconditionError(
                "the repository API is disabled: start the server with --admin-token-file "
                "(or --allow-unauthenticated-admin)")
        sent = [value for key, value in metadata or () if key.lower() == "authorization"]
        given = sent[0] if len(sent) == 1 else b""
        if isinstance(given, str):
            given = given.encode("utf-8", "replace")
        # compare_digest: the time taken does not tell how much of the token matched.
        if not hmac.compare_digest(given, self._expected):
            raise UnauthenticatedError("the repository API needs metadata "
                                       "'authorization: Bearer <admin token>'")
