"""The asyncio client: ``async with AsyncClient("localhost:8001") as c: await c.predict(...)``.

Same methods and semantics as ``Client``, awaited.
"""

from __future__ import annotations

from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Iterable,
    Mapping,
    Sequence,
)
from typing import Any

import grpc
import numpy as np
from numpy.typing import ArrayLike

from bnserve.client.channels import ClientBase
from bnserve.client.errors import (
    RETRY_ELSEWHERE,
    DeadlineExceededError,
    ServerUnavailableError,
    translate_rpc_errors,
)
from bnserve.client.messages import (
    ClassScore,
    ModelMetadata,
    RepositoryModel,
    StreamItem,
    as_dict,
    classes_from_output,
    index_from_response,
    infer_request,
    load_request,
    metadata_from_response,
    outputs_from_response,
    predict_chunks,
    stream_request,
    stream_result,
    tokenizer_from_config,
)
from bnserve.client.monitor import (
    DriftReport,
    Recalibration,
    captured_from_response,
    captured_request,
    drift_report_from_response,
    drift_request,
    recalibrate_request,
    recalibration_from_response,
)
from bnserve.proto import open_inference_pb2 as pb
from bnserve.proto.tokenizer import Tokenizer

__all__ = ["AsyncClient"]


class AsyncClient(ClientBase):
    """asyncio twin of ``Client``; create it inside the event loop that will use it."""

    _grpc = grpc.aio

    async def aclose(self) -> None:
        for channel in self._channels:
            await channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _call(self, method: str, request: Any, timeout: float | None,
              metadata: Any = None, *, monitor: bool = False) -> Any:
        with translate_rpc_errors():
            for stub, remaining, last in self._attempts(timeout, monitor=monitor):
                try:
                    return await getattr(stub, method)(request, timeout=remaining,
                                               metadata=metadata or self._auth)
                except grpc.RpcError as exc:
                    # That server is down or draining (RETRY_ELSEWHERE); the next may answer.
                    if exc.code() not in RETRY_ELSEWHERE or last:
                        raise
        raise AssertionError("unreachable")

    async def is_live(self, *, timeout: float | None = None) -> bool:
        return (await self._call("ServerLive", pb.ServerLiveRequest(), timeout)).live

    async def is_ready(self, *, timeout: float | None = None) -> bool:
        try:
            return (await self._call("ServerReady", pb.ServerReadyRequest(), timeout)).ready
        except (ServerUnavailableError, DeadlineExceededError):
            return False

    async def is_model_ready(
        self, model: str, *, version: str = "", timeout: float | None = None
    ) -> bool:
        request = pb.ModelReadyRequest(name=model, version=version)
        return (await self._call("ModelReady", request, timeout)).ready

    async def server_metadata(self, *, timeout: float | None = None) -> dict[str, Any]:
        response = await self._call("ServerMetadata", pb.ServerMetadataRequest(), timeout)
        return {"name": response.name, "version": response.version,
                "extensions": list(response.extensions)}

    async def metadata(
        self, model: str, *, version: str = "", timeout: float | None = None
    ) -> ModelMetadata:
        request = pb.ModelMetadataRequest(name=model, version=version)
        result = metadata_from_response(await self._call("ModelMetadata", request, timeout))
        self._metadata_cache[(model, version)] = result
        return result

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, ArrayLike],
        *,
        version: str = "",
        outputs: Sequence[str] | None = None,
        classification: int | None = None,
        timeout: float | None = None,
    ) -> dict[str, np.ndarray]:
        request = infer_request(model, inputs, version=version, outputs=outputs,
                                classification=classification)
        return outputs_from_response(await self._call("ModelInfer", request, timeout))

    async def predict(
        self,
        model: str,
        array: ArrayLike,
        *,
        version: str = "",
        batch_size: int | None = None,
        timeout: float | None = None,
    ) -> np.ndarray:
        return await self._predict(model, array, version, batch_size, timeout, None)

    async def classify(
        self,
        model: str,
        array: ArrayLike,
        *,
        top: int = 1,
        version: str = "",
        batch_size: int | None = None,
        timeout: float | None = None,
    ) -> list[list[ClassScore]]:
        """Each row's ``top`` classes, best first, with the labels the server holds for
        them: ``predict``'s request with Triton's classification extension on the model's
        first output (the server ranks; ``ClassScore.label`` is "" where it has none)."""
        answer = await self._predict(model, array, version, batch_size, timeout, top)
        return classes_from_output(answer)

    async def _predict(self, model: str, array: ArrayLike, version: str,
                       batch_size: int | None, timeout: float | None,
                       classification: int | None) -> np.ndarray:
        deadline = self._deadline(timeout)  # one budget for the metadata and every chunk
        meta = self._metadata_cache.get((model, version)) or await self.metadata(
            model, version=version, timeout=self._left(deadline)
        )
        input_name, output_name, chunks = predict_chunks(meta, array, batch_size)
        parts = []
        for chunk in chunks:
            result = await self.infer(
                model, {input_name: chunk}, version=version, outputs=[output_name],
                classification=classification, timeout=self._left(deadline),
            )
            parts.append(result[output_name])
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def stream(
        self,
        model: str,
        inputs: AsyncIterable[StreamItem] | Iterable[StreamItem],
        *,
        version: str = "",
        outputs: Sequence[str] | None = None,
        timeout: float | None = None,
    ) -> AsyncGenerator[dict[str, np.ndarray], None]:
        """``Client.stream``, asyncio: ``async for outputs in c.stream("m", items): ...``.
        ``inputs`` may be an async iterable or a plain one; ``await .aclose()`` cancels the
        stream when leaving the loop early."""
        deadline = self._deadline(timeout)
        stub = self._stub(self._order.order()[0])
        return self._stream(stub, model, inputs, version, outputs, deadline)

    async def _stream(self, stub: Any, model: str,
                      inputs: AsyncIterable[StreamItem] | Iterable[StreamItem], version: str,
                      outputs: Sequence[str] | None,
                      deadline: float | None) -> AsyncGenerator[dict[str, np.ndarray], None]:
        failed: list[Exception] = []  # an item that could not become a request stops the sending

        async def items() -> AsyncIterator[StreamItem]:
            if isinstance(inputs, AsyncIterable):
                async for item in inputs:
                    yield item
            else:
                for item in inputs:
                    yield item

        async def requests() -> AsyncIterator[pb.ModelInferRequest]:
            try:  # grpc consumes this in its own task: an exception is handed over
                index = 0
                async for item in items():
                    meta = None
                    if not isinstance(item, Mapping):
                        meta = self._metadata_cache.get((model, version)) or await self.metadata(
                            model, version=version, timeout=self._left(deadline))
                    yield stream_request(model, item, index=index, version=version,
                                         outputs=outputs, meta=meta)
                    index += 1
            except Exception as exc:
                failed.append(exc)

        call = stub.ModelStreamInfer(requests(), timeout=self._left(deadline))
        try:
            with translate_rpc_errors():
                index = 0
                async for response in call:
                    yield stream_result(response, index)
                    index += 1
            if failed:
                raise failed[0]
        finally:
            call.cancel()  # a no-op once the stream has ended

    # -- Triton's extensions ------------------------------------------------------------------

    async def model_config(self, model: str, *, version: str = "",
                     timeout: float | None = None) -> dict[str, Any]:
        """The model's effective configuration (Triton's ModelConfig), as plain data."""
        request = pb.ModelConfigRequest(name=model, version=version)
        return as_dict((await self._call("ModelConfig", request, timeout)).config)

    async def tokenizer(self, model: str, *, version: str = "",
                        timeout: float | None = None) -> Tokenizer | None:
        """How ``model`` turns text into its token ids, as ``Client.tokenizer``."""
        request = pb.ModelConfigRequest(name=model, version=version)
        return tokenizer_from_config((await self._call("ModelConfig", request, timeout)).config)

    async def statistics(self, model: str = "", *, version: str = "",
                   timeout: float | None = None) -> list[dict[str, Any]]:
        """Per-version inference statistics (every model when ``model`` is "")."""
        request = pb.ModelStatisticsRequest(name=model, version=version)
        response = await self._call("ModelStatistics", request, timeout)
        return [as_dict(s) for s in response.model_stats]

    async def repository_index(self, *, ready: bool = False,
                         timeout: float | None = None) -> list[RepositoryModel]:
        """Every model and version the server knows, with its state (needs the admin token)."""
        request = pb.RepositoryIndexRequest(ready=ready)
        return index_from_response(await self._call("RepositoryIndex", request, timeout, self._admin))

    async def load_model(self, model: str, *, config: Mapping[str, Any] | str | None = None,
                   timeout: float | None = None) -> None:
        """Load or reload ``model`` (explicit model control); ``config``: a ModelConfig (dict
        or JSON) used instead of its config.pbtxt. Raises when no version could load."""
        await self._call("RepositoryModelLoad", load_request(model, config), timeout, self._admin)

    async def unload_model(self, model: str, *, timeout: float | None = None) -> None:
        """Stop serving ``model`` once its queued requests are answered (explicit control)."""
        request = pb.RepositoryModelUnloadRequest(model_name=model)
        await self._call("RepositoryModelUnload", request, timeout, self._admin)

    # -- bnserve's BatchNorm monitor ------------------------------------------------------------

    async def drift_report(self, model: str, version: str | int | None = None, *,
                     include_channels: bool = False,
                     timeout: float | None = None) -> DriftReport:
        """How far the activations entering each BatchNorm layer of ``model`` (its highest
        ready version unless ``version``) are from what training froze into them.
        ``include_channels``: also each layer's per-channel reference and live moments.
        FailedPreconditionError when the version has no monitor (the message says why)."""
        request = drift_request(model, version, include_channels)
        return drift_report_from_response(
            await self._call("DriftReport", request, timeout, monitor=True))

    async def recalibrate(self, model: str, version: str | int | None = None, *,
                    max_rows: int = 0, prior_strength: float | None = None,
                    input_statistics: bool | None = None,
                    timeout: float | None = None) -> Recalibration:
        """Have the server recalibrate ``model`` (its highest ready version, or ``version``)
        from the inputs it captured (a server started with --capture-rows), publish the
        next version and serve it. ``max_rows``: the most recent rows to use (0: all);
        ``prior_strength``, ``input_statistics``: as ``bnserve recalibrate`` (None: the
        server's defaults). Needs the admin token (``admin_token=``); give it a timeout of a
        minute or more (the new version is checked and warmed up before the answer)."""
        request = recalibrate_request(model, version, max_rows, prior_strength,
                                      input_statistics)
        return recalibration_from_response(
            await self._call("Recalibrate", request, timeout, self._admin, monitor=True))

    async def captured_inputs(self, model: str, version: str | int | None = None, *,
                        max_rows: int = 0,
                        timeout: float | None = None) -> dict[str, np.ndarray]:
        """The most recent input rows the server captured for ``model`` (a server started
        with --capture-rows), oldest first, at most ``max_rows`` (0: all it holds and can
        send). Needs the admin token (``admin_token=``)."""
        request = captured_request(model, version, max_rows)
        return captured_from_response(
            await self._call("CapturedInputs", request, timeout, self._admin, monitor=True))
