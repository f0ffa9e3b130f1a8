"""The composition root: ``build_server(settings)`` wires repository, registry, controller,
servicer, admin guard, health and reflection into one grpc.aio server. The CLI and the
tests both call it.
"""

from __future__ import annotations

import asyncio
import logging
from importlib.metadata import PackageNotFoundError, version

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from bnserve.proto import monitor_pb2 as mpb
from bnserve.proto import open_inference_pb2 as pb
from bnserve.server import metrics
from bnserve.server.admin import AdminGuard, read_token
from bnserve.server.auth import (
    MONITOR_ADMIN_METHODS,
    REPOSITORY_METHODS,
    TokenFile,
    TokenInterceptor,
    token_digest,
)
from bnserve.server.codec import Codec
from bnserve.server.controller import Loader, RepositoryController
from bnserve.server.loader import load_version
from bnserve.server.model import ServedModel
from bnserve.server.monitor_servicer import BatchNormMonitorServicer, Recalibrate
from bnserve.server.recalibration import DEFAULT_INPUT_STATISTICS, DEFAULT_PRIOR_STRENGTH
from bnserve.server.recalibration_loop import AutoRecalibration, InServerRecalibration
from bnserve.server.registry import ModelRegistry
from bnserve.server.repository import ModelRepository
from bnserve.server.runtime import available_providers, select_providers
from bnserve.server.servicer import InferenceServicer
from bnserve.server.settings import ServerSettings
from bnserve.server.tls import server_credentials
from bnserve.server.transport import InferenceTransport

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
MONITOR_SERVICE = mpb.DESCRIPTOR.services_by_name["BatchNormMonitor"]
MONITOR_SERVICE_NAME = MONITOR_SERVICE.full_name


def _package_version() -> str:
    try:
        return version("bnserve")
    except PackageNotFoundError:
        return "0+unknown"


class InferenceServer:
    """A started-or-startable server: the grpc.aio server, its port and its model lifecycle."""

    def __init__(self, settings: ServerSettings, *, loader: Loader = load_version,
                 recalibrate: Recalibrate | None = None) -> None:
        self.settings = settings
        # A device that cannot be had fails the start, not each model one by one.
        select_providers(settings.device, available_providers())
        self.repository = ModelRepository(settings.repository)
        self.repository.check_root()
        self.registry = ModelRegistry(strict_readiness=settings.strict_readiness)
        self.controller = RepositoryController(self.repository, self.registry, settings,
                                               loader=loader, observer=metrics.observe_batch)
        token = read_token(settings.admin_token_file) if settings.admin_token_file else None
        tokens = None
        if settings.auth_token_file:  # refused when it holds the admin token too
            tokens = TokenFile(settings.auth_token_file,
                               reserved=token_digest(token) if token else None)
        admin = AdminGuard(token, allow_unauthenticated=settings.allow_unauthenticated_admin,
                           inference_tokens=tokens)
        # Only with a token file: without one no call pays for an interceptor.
        protected = {SERVICE_NAME: REPOSITORY_METHODS, MONITOR_SERVICE_NAME: MONITOR_ADMIN_METHODS}
        interceptors = [TokenInterceptor(protected, tokens, admin,
                                         on_reject=metrics.count_rejected)] \
            if tokens or token else []
        self.grpc_server = grpc.aio.server(options=channel_options(settings),
                                           interceptors=interceptors)
        self.codec = Codec(max_send_bytes=settings.max_message_bytes,
                           response_memory_bytes=settings.response_memory_bytes)
        servicer = InferenceServicer(self.registry, self.controller, admin, self.codec,
                                     server_name=settings.server_name,
                                     server_version=_package_version(),
                                     on_request=metrics.count_request)
        self.recalibration = InServerRecalibration(settings.repository, self.registry,
                                                   self.controller)
        self.auto_recalibration = None
        if settings.auto_recalibrate_after_s is not None:
            self.auto_recalibration = AutoRecalibration(
                self.recalibration, self.registry.served,
                after_s=settings.auto_recalibrate_after_s,
                cooldown_s=settings.auto_recalibrate_cooldown_s,
                prior_strength=DEFAULT_PRIOR_STRENGTH, input_statistics=DEFAULT_INPUT_STATISTICS)
        monitor = BatchNormMonitorServicer(self.registry, admin,
                                           max_send_bytes=settings.max_message_bytes,
                                           recalibrate=recalibrate or self.recalibration)
        self.grpc_server.add_generic_rpc_handlers((
            InferenceTransport(servicer, self.codec,
                               on_rejected=metrics.count_rejected).generic_handler(),
            InferenceTransport(monitor, self.codec, on_rejected=metrics.count_rejected,
                               service=MONITOR_SERVICE).generic_handler(),
        ))
        self.health = health.aio.HealthServicer()
        self._health_lock = asyncio.Lock()
        self._health_names: set[str] = set()  # model names health has a status for
        self._publishing: set[asyncio.Task[None]] = set()
        self._window_over = asyncio.Event()
        self.refusing = False  # grpc refuses new calls (the drain window is over)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc_server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, MONITOR_SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME),
            self.grpc_server)
        address = f"{settings.host}:{settings.port}"
        if ":" in settings.host and not settings.host.startswith("["):
            address = f"[{settings.host}]:{settings.port}"
        # Checked file by file first (ValueError naming the file): grpc would only fail the bind.
        self.port = self._bind(address, server_credentials(settings))

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
    def models(self) -> dict[str, ServedModel]:
        """Each model's highest ready version (what a request without a version gets)."""
        return {name: self.registry.resolve(name) for name in self.registry.names()
                if self.registry.ready_versions(name)}

    async def start(self) -> None:
        """Load what the model control mode says, then serve; health follows the registry."""
        await self.controller.start()
        self._unwatch = metrics.watch_models(self.registry.served)
        self.registry.subscribe(self._registry_changed)
        self.registry.accepting = True
        await self.grpc_server.start()
        if self.settings.metrics_port is not None:
            from prometheus_client import start_http_server

            start_http_server(self.settings.metrics_port, addr=self.settings.metrics_host)
        await self._publish_health()
        if self.auto_recalibration is not None:
            self.auto_recalibration.start()
        log.info(
            "serving %d model(s) %s on port %d (model control mode %s)",
            len(self.models), sorted(self.models), self.port, self.settings.model_control_mode,
        )

    def _registry_changed(self) -> None:
        task = asyncio.get_running_loop().create_task(self._publish_health())
        self._publishing.add(task)  # a reference, so the task is not collected mid-run
        task.add_done_callback(self._publishing.discard)

    async def _publish_health(self) -> None:
        """Health statuses from the registry: the server ("" and the inference service) and
        each model by name. Serialized, and each run reads the registry afresh, so the last
        run leaves the current state whatever order the changes came in."""
        serving, not_serving = health_pb2.HealthCheckResponse.SERVING, \
            health_pb2.HealthCheckResponse.NOT_SERVING
        registry = self.registry
        async with self._health_lock:
            # "": liveness (restart me if not); the service name: readiness (send me work).
            await self.health.set("", serving if registry.live else not_serving)
            await self.health.set(SERVICE_NAME, serving if registry.ready else not_serving)
            names = registry.names()
            for name in names:
                ready = (registry.accepting and not registry.draining
                         and bool(registry.ready_versions(name)))
                await self.health.set(name, serving if ready else not_serving)
            for gone in self._health_names - set(names):  # a model removed from the repository
                await self.health.set(gone, not_serving)
            self._health_names |= set(names)

    async def stop(self, grace: float | None = None, *, drain_window: float | None = None
                   ) -> None:
        """Drain, in Kubernetes' order: every health status says NOT_SERVING at once while
        calls are still answered for ``drain_window`` seconds (load balancers move away);
        then new calls are refused and accepted ones get ``grace`` seconds to finish. A
        model run still going after that is left to its thread: it does not hold the
        process (``bnserve serve`` exits without waiting for it)."""
        grace = self.settings.shutdown_grace_s if grace is None else grace
        window = self.settings.drain_window_s if drain_window is None else drain_window
        self.registry.draining = True
        if self.auto_recalibration is not None:
            await self.auto_recalibration.stop()
        await self._publish_health()
        if window > 0 and not self._window_over.is_set():
            log.info("draining: NOT_SERVING, still answering for %.1fs", window)
            try:
                await asyncio.wait_for(self._window_over.wait(), window)
            except TimeoutError:
                pass
        stopping = asyncio.ensure_future(self.grpc_server.stop(grace))
        await asyncio.sleep(0)  # the task's first step makes grpc refuse new calls
        self.refusing = True
        await stopping
        self.registry.accepting = False
        try:
            await asyncio.wait_for(self.controller.stop(), timeout=1.0)
        except TimeoutError:
            log.warning("stopping the models took over a second; not waiting any longer")
        self.codec.close()
        self._unwatch()

    def end_drain_window(self) -> None:
        """Cut the drain window short (a second signal; a test)."""
        self._window_over.set()

    async def wait(self) -> None:
        await self.grpc_server.wait_for_termination()


def channel_options(settings: ServerSettings) -> list[tuple[str, int]]:
    """grpc's HTTP/2 and connection limits (README, "Limits"). grpc core itself pauses
    reading from a connection that makes it queue too many RST_STREAM acknowledgements
    (the HTTP/2 rapid-reset pattern), and cancels calls the server has not taken up."""
    ms = lambda seconds: int(seconds * 1000)  # noqa: E731
    return [
        # grpc enables SO_REUSEPORT by default: a second server on a taken port would
        # silently share its traffic instead of failing to start.
        ("grpc.so_reuseport", 0),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_concurrent_streams", settings.max_concurrent_streams),
        ("grpc.keepalive_time_ms", ms(settings.keepalive_time_s)),
        ("grpc.keepalive_timeout_ms", ms(settings.keepalive_timeout_s)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", ms(settings.min_client_ping_interval_s)),
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.max_connection_idle_ms", ms(settings.max_connection_idle_s)),
        ("grpc.max_connection_age_ms", ms(settings.max_connection_age_s)),
        ("grpc.max_connection_age_grace_ms", ms(settings.max_connection_age_grace_s)),
        # Calls grpc has accepted but the server has not started: bounded, and not kept
        # waiting long (a flood of new streams is refused rather than queued).
        ("grpc.server.max_pending_requests", 512),
        ("grpc.server.max_pending_requests_hard_limit", 2048),
        ("grpc.server_max_unrequested_time_in_server", 5),
    ]


def build_server(settings: ServerSettings, *, loader: Loader = load_version,
                 recalibrate: Recalibrate | None = None) -> InferenceServer:
    """Bind the port; ``await server.start()`` loads the models and serves. ``loader``: a
    test's stand-in for ``bnserve.server.loader.load_version``; ``recalibrate``: the hook
    that answers BatchNormMonitor.Recalibrate (None: UNIMPLEMENTED)."""
    return InferenceServer(settings, loader=loader, recalibrate=recalibrate)
