"""The blocking client: ``with Client("localhost:8001") as c: c.predict("digits", x)``."""

from __future__ import annotations

from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
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

__all__ = ["Client"]


class Client(ClientBase):
    """A connection to one or more bnserve (or any Open Inference Protocol) servers.

    Several addresses are used in turn, call by call; a call that finds its server
    UNAVAILABLE moves on to the next one within the same deadline.
    """

    _grpc = grpc

    # -- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        for channel in self._channels:
            channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- calls ------------------------------------------------------------------------------

    def _call(self, method: str, request: Any, timeout: float | None,
              metadata: Any = None, *, monitor: bool = False) -> Any:
        with translate_rpc_errors():
            for stub, remaining, last in self._attempts(timeout, monitor=monitor):
                try:
                    return getattr(stub, method)(request, timeout=remaining,
                                               metadata=metadata or self._auth)
                except grpc.RpcError as exc:
                    # That server is down or draining (RETRY_ELSEWHERE); the next may answer.
                    if exc.code() not in RETRY_ELSEWHERE or last:
                        raise
        raise AssertionError("unreachable")

    def is_live(self, *, timeout: float | None = None) -> bool:
        return self._call("ServerLive", pb.ServerLiveRequest(), timeout).live

    def is_ready(self, *, timeout: float | None = None) -> bool:
        """True when a server answers ready; False when none is reachable or ready."""
        try:
            return self._call("ServerReady", pb.ServerReadyRequest(), timeout).ready
        except (ServerUnavailableError, DeadlineExceededError):
            return False

    def is_model_ready(self, model: str, *, version: str = "", timeout: float | None = None) -> bool:
        request = pb.ModelReadyRequest(name=model, version=version)
        return self._call("ModelReady", request, timeout).ready

    def server_metadata(self, *, timeout: float | None = None) -> dict[str, Any]:
        response = self._call("ServerMetadata", pb.ServerMetadataRequest(), timeout)
        return {"name": response.name, "version": response.version,
                "extensions": list(response.extensions)}

    def metadata(self, model: str, *, version: str = "", timeout: float | None = None) -> ModelMetadata:
        request = pb.ModelMetadataRequest(name=model, version=version)
        result = metadata_from_response(self._call("ModelMetadata", request, timeout))
        self._metadata_cache[(model, version)] = result
        return result

    def infer(
        self,
        model: str,
        inputs: Mapping[str, ArrayLike],
        *,
        version: str = "",
        outputs: Sequence[str] | None = None,
        classification: int | None = None,
        timeout: float | None = None,
    ) -> dict[str, np.ndarray]:
        """Send named arrays as they are (no casting); get every (or the named) output.
        ``classification``: each named output comes back as its top K classes per row,
        BYTES ``"score:index:label"`` (Triton's classification extension)."""
        request = infer_request(model, inputs, version=version, outputs=outputs,
                                classification=classification)
        return outputs_from_response(self._call("ModelInfer", request, timeout))

    def predict(
        self,
        model: str,
        array: ArrayLike,
        *,
        version: str = "",
        batch_size: int | None = None,
        timeout: float | None = None,
    ) -> np.ndarray:
        """One input in, the model's first output back; the array is cast to the input's dtype.

        ``batch_size`` splits a large array into requests of at most that many rows (servers
        refuse a request above their batch limit); the answers are concatenated in order.
        ``timeout`` bounds the whole call, every request of it together.
        """
        return self._predict(model, array, version, batch_size, timeout, None)

    def classify(
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
        answer = self._predict(model, array, version, batch_size, timeout, top)
        return classes_from_output(answer)

    def _predict(self, model: str, array: ArrayLike, version: str, batch_size: int | None,
                 timeout: float | None, classification: int | None) -> np.ndarray:
        deadline = self._deadline(timeout)  # one budget for the metadata and every chunk
        meta = self._metadata_cache.get((model, version)) or self.metadata(
            model, version=version, timeout=self._left(deadline)
        )
        input_name, output_name, chunks = predict_chunks(meta, array, batch_size)
        parts = []
        for chunk in chunks:
            result = self.infer(
                model, {input_name: chunk}, version=version, outputs=[output_name],
                classification=classification, timeout=self._left(deadline),
            )
            parts.append(result[output_name])
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def stream(
        self,
        model: str,
        inputs: Iterable[StreamItem],
        *,
        version: str = "",
        outputs: Sequence[str] | None = None,
        timeout: float | None = None,
    ) -> Generator[dict[str, np.ndarray], None, None]:
        """Send every item of ``inputs`` over one ModelStreamInfer stream; yield each item's
        outputs, in order, as ``infer`` returns them.

        An item is a dict of named arrays (sent as they are, like ``infer``) or one array for
        a one-input model (cast to its input's dtype, like ``predict``). ``inputs`` is read
        lazily, as the stream lets requests go, so it may be endless. Many items are in flight
        at once and batch with each other and with other callers. The first item the server
        refuses raises what ``infer`` would raise for it, with ``.index`` its position; the
        stream is then cancelled, so later items get no answer. An item that cannot be
        encoded raises in its place too. ``timeout`` bounds the whole stream, counted from
        this call; a stream uses one of the client's addresses (the next in turn) and does
        not fail over. Leaving the loop early cancels the stream once the generator is closed
        (``.close()``, or when it is collected).
        """
        deadline = self._deadline(timeout)
        stub = self._stub(self._order.order()[0])
        return self._stream(stub, model, inputs, version, outputs, deadline)

    def _stream(self, stub: Any, model: str, inputs: Iterable[StreamItem], version: str,
                outputs: Sequence[str] | None,
                deadline: float | None) -> Generator[dict[str, np.ndarray], None, None]:
        failed: list[Exception] = []  # an item that could not become a request stops the sending

        def requests() -> Iterator[pb.ModelInferRequest]:
            try:  # runs in one of grpc's threads: an exception is handed over, not raised there
                for index, item in enumerate(inputs):
                    meta = None
                    if not isinstance(item, Mapping):
                        meta = self._metadata_cache.get((model, version)) or self.metadata(
                            model, version=version, timeout=self._left(deadline))
                    yield stream_request(model, item, index=index, version=version,
                                         outputs=outputs, meta=meta)
            except Exception as exc:
                failed.append(exc)

        call = stub.ModelStreamInfer(requests(), timeout=self._left(deadline))
        try:
            with translate_rpc_errors():
                for index, response in enumerate(call):
                    yield stream_result(response, index)
            if failed:
                raise failed[0]
        finally:
            call.cancel()  # a no-op once the stream has ended

    # -- Triton's extensions ------------------------------------------------------------------

    def model_config(self, model: str, *, version: str = "",
                     timeout: float | None = None) -> dict[str, Any]:
        """The model's effective configuration (Triton's ModelConfig), as plain data."""
        request = pb.ModelConfigRequest(name=model, version=version)
        return as_dict((self._call("ModelConfig", request, timeout)).config)

    def tokenizer(self, model: str, *, version: str = "",
                  timeout: float | None = None) -> Tokenizer | None:
        """How ``model`` turns text into its input's token ids, as its server reports it
        (the ModelConfig parameter ``bnserve.tokenizer``, from the model's graph)::

            ids = client.tokenizer("text").encode(["the team won the final"])  # (1, L) int64
            client.classify("text", ids)

        None when the model ships no tokenizer (not a text model, or exported from token ids
        without a vocabulary); ``TokenizerError`` (a ValueError) when the server's spec is
        malformed."""
        request = pb.ModelConfigRequest(name=model, version=version)
        return tokenizer_from_config(self._call("ModelConfig", request, timeout).config)

    def statistics(self, model: str = "", *, version: str = "",
                   timeout: float | None = None) -> list[dict[str, Any]]:
        """Per-version inference statistics (every model when ``model`` is "")."""
        request = pb.ModelStatisticsRequest(name=model, version=version)
        response = self._call("ModelStatistics", request, timeout)
        return [as_dict(s) for s in response.model_stats]

    def repository_index(self, *, ready: bool = False,
                         timeout: float | None = None) -> list[RepositoryModel]:
        """Every model and version the server knows, with its state (needs the admin token)."""
        request = pb.RepositoryIndexRequest(ready=ready)
        return index_from_response(self._call("RepositoryIndex", request, timeout, self._admin))

    def load_model(self, model: str, *, config: Mapping[str, Any] | str | None = None,
                   timeout: float | None = None) -> None:
        """Load or reload ``model`` (explicit model control); ``config``: a ModelConfig (dict
        or JSON) used instead of its config.pbtxt. Raises when no version could load."""
        self._call("RepositoryModelLoad", load_request(model, config), timeout, self._admin)

    def unload_model(self, model: str, *, timeout: float | None = None) -> None:
        """Stop serving ``model`` once its queued requests are answered (explicit control)."""
        request = pb.RepositoryModelUnloadRequest(model_name=model)
        self._call("RepositoryModelUnload", request, timeout, self._admin)

    # -- bnserve's BatchNorm monitor ------------------------------------------------------------

    def drift_report(self, model: str, version: str | int | None = None, *,
                     include_channels: bool = False,
                     timeout: float | None = None) -> DriftReport:
        """How far the activations entering each BatchNorm layer of ``model`` (its highest
        ready version unless ``version``) are from what training froze into them.
        ``include_channels``: also each layer's per-channel reference and live moments.
        FailedPreconditionError when the version has no monitor (the message says why)."""
        request = drift_request(model, version, include_channels)
        return drift_report_from_response(
            self._call("DriftReport", request, timeout, monitor=True))

    def recalibrate(self, model: str, version: str | int | None = None, *,
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
            self._call("Recalibrate", request, timeout, self._admin, monitor=True))

    def captured_inputs(self, model: str, version: str | int | None = None, *,
                        max_rows: int = 0,
                        timeout: float | None = None) -> dict[str, np.ndarray]:
        """The most recent input rows the server captured for ``model`` (a server started
        with --capture-rows), oldest first, at most ``max_rows`` (0: all it holds and can
        send). Needs the admin token (``admin_token=``)."""
        request = captured_request(model, version, max_rows)
        return captured_from_response(
            self._call("CapturedInputs", request, timeout, self._admin, monitor=True))
