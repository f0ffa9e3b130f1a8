"""A fake Open Inference Protocol server for the thin client's tests: a small grpc.aio
servicer on bnserve's generated stubs (their server half), with no onnxruntime, so that the
client's tests run on a base install (grpcio, protobuf and numpy only).

Its models take FP32 ``x`` of shape (-1, 3):

    double   answers twice = 2x (FP32, (-1, 3)) and total = the row sums (FP64, (-1,)) as
             raw contents; the classes of ``twice`` are labelled a, b, c
    typed    the same, in the typed contents fields instead (as some servers answer)
    slow     answers after 10 s (for deadlines)
    busy     RESOURCE_EXHAUSTED, as a full queue
    broken   INTERNAL "internal error", as a server bug

An unknown model is NOT_FOUND, an input that does not fit INVALID_ARGUMENT, a repository or
captured-inputs call without ``authorization: Bearer admin-token`` UNAUTHENTICATED, a drift
report on ``typed`` (no monitor) FAILED_PRECONDITION. In a stream, a refused request is
answered in its place with ``error_message`` and its status name in ``bnserve_status``, as
bnserve does. ``FakeServer.calls`` lists each method called (with its metadata), in order.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from concurrent.futures import Future

import grpc
import numpy as np

from bnserve.proto import model_config_pb2 as mc
from bnserve.proto import monitor_pb2 as mpb
from bnserve.proto import monitor_pb2_grpc as mpb_grpc
from bnserve.proto import open_inference_pb2 as pb
from bnserve.proto import open_inference_pb2_grpc as pb_grpc
from bnserve.proto.tensors import decode_raw, encode_contents, encode_raw

MODELS = ("double", "typed", "slow", "busy", "broken")
LABELS = ("a", "b", "c")
ADMIN_TOKEN = "admin-token"
_Tensor = pb.ModelMetadataResponse.TensorMetadata
INPUTS = [_Tensor(name="x", datatype="FP32", shape=[-1, 3])]
OUTPUTS = [_Tensor(name="twice", datatype="FP32", shape=[-1, 3]),
           _Tensor(name="total", datatype="FP64", shape=[-1])]
DATATYPES = {t.name: t.datatype for t in OUTPUTS}


class Refused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def refusing(handler):
    """A unary handler that answers a Refused with its status code and message."""
    @functools.wraps(handler)
    async def call(self, request, context):
        try:
            return await handler(self, request, context)
        except Refused as refused:
            await context.abort(refused.code, str(refused))
    return call


def known(name: str) -> None:
    if name not in MODELS:
        raise Refused(grpc.StatusCode.NOT_FOUND, f"model {name!r} is not served")


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """The classification extension's answer: rows of b"score:index:label", best first."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.array([[f"{scores[r, i]:f}:{i}:{LABELS[i]}".encode() for i in row]
                     for r, row in enumerate(order)], dtype=object)


def answer(request: pb.ModelInferRequest, captured: list[np.ndarray]) -> pb.ModelInferResponse:
    known(request.model_name)
    if request.model_name == "busy":
        raise Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, "model 'busy': the queue is full")
    if request.model_name == "broken":
        raise Refused(grpc.StatusCode.INTERNAL, "internal error")
    shapes = [(t.name, t.datatype, list(t.shape)) for t in request.inputs]
    if len(shapes) != 1 or shapes[0][:2] != ("x", "FP32") or shapes[0][2][1:] != [3]:
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT,
                      f"inputs {shapes} do not fit x FP32 [-1, 3]")
    x = decode_raw(request.raw_input_contents[0], "FP32", shapes[0][2], name="x")
    captured.append(x)
    results = {"twice": 2 * x, "total": x.sum(axis=1, dtype=np.float64)}
    asked = request.outputs or [pb.ModelInferRequest.InferRequestedOutputTensor(name=name)
                                for name in results]
    response = pb.ModelInferResponse(model_name=request.model_name, model_version="1",
                                     id=request.id)
    for output in asked:
        if output.name not in results:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"no output {output.name!r}")
        array = results[output.name]
        if "classification" in output.parameters:
            if array.ndim != 2:
                raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "classification needs classes")
            array = top_k(array, output.parameters["classification"].int64_param)
        datatype = "BYTES" if array.dtype == object else DATATYPES[output.name]
        tensor = response.outputs.add(name=output.name, datatype=datatype, shape=array.shape)
        if request.model_name == "typed":
            encode_contents(array, tensor.contents)
        else:
            response.raw_output_contents.append(encode_raw(array))
    return response


class FakeInference(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, calls: list[tuple[str, dict[str, str]]]) -> None:
        self.calls = calls
        self.captured: list[np.ndarray] = []  # every x inferred, for CapturedInputs
        self.repository: list[tuple[str, str]] = []  # (load/unload, model or config)

    def seen(self, method: str, context, *, admin: bool = False) -> None:
        metadata = dict(context.invocation_metadata() or ())
        self.calls.append((method, metadata))
        if admin and metadata.get("authorization") != f"Bearer {ADMIN_TOKEN}":
            raise Refused(grpc.StatusCode.UNAUTHENTICATED, "the admin token is needed")

    @refusing
    async def ServerLive(self, request, context):
        self.seen("ServerLive", context)
        return pb.ServerLiveResponse(live=True)

    @refusing
    async def ServerReady(self, request, context):
        self.seen("ServerReady", context)
        return pb.ServerReadyResponse(ready=True)

    @refusing
    async def ModelReady(self, request, context):
        self.seen("ModelReady", context)
        return pb.ModelReadyResponse(ready=request.name in MODELS)

    @refusing
    async def ServerMetadata(self, request, context):
        self.seen("ServerMetadata", context)
        return pb.ServerMetadataResponse(name="fake", version="0",
                                         extensions=["classification", "model_repository"])

    @refusing
    async def ModelMetadata(self, request, context):
        self.seen("ModelMetadata", context)
        known(request.name)
        return pb.ModelMetadataResponse(name=request.name, versions=["1"], platform="fake",
                                        inputs=INPUTS, outputs=OUTPUTS)

    @refusing
    async def ModelInfer(self, request, context):
        self.seen("ModelInfer", context)
        if request.model_name == "slow":
            await asyncio.sleep(10)  # cancelled when the caller's deadline passes
        return answer(request, self.captured)

    async def ModelStreamInfer(self, request_iterator, context):
        self.seen("ModelStreamInfer", context)
        async for request in request_iterator:
            try:
                yield pb.ModelStreamInferResponse(infer_response=answer(request, self.captured))
            except Refused as refused:
                error = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
                error.parameters["bnserve_status"].string_param = refused.code.name
                yield pb.ModelStreamInferResponse(error_message=str(refused),
                                                  infer_response=error)

    @refusing
    async def ModelConfig(self, request, context):
        self.seen("ModelConfig", context)
        known(request.name)
        return pb.ModelConfigResponse(config=mc.ModelConfig(
            name=request.name, platform="fake", max_batch_size=64))

    @refusing
    async def ModelStatistics(self, request, context):
        self.seen("ModelStatistics", context)
        names = [request.name] if request.name else ["double", "typed"]
        for name in names:
            known(name)
        rows = sum(len(x) for x in self.captured)
        return pb.ModelStatisticsResponse(model_stats=[
            pb.ModelStatistics(name=name, version="1", inference_count=rows) for name in names])

    @refusing
    async def RepositoryIndex(self, request, context):
        self.seen("RepositoryIndex", context, admin=True)
        Index = pb.RepositoryIndexResponse.ModelIndex
        return pb.RepositoryIndexResponse(models=[
            Index(name=name, version="1", state="READY") for name in ("double", "typed")])

    @refusing
    async def RepositoryModelLoad(self, request, context):
        self.seen("RepositoryModelLoad", context, admin=True)
        known(request.model_name)
        config = request.parameters["config"].string_param if "config" in request.parameters else ""
        self.repository.append(("load", config or request.model_name))
        return pb.RepositoryModelLoadResponse()

    @refusing
    async def RepositoryModelUnload(self, request, context):
        self.seen("RepositoryModelUnload", context, admin=True)
        known(request.model_name)
        self.repository.append(("unload", request.model_name))
        return pb.RepositoryModelUnloadResponse()


class FakeMonitor(mpb_grpc.BatchNormMonitorServicer):
    def __init__(self, inference: FakeInference) -> None:
        self.inference = inference

    @refusing
    async def DriftReport(self, request, context):
        self.inference.seen("DriftReport", context)
        known(request.model_name)
        if request.model_name != "double":
            raise Refused(grpc.StatusCode.FAILED_PRECONDITION,
                          f"model {request.model_name!r} version 1 has no drift monitor")
        layer = mpb.LayerDrift(name="stem.1", input="x", channels=3, score=0.25, mean_shift=0.5,
                               std_ratio=1.5)
        if request.include_channels:
            layer.reference_mean.extend([0.0, 0.0, 0.0])
            layer.live_mean.extend([0.5, 0.5, 0.5])
        return mpb.DriftReportResponse(
            model_name="double", model_version="1", measure="gaussian_kl", score=0.25,
            threshold=0.1, threshold_source="default", alarm=True, layers=[layer],
            history=[mpb.DriftPoint(seconds_ago=1.0, score=0.25, layer_scores=[0.25])])

    @refusing
    async def CapturedInputs(self, request, context):
        self.inference.seen("CapturedInputs", context, admin=True)
        known(request.model_name)
        rows = np.concatenate(self.inference.captured or [np.zeros((0, 3), np.float32)])
        rows = rows[-request.max_rows:] if request.max_rows else rows
        return mpb.CapturedInputsResponse(
            model_name=request.model_name, model_version="1", rows=len(rows),
            rows_seen=sum(len(x) for x in self.inference.captured),
            inputs=[mpb.CapturedTensor(name="x", datatype="FP32", shape=rows.shape,
                                       raw_contents=encode_raw(rows))])

    @refusing
    async def Recalibrate(self, request, context):
        self.inference.seen("Recalibrate", context, admin=True)
        known(request.model_name)
        # proto3 `optional`: unset is not 0.0 (the server's default applies).
        prior = (f"prior_strength {request.prior_strength:g}"
                 if request.HasField("prior_strength") else "default prior")
        return mpb.RecalibrateResponse(
            model_name=request.model_name, base_version="1", new_version="2",
            samples=sum(len(x) for x in self.inference.captured), drift_before=0.25,
            drift_after=0.01, threshold=0.1, serving=True, message=prior)


class FakeServer:
    """The fake on 127.0.0.1, port 0, in a thread of its own with its own event loop, so
    that blocking and asyncio clients alike can call it: ``with FakeServer() as fake:``."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, str]]] = []
        self.inference = FakeInference(self.calls)
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._started: Future[None] = Future()
        self._thread = threading.Thread(target=self._run, name="fake-servicer", daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def called(self, method: str) -> int:
        return sum(1 for name, _ in self.calls if name == method)

    def _run(self) -> None:
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        try:
            server = grpc.aio.server()
            pb_grpc.add_GRPCInferenceServiceServicer_to_server(self.inference, server)
            mpb_grpc.add_BatchNormMonitorServicer_to_server(FakeMonitor(self.inference), server)
            self.port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            self._stop = asyncio.Event()
        except BaseException as exc:
            self._started.set_exception(exc)
            return
        self._started.set_result(None)
        await self._stop.wait()
        await server.stop(0)

    def __enter__(self) -> FakeServer:
        self._thread.start()
        self._started.result(timeout=30)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), "the fake server did not stop within 30 s"
        self._loop.close()
