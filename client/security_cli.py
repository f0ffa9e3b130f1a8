"""The connection flags the client subcommands share: TLS files and the inference token.

    --tls                     TLS with the system roots
    --tls-ca PEM              trust this CA bundle instead (implies TLS)
    --tls-certificate PEM     present this client certificate chain (mutual TLS) ...
    --tls-private-key PEM     ... with this key
    --auth-token-file FILE    send its first token as 'authorization: Bearer <token>'

Secrets come from files, never from the command line (where ``ps`` shows them).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bnserve.cli.errors import UserError, file_problem


def add_security_flags(parser: argparse.ArgumentParser, *, auth_token: bool = True) -> None:
    parser.add_argument("--tls", action="store_true", help="use TLS with the system roots")
    parser.add_argument("--tls-ca", metavar="PEM",
                        help="trust this PEM CA bundle instead of the system roots (implies --tls)")
    parser.add_argument("--tls-certificate", metavar="PEM",
                        help="client certificate chain to present (mutual TLS; with "
                        "--tls-private-key)")
    parser.add_argument("--tls-private-key", metavar="PEM", help="the client certificate's key")
    if auth_token:
        parser.add_argument("--auth-token-file", metavar="FILE",
                            help="file whose first token is sent as 'authorization: Bearer "
                            "<token>' (a server started with --auth-token-file)")


def first_token(text: str) -> str | None:
    """The first line of a token file that is neither blank nor a ``#`` comment."""
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            return line
    return None


def security_options(args: argparse.Namespace) -> dict[str, Any]:
    """Client keyword arguments from the flags; ``UserError`` when a file cannot be read or
    the flags do not fit together (every client subcommand reports it the same way)."""
    if bool(args.tls_certificate) != bool(args.tls_private_key):
        raise UserError("--tls-certificate and --tls-private-key go together")
    try:
        options: dict[str, Any] = {
            "tls": args.tls,
            "root_certificates": _read(args.tls_ca),
            "certificate_chain": _read(args.tls_certificate),
            "private_key": _read(args.tls_private_key),
        }
        token_file = getattr(args, "auth_token_file", None)
        if token_file:
            token = first_token(Path(token_file).read_text(encoding="utf-8"))
            if token is None:
                raise UserError(f"the auth token file {token_file} holds no token")
            options["auth_token"] = token
    except OSError as exc:
        raise UserError(file_problem(exc, "read")) from exc
    return options


def _read(path: str | None) -> bytes | None:
    return Path(path).read_bytes() if path else None
