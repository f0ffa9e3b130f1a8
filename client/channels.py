"""Channel set-up shared by Client and AsyncClient: addresses, TLS, round-robin order."""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

DEFAULT_ADDRESS = "localhost:8001"

# round_robin spreads calls over every address a target resolves to: a Kubernetes headless
# Service given as "dns:///name:8001" reaches every replica without a proxy.
_SERVICE_CONFIG = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})


@dataclass(frozen=True)
class ChannelConfig:
    addresses: tuple[str, ...]
    credentials: grpc.ChannelCredentials | None
    options: tuple[tuple[str, object], ...]


def channel_config(
    address: str | Sequence[str],
    *,
    tls: bool,
    root_certificates: bytes | None,
    private_key: bytes | None,
    certificate_chain: bytes | None,
    max_message_bytes: int,
) -> ChannelConfig:
    addresses = (address,) if isinstance(address, str) else tuple(address)
    if not addresses:
        raise ValueError("at least one server address is needed")
    credentials = None
    if tls or root_certificates or certificate_chain:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=root_certificates,
            private_key=private_key,
            certificate_chain=certificate_chain,
        )
    options = (
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.service_config", _SERVICE_CONFIG),
    )
    return ChannelConfig(addresses, credentials, options)


class RoundRobin:
    """Each call starts at the next address and falls over to the others in turn."""

    def __init__(self, count: int) -> None:
        self._count = count
        self._next = itertools.count()

    def order(self) -> list[int]:
        start = next(self._next) % self._count
        return [(start + i) % self._count for i in range(self._count)]
