"""The composition root: ``build_server(settings)`` wires repository, models, servicer,
health and reflection into one grpc.aio server. The CLI and the tests both call it.
"""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from bnserve.proto import open_inference_pb2 as pb
from bnserve.proto import open_inference_pb2_grpc as pb_grpc
from bnserve.server import metrics
from bnserve.server.core import ModelManager
from bnserve.server.runtime import available_providers, select_providers
from bnserve.server.servicer import InferenceServicer
from bnserve.server.settings import ServerSettings

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


def _package_version() -> str:
    try:
        return version("bnserve")
    except PackageNotFoundError:
        return "0+unknown"


class InferenceServer:
    """A started-or-startable server: the grpc.aio server, its port and its models."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        # A device that cannot be had fails the start, not each model one by one.
        select_providers(settings.device, available_providers())
        self.manager = ModelManager(settings, observer=metrics.observe_batch)
        self.manager.load_all()
        options = [
            # grpc enables SO_REUSEPORT by default: a second server on a taken port would
            # silently share its traffic instead of failing to start.
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
        ]
        self.grpc_server = grpc.aio.server(options=options)
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(
                self.manager, server_name=settings.server_name, server_version=_package_version()
            ),
            self.grpc_server,
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc_server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.grpc_server
        )
        address = f"{settings.host}:{settings.port}"
        if ":" in settings.host and not settings.host.startswith("["):
            address = f"[{settings.host}]:{settings.port}"
        if settings.tls_certificate and settings.tls_private_key:
            credentials = grpc.ssl_server_credentials(
                [(settings.tls_private_key.read_bytes(), settings.tls_certificate.read_bytes())]
            )
            self.port = self._bind(address, credentials)
        elif settings.tls_certificate or settings.tls_private_key:
            raise ValueError("TLS needs both tls_certificate and tls_private_key")
        else:
            self.port = self._bind(address, None)

    def _bind(self, address: str, credentials: grpc.ServerCredentials | None) -> int:
        try:
            if credentials is None:
                port = self.grpc_server.add_insecure_port(address)
            else:
                port = self.grpc_server.add_secure_port(address, credentials)
        except RuntimeError as exc:  # grpc's way of saying the bind failed
            raise OSError(f"cannot listen on {address} (is the port taken?)") from exc
        if port == 0:
            raise OSError(f"cannot listen on {address} (is the port taken?)")
        return port

    @property
    def models(self):
        return self.manager.models

    async def start(self) -> None:
        self.manager.start()
        await self.grpc_server.start()
        if self.settings.metrics_port is not None:
            from prometheus_client import start_http_server

            start_http_server(self.settings.metrics_port, addr=self.settings.host)
        status = (health_pb2.HealthCheckResponse.SERVING if self.manager.ready
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for service in ("", SERVICE_NAME):
            await self.health.set(service, status)
        log.info(
            "serving %d model(s) %s on port %d",
            len(self.manager.models), sorted(self.manager.models), self.port,
        )

    async def stop(self, grace: float | None = None) -> None:
        """Drain: new calls are refused (UNAVAILABLE) and readiness goes false at once;
        in-flight calls get ``grace`` seconds to finish."""
        self.manager.accepting = False
        await self.health.enter_graceful_shutdown()
        grace = self.settings.shutdown_grace_s if grace is None else grace
        await self.grpc_server.stop(grace)
        await self.manager.stop()

    async def wait(self) -> None:
        await self.grpc_server.wait_for_termination()


def build_server(settings: ServerSettings) -> InferenceServer:
    """Load the repository's models and bind the port; ``await server.start()`` serves."""
    return InferenceServer(settings)
