"""The Open Inference Protocol servicer (and Triton's extensions): protobuf in, plain Python
core, protobuf out.

Every handler is wrapped by ``_handled``, the one place where domain errors become gRPC
statuses and anything unexpected becomes INTERNAL "internal error" (logged with its
traceback, never sent to the client). The registry answers lookups, the controller changes
what is served, the admin guard decides who may change it. ModelStreamInfer sends each
request of a stream down ModelInfer's path (``_infer``); ``bnserve.server.streaming`` keeps
them in order and answers a failed one in its place, the stream staying open.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable

import grpc

from bnserve.proto import open_inference_pb2 as pb
from bnserve.proto import open_inference_pb2_grpc as pb_grpc
from bnserve.server.admin import AdminGuard
from bnserve.server.controller import RepositoryController
from bnserve.server.errors import (
    InvalidInputError,
    ModelNotFoundError,
    ServingError,
    client_message,
    quoted,
)
from bnserve.server.registry import ModelRegistry
from bnserve.server.repository import check_model_name
from bnserve.server.streaming import answer_stream
from bnserve.server.triton_wire import (
    EXTENSIONS,
    check_repository_name,
    load_parameters,
    model_config,
    model_statistics,
    repository_index,
)
from bnserve.server.wire import (
    inputs_from_request,
    metadata_response,
    requested_outputs,
    response_from_outputs,
)

log = logging.getLogger(__name__)


def _handled(method):
    @functools.wraps(method)
    async def handler(self, request, context):
        try:
            return await method(self, request, context)
        except ServingError as exc:
            await context.abort(exc.status_code, client_message(exc))
        except Exception:
            log.exception("%s failed", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")

    return handler


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, registry: ModelRegistry, controller: RepositoryController,
                 admin: AdminGuard, *, server_name: str, server_version: str,
                 on_request: Callable[[str, str], None] | None = None) -> None:
        self._registry = registry
        self._controller = controller
        self._admin = admin
        self._server_name = server_name
        self._server_version = server_version
        self._on_request = on_request or (lambda model, code: None)

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self._registry.ready)

    async def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=self._registry.is_ready(request.name, request.version))

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name=self._server_name, version=self._server_version,
                                         extensions=EXTENSIONS)

    @_handled
    async def ModelMetadata(self, request, context):
        model = self._registry.resolve(request.name, request.version)
        return metadata_response(model, self._registry.ready_versions(model.name))

    @_handled
    async def ModelInfer(self, request, context):
        return await self._infer(request)

    @_handled
    async def ModelStreamInfer(self, request_iterator, context):
        # Each request takes the unary path; answer_stream orders, bounds and cancels them.
        await answer_stream(request_iterator, self._infer, context.write)

    async def _infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        """One inference request, unary or from a stream: counted once in the metrics."""
        label, code = "_unknown", "OK"  # never a metric label per unknown name a client sends
        try:
            # Look-up, decode and enqueue with no await between them: a version swap cannot
            # slip in and leave the request with a model that stopped taking work.
            model = self._registry.resolve(request.model_name, request.model_version)
            label = model.name
            outputs = await model.infer(inputs_from_request(request), requested_outputs(request))
            return response_from_outputs(request, model.name, model.version, outputs)
        except ServingError as exc:
            code = exc.status_code.name
            raise
        except asyncio.CancelledError:  # the client went away or its deadline passed
            code = "CANCELLED"
            raise
        except Exception:
            code = "INTERNAL"
            raise
        finally:
            self._on_request(label, code)

    @_handled
    async def ModelConfig(self, request, context):
        model = self._registry.resolve(request.name, request.version)
        return pb.ModelConfigResponse(config=model_config(model))

    @_handled
    async def ModelStatistics(self, request, context):
        if request.name:
            if self._registry.entry(request.name) is None:
                raise ModelNotFoundError(f"unknown model {quoted(request.name, 128)}")
            if request.version:
                models = [self._registry.resolve(request.name, request.version)]
            else:
                models = [self._registry.resolve(request.name, str(v))
                          for v in self._registry.ready_versions(request.name)]
        elif request.version:
            raise InvalidInputError("version: give a model name with a version")
        else:
            models = [self._registry.resolve(name, str(v)) for name in self._registry.names()
                      for v in self._registry.ready_versions(name)]
        return pb.ModelStatisticsResponse(model_stats=[model_statistics(m) for m in models])

    @_handled
    async def RepositoryIndex(self, request, context):
        self._admin.check(context.invocation_metadata())
        check_repository_name(request.repository_name)
        return repository_index(self._controller.index(), ready_only=request.ready)

    @_handled
    async def RepositoryModelLoad(self, request, context):
        self._admin.check(context.invocation_metadata())
        check_repository_name(request.repository_name)
        check_model_name(request.model_name)
        await self._controller.load(request.model_name, load_parameters(request))
        return pb.RepositoryModelLoadResponse()

    @_handled
    async def RepositoryModelUnload(self, request, context):
        self._admin.check(context.invocation_metadata())
        check_repository_name(request.repository_name)
        check_model_name(request.model_name)
        for key in request.parameters:
            if key != "unload_dependents":  # Triton's one; bnserve has no ensembles
                raise InvalidInputError(f"parameters: {quoted(key)} is not supported")
        await self._controller.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()
