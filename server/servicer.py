"""The Open Inference Protocol servicer (and Triton's extensions): parsed requests in, plain
Python core, messages out.

``bnserve.server.transport`` parses each call's bytes (with ``bnserve.server.codec``) and
maps errors to statuses; the methods here raise ``ServingError`` and never see gRPC's
status codes. The registry answers lookups, the controller changes what is served, the
admin guard decides who may change it.
ModelStreamInfer sends each request of a stream down ModelInfer's path (``infer``);
``bnserve.server.streaming`` keeps them in order and answers a failed one in its place, the
stream staying open.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc

from bnserve.proto import open_inference_pb2 as pb
from bnserve.server.admin import AdminGuard
from bnserve.server.codec import Codec, InferCall
from bnserve.server.controller import RepositoryController
from bnserve.server.errors import InvalidInputError, ModelNotFoundError, ServingError, quoted
from bnserve.server.model import ServedModel
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
    decode_inputs,
    input_headers,
    metadata_response,
    request_timeout,
    requested_outputs,
)

DEADLINE_SLACK_S = 0.1  # a cancel this close to the deadline is the deadline's


class InferenceServicer:
    def __init__(self, registry: ModelRegistry, controller: RepositoryController,
                 admin: AdminGuard, codec: Codec, *, server_name: str, server_version: str,
                 on_request: Callable[[str, str], None] | None = None) -> None:
        self._registry = registry
        self._codec = codec
        self._controller = controller
        self._admin = admin
        self._server_name = server_name
        self._server_version = server_version
        self._on_request = on_request or (lambda model, code: None)

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=self._registry.live)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self._registry.ready)

    async def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=self._registry.is_ready(request.name, request.version))

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name=self._server_name, version=self._server_version,
                                         extensions=EXTENSIONS)

    async def ModelMetadata(self, request, context):
        model = self._registry.resolve(request.name, request.version)
        return metadata_response(model, self._registry.ready_versions(model.name))

    async def ModelInfer(self, call: InferCall, context: grpc.aio.ServicerContext) -> bytes:
        return await self._answer(call, context.add_done_callback, context)

    async def ModelStreamInfer(self, calls, context: grpc.aio.ServicerContext) -> None:
        # Each request takes the unary path; answer_stream orders, bounds and cancels them.
        # (A stream's writes wait for the client to read: no answer memory to hold.)
        await answer_stream(calls, lambda call: self._answer(call, None, context),
                            context.write)

    async def _answer(self, call: InferCall, on_done, context: grpc.aio.ServicerContext
                      ) -> bytes:
        """One inference request, unary or from a stream, as ModelInferResponse bytes;
        counted once in the metrics."""
        label, code = "_unknown", "OK"  # never a metric label per unknown name a client sends
        try:
            model = self._registry.resolve(call.request.model_name, call.request.model_version)
            label = model.name
            # No local holds the outputs: the codec thread that encodes them frees them too.
            data = await self._codec.encode_infer(call.request.id, model.name, model.version,
                                                  await self.infer(model, call))
            if on_done is not None:
                self._codec.hold(data, on_done)  # until the client has it
            return data
        except ServingError as exc:
            code = exc.status_code.name
            raise
        except asyncio.CancelledError:  # the client went away or its deadline passed
            # A client whose deadline passes resets the call itself, a little before the
            # server's copy of that deadline (the header's timeout started later here).
            remaining = context.time_remaining()
            code = ("DEADLINE_EXCEEDED" if remaining is not None and remaining < DEADLINE_SLACK_S
                    else "CANCELLED")
            raise
        except Exception:
            code = "INTERNAL"
            raise
        finally:
            self._on_request(label, code)

    async def infer(self, model: ServedModel, call: InferCall) -> dict:
        """One request's outputs; unary calls and stream items both come here. Everything
        is checked against the model before any tensor is decoded."""
        request = call.request
        outputs = requested_outputs(request)
        rows = model.check(input_headers(request, call.raw), outputs)
        timeout_s = request_timeout(request)
        if not call.large:
            # Look-up, decode and enqueue with no await between them: a version swap
            # cannot slip in and leave the request with a model that stopped taking work.
            return await model.infer(model.runtime_inputs(decode_inputs(request, call.raw)),
                                     outputs, rows=rows, timeout_s=timeout_s)
        ticket = model.reserve()  # the model waits for this request while it decodes
        try:
            inputs = await self._codec.off_loop(
                lambda: model.runtime_inputs(decode_inputs(request, call.raw)))
        except BaseException:
            model.release(ticket)
            raise
        answering = model.infer(inputs, outputs, ticket=ticket, timeout_s=timeout_s, rows=rows)
        del inputs  # see ServedModel.infer: only the run holds them
        return await answering

    async def ModelConfig(self, request, context):
        model = self._registry.resolve(request.name, request.version)
        return pb.ModelConfigResponse(config=model_config(model))

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

    async def RepositoryIndex(self, request, context):
        self._admin.check(context.invocation_metadata())
        check_repository_name(request.repository_name)
        return repository_index(self._controller.index(), ready_only=request.ready)

    async def RepositoryModelLoad(self, request, context):
        self._admin.check(context.invocation_metadata())
        check_repository_name(request.repository_name)
        check_model_name(request.model_name)
        await self._controller.load(request.model_name, load_parameters(request))
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request, context):
        self._admin.check(context.invocation_metadata())
        check_repository_name(request.repository_name)
        check_model_name(request.model_name)
        for key in request.parameters:
            if key != "unload_dependents":  # Triton's one; bnserve has no ensembles
                raise InvalidInputError(f"parameters: {quoted(key)} is not supported")
        await self._controller.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()
