"""The model lifecycle without gRPC: a repository, a registry and a controller, started."""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path

from bnserve.server.controller import RepositoryController
from bnserve.server.loader import load_version
from bnserve.server.registry import ModelRegistry
from bnserve.server.repository import ModelRepository
from bnserve.server.settings import ServerSettings


@asynccontextmanager
async def lifecycle(root: Path, *, loader=load_version, **settings):
    """(controller, registry) serving ``root``; everything stopped on exit."""
    server_settings = ServerSettings(repository=root, **settings)
    registry = ModelRegistry(strict_readiness=server_settings.strict_readiness)
    controller = RepositoryController(ModelRepository(root), registry, server_settings,
                                      loader=loader)
    await controller.start()
    registry.accepting = True
    try:
        yield controller, registry
    finally:
        registry.accepting = False
        await controller.stop()
