"""The server's TLS credentials, with every file checked before grpc sees it.

grpc reports a bad certificate or key only as a failed bind ("cannot listen on ..."), so
the files are parsed with ``cryptography`` first. Each of these refuses the start with a
ValueError naming the file and the problem: a file that cannot be read or holds no PEM
certificate / unencrypted PEM key, a key that does not belong to the (first) certificate,
a certificate outside its validity period, a client CA bundle whose every certificate has
expired. A certificate that expires within ``EXPIRY_WARNING`` is logged as a warning.

With ``tls_client_ca`` the server asks for and verifies a client certificate (mutual TLS):
a client without one signed by that CA is refused during the handshake.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from bnserve.server.settings import ServerSettings

log = logging.getLogger(__name__)

EXPIRY_WARNING = timedelta(days=7)


def server_credentials(settings: ServerSettings, *, now: datetime | None = None
                       ) -> grpc.ServerCredentials | None:
    """The credentials for ``add_secure_port``; None when the settings ask for plaintext.
    ``now``: the wall-clock time (UTC) validity is judged at (certificates name dates)."""
    cert_path, key_path, ca_path = (settings.tls_certificate, settings.tls_private_key,
                                    settings.tls_client_ca)
    if cert_path is None and key_path is None:
        if ca_path is not None:
            raise ValueError("tls_client_ca needs tls_certificate and tls_private_key")
        return None
    if cert_path is None or key_path is None:
        raise ValueError("TLS needs both tls_certificate and tls_private_key")
    now = now or datetime.now(timezone.utc)
    chain_pem = _read(cert_path, "TLS certificate")
    chain = _certificates(chain_pem, cert_path, "TLS certificate")
    _check_validity(chain[0], cert_path, now)
    key_pem = _read(key_path, "TLS private key")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):  # TypeError: the key is encrypted
        raise ValueError(f"the TLS private key file {key_path} holds no unencrypted PEM private "
                         "key") from None
    if _public_der(key.public_key()) != _public_der(chain[0].public_key()):
        raise ValueError(f"the TLS private key {key_path} does not match the certificate "
                         f"{cert_path}")
    pair = [(key_pem, chain_pem)]
    if ca_path is None:
        return grpc.ssl_server_credentials(pair)
    ca_pem = _read(ca_path, "TLS client CA")
    authorities = _certificates(ca_pem, ca_path, "TLS client CA")
    expired = [ca for ca in authorities if ca.not_valid_after_utc <= now]
    if len(expired) == len(authorities):
        raise ValueError(f"every certificate in the TLS client CA file {ca_path} has expired "
                         f"(the last on {_date(max(ca.not_valid_after_utc for ca in expired))})")
    if expired:
        log.warning("%d of the %d certificates in the TLS client CA file %s have expired",
                    len(expired), len(authorities), ca_path)
    return grpc.ssl_server_credentials(pair, root_certificates=ca_pem, require_client_auth=True)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read the {what} file {path}: {exc.strerror}") from None


def _certificates(pem: bytes, path: Path, what: str) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise ValueError(f"the {what} file {path} holds no valid PEM certificate") from None


def _check_validity(certificate: x509.Certificate, path: Path, now: datetime) -> None:
    start, end = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    if end <= now:
        raise ValueError(f"the TLS certificate {path} expired on {_date(end)}")
    if start > now:
        raise ValueError(f"the TLS certificate {path} is not valid before {_date(start)}")
    if end - now <= EXPIRY_WARNING:
        log.warning("the TLS certificate %s expires on %s (in %.1f days): renew it",
                    path, _date(end), (end - now) / timedelta(days=1))


def _public_der(key) -> bytes:
    return key.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def _date(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")
