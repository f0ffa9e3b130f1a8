"""The blocking client: ``with Client("localhost:8001") as c: c.predict("digits", x)``."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
import numpy as np
from numpy.typing import ArrayLike

from bnserve.client.channels import DEFAULT_ADDRESS, RoundRobin, channel_config
from bnserve.client.errors import ServerUnavailableError, translate_rpc_errors
from bnserve.client.messages import (
    ModelMetadata,
    infer_request,
    metadata_from_response,
    outputs_from_response,
)
from bnserve.proto import open_inference_pb2 as pb
from bnserve.proto import open_inference_pb2_grpc as pb_grpc

__all__ = ["Client"]


class Client:
    """A connection to one or more bnserve (or any Open Inference Protocol) servers.

    Several addresses are used in turn, call by call; a call that finds its server
    UNAVAILABLE moves on to the next one within the same deadline.
    """

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
    ) -> None:
        config = channel_config(
            address,
            tls=tls,
            root_certificates=root_certificates,
            private_key=private_key,
            certificate_chain=certificate_chain,
            max_message_bytes=max_message_bytes,
        )
        self.addresses = config.addresses
        self.timeout = timeout
        self._channels = [
            grpc.secure_channel(a, config.credentials, config.options)
            if config.credentials
            else grpc.insecure_channel(a, config.options)
            for a in config.addresses
        ]
        self._stubs = [pb_grpc.GRPCInferenceServiceStub(c) for c in self._channels]
        self._order = RoundRobin(len(self._stubs))
        self._metadata_cache: dict[tuple[str, str], ModelMetadata] = {}

    # -- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        for channel in self._channels:
            channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- calls ------------------------------------------------------------------------------

    def _call(self, method: str, request: Any, timeout: float | None) -> Any:
        timeout = self.timeout if timeout is None else timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        order = self._order.order()
        with translate_rpc_errors():
            for attempt, index in enumerate(order):
                remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
                try:
                    return getattr(self._stubs[index], method)(request, timeout=remaining)
                except grpc.RpcError as exc:
                    last = attempt == len(order) - 1
                    if exc.code() != grpc.StatusCode.UNAVAILABLE or last:
                        raise
        raise AssertionError("unreachable")

    def is_live(self, *, timeout: float | None = None) -> bool:
        return self._call("ServerLive", pb.ServerLiveRequest(), timeout).live

    def is_ready(self, *, timeout: float | None = None) -> bool:
        """True when a server answers ready; False when none is reachable or ready."""
        try:
            return self._call("ServerReady", pb.ServerReadyRequest(), timeout).ready
        except ServerUnavailableError:
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
        timeout: float | None = None,
    ) -> dict[str, np.ndarray]:
        """Send named arrays as they are (no casting); get every (or the named) output."""
        request = infer_request(model, inputs, version=version, outputs=outputs)
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
        """
        meta = self._metadata_cache.get((model, version)) or self.metadata(
            model, version=version, timeout=timeout
        )
        if len(meta.inputs) != 1:
            raise ValueError(f"model {model!r} has {len(meta.inputs)} inputs; use infer()")
        first_input, first_output = meta.inputs[0], meta.outputs[0]
        x = np.asarray(array, dtype=first_input.dtype)
        step = batch_size or max(len(x), 1)
        parts = []
        for start in range(0, max(len(x), 1), step):
            result = self.infer(
                model, {first_input.name: x[start : start + step]}, version=version,
                outputs=[first_output.name], timeout=timeout,
            )
            parts.append(result[first_output.name])
        return parts[0] if len(parts) == 1 else np.concatenate(parts)
