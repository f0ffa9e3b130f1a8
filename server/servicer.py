"""The Open Inference Protocol servicer: protobuf in, plain Python core, protobuf out.

Every handler runs inside ``_status_mapping``, the one place where domain errors become
gRPC statuses and anything unexpected becomes INTERNAL "internal error" (logged with
its traceback, never sent to the client).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

import grpc

from bnserve.proto import open_inference_pb2 as pb
from bnserve.proto import open_inference_pb2_grpc as pb_grpc
from bnserve.server import metrics
from bnserve.server.core import ModelManager
from bnserve.server.errors import ServingError
from bnserve.server.model import PLATFORM
from bnserve.server.wire import inputs_from_request, requested_outputs, response_from_outputs

log = logging.getLogger(__name__)


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        self.code, self.message = code, message


@contextlib.contextmanager
def _status_mapping(method: str) -> Iterator[None]:
    try:
        yield
    except ServingError as exc:
        raise _Abort(exc.status_code, str(exc)) from exc
    except Exception as exc:
        log.exception("%s failed", method)
        raise _Abort(grpc.StatusCode.INTERNAL, "internal error") from exc


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, manager: ModelManager, *, server_name: str, server_version: str) -> None:
        self._manager = manager
        self._server_name = server_name
        self._server_version = server_version

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self._manager.ready)

    async def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=self._manager.is_ready(request.name, request.version))

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(
            name=self._server_name, version=self._server_version, extensions=[]
        )

    async def ModelMetadata(self, request, context):
        try:
            with _status_mapping("ModelMetadata"):
                model = self._manager.get(request.name, request.version)
                response = pb.ModelMetadataResponse(
                    name=model.name, versions=[model.version], platform=PLATFORM
                )
                for spec in model.inputs:
                    response.inputs.add(name=spec.name, datatype=spec.datatype, shape=spec.shape)
                for spec in model.outputs:
                    response.outputs.add(name=spec.name, datatype=spec.datatype, shape=spec.shape)
                return response
        except _Abort as abort:
            await context.abort(abort.code, abort.message)

    async def ModelInfer(self, request, context):
        code, model_label = "OK", "_unknown"  # never a label per unknown name a client sends
        try:
            with _status_mapping("ModelInfer"):
                model = self._manager.get(request.model_name, request.model_version)
                model_label = model.name
                inputs = inputs_from_request(request)
                outputs = await model.infer(inputs, requested_outputs(request))
                return response_from_outputs(request, model.name, model.version, outputs)
        except _Abort as abort:
            code = abort.code.name
            await context.abort(abort.code, abort.message)
        except asyncio.CancelledError:  # the client went away or its deadline passed
            code = "CANCELLED"
            raise
        finally:
            metrics.count_request(model_label, code)
