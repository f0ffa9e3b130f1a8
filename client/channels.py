"""Channel set-up shared by Client and AsyncClient: addresses, TLS, round-robin order."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import grpc

from bnserve.client.messages import ModelMetadata, bearer_metadata
from bnserve.proto import monitor_pb2_grpc as monitor_grpc
from bnserve.proto import open_inference_pb2_grpc as pb_grpc

DEFAULT_ADDRESS = "localhost:8001"

# round_robin spreads calls over every address a target resolves to: a Kubernetes headless
# Service given as "dns:///name:8001" reaches every replica without a proxy.
# round_robin over every address a name resolves to (a headless Service's pods), and a quick
# retry of calls answered UNAVAILABLE: above all streams the server refused (HTTP/2
# REFUSED_STREAM) when a connection had more calls open than its max_concurrent_streams, which
# no server ever started. Inference is idempotent; the call's deadline bounds the retries.
_SERVICE_CONFIG = json.dumps({
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [{
        "name": [{"service": "inference.GRPCInferenceService"}],
        "retryPolicy": {
            "maxAttempts": 4,
            "initialBackoff": "0.01s",
            "maxBackoff": "0.1s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        },
    }],
})


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
    tls_server_name: str | None = None,
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
    if credentials is not None and tls_server_name:
        # Verify the server's certificate for this name, not the address's host: a server
        # reached as 127.0.0.1 whose certificate names bnserve.example.com.
        options += (("grpc.ssl_target_name_override", tls_server_name),)
    return ChannelConfig(addresses, credentials, options)


class RoundRobin:
    """Each call starts at the next address and falls over to the others in turn."""

    def __init__(self, count: int) -> None:
        self._count = count
        self._next = itertools.count()

    def order(self) -> list[int]:
        start = next(self._next) % self._count
        return [(start + i) % self._count for i in range(self._count)]


class ClientBase:
    """What Client and AsyncClient share: addresses, TLS, stubs per address, caches.

    ``address``: "host:port", a gRPC target such as "dns:///name:8001", or a list of them.
    ``timeout``: default seconds per call (None: no deadline); every method takes its own.
    ``tls``: TLS with the system roots; ``root_certificates`` (PEM) trusts a private CA;
    ``private_key`` + ``certificate_chain`` (PEM) present a client certificate (mutual TLS).
    ``tls_server_name``: with TLS, the name the server's certificate must carry, when it is
    not the host in ``address`` (e.g. 127.0.0.1 for a server whose certificate names a DNS name).
    ``admin_token``: sent as ``authorization: Bearer <token>`` on the admin calls
    (repository index, load, unload; captured_inputs) only; give one address for those,
    they change (or read) one server.
    ``auth_token``: sent as ``authorization: Bearer <token>`` on every other call (and on the
    repository calls when there is no ``admin_token``), for a server with ``--auth-token-file``.
    ``connections``: connections per address (4); calls take them in turn, so that more
    calls than a server's max_concurrent_streams per connection can be in flight.
    ``_grpc`` is ``grpc`` or ``grpc.aio``: both offer the same channel constructors.
    """

    _grpc: ModuleType = grpc

    def __init__(
        self,
        address: str | Sequence[str] = DEFAULT_ADDRESS,
        *,
        timeout: float | None = 30.0,
        tls: bool = False,
        root_certificates: bytes | None = None,
        private_key: bytes | None = None,
        certificate_chain: bytes | None = None,
        max_message_bytes: int = 64 * 1024 * 1024,
        admin_token: str | None = None,
        auth_token: str | None = None,
        tls_server_name: str | None = None,
        connections: int = 4,
    ) -> None:
        config = channel_config(
            address,
            tls=tls,
            root_certificates=root_certificates,
            private_key=private_key,
            certificate_chain=certificate_chain,
            max_message_bytes=max_message_bytes,
            tls_server_name=tls_server_name,
        )
        self.addresses = config.addresses
        self.timeout = timeout
        self._auth = bearer_metadata(auth_token)
        self._admin = bearer_metadata(admin_token) if admin_token is not None else self._auth
        if connections < 1:
            raise ValueError("connections must be at least 1")
        # Each channel of an address has its own connection (a local subchannel pool; grpc
        # would otherwise share one): a server admits max_concurrent_streams calls per
        # connection, so several let one client keep more calls in flight.
        options = config.options + (("grpc.use_local_subchannel_pool", 1),)
        self._pools = [
            [self._grpc.secure_channel(a, config.credentials, options)
             if config.credentials else self._grpc.insecure_channel(a, options)
             for _ in range(connections)]
            for a in config.addresses
        ]
        self._channels = [channel for pool in self._pools for channel in pool]
        self._stubs = [[pb_grpc.GRPCInferenceServiceStub(c) for c in pool]
                       for pool in self._pools]
        # bnserve's own BatchNormMonitor service, on the same connections.
        self._monitor_stubs = [[monitor_grpc.BatchNormMonitorStub(c) for c in pool]
                               for pool in self._pools]
        self._turns = itertools.count()
        self._order = RoundRobin(len(self._stubs))
        self._metadata_cache: dict[tuple[str, str], ModelMetadata] = {}

    def _deadline(self, timeout: float | None) -> float | None:
        """The monotonic time by which a call (all its requests together) must be done."""
        timeout = self.timeout if timeout is None else timeout
        return None if timeout is None else time.monotonic() + timeout

    @staticmethod
    def _left(deadline: float | None) -> float | None:
        return None if deadline is None else max(deadline - time.monotonic(), 0.0)

    def _attempts(self, timeout: float | None, *, monitor: bool = False
                  ) -> Iterator[tuple[Any, float | None, bool]]:
        """(stub, seconds left, is_last) for each address a call may try, in round-robin order;
        ``monitor``: stubs of the BatchNormMonitor service instead of the inference service.

        All attempts share one deadline: failing over never extends the caller's timeout.
        """
        timeout = self.timeout if timeout is None else timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        order = self._order.order()
        for attempt, index in enumerate(order):
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            yield self._stub(index, monitor=monitor), remaining, attempt == len(order) - 1

    def _stub(self, index: int, *, monitor: bool = False) -> Any:
        """A stub for address ``index``, on its connections in turn."""
        pool = (self._monitor_stubs if monitor else self._stubs)[index]
        return pool[next(self._turns) % len(pool)]
