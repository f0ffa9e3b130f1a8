"""The asyncio client: ``async with AsyncClient("localhost:8001") as c: await c.predict(...)``.

Same methods and semantics as ``Client``, awaited.
"""

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

__all__ = ["AsyncClient"]


class AsyncClient:
    """asyncio twin of ``Client``; create it inside the event loop that will use it."""

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
            grpc.aio.secure_channel(a, config.credentials, config.options)
            if config.credentials
            else grpc.aio.insecure_channel(a, config.options)
            for a in config.addresses
        ]
        self._stubs = [pb_grpc.GRPCInferenceServiceStub(c) for c in self._channels]
        self._order = RoundRobin(len(self._stubs))
        self._metadata_cache: dict[tuple[str, str], ModelMetadata] = {}

    async def aclose(self) -> None:
        for channel in self._channels:
            await channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _call(self, method: str, request: Any, timeout: float | None) -> Any:
        timeout = self.timeout if timeout is None else timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        order = self._order.order()
        with translate_rpc_errors():
            for attempt, index in enumerate(order):
                remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
                try:
                    return await getattr(self._stubs[index], method)(request, timeout=remaining)
                except grpc.RpcError as exc:
                    last = attempt == len(order) - 1
                    if exc.code() != grpc.StatusCode.UNAVAILABLE or last:
                        raise
        raise AssertionError("unreachable")

    async def is_live(self, *, timeout: float | None = None) -> bool:
        return (await self._call("ServerLive", pb.ServerLiveRequest(), timeout)).live

    async def is_ready(self, *, timeout: float | None = None) -> bool:
        try:
            return (await self._call("ServerReady", pb.ServerReadyRequest(), timeout)).ready
        except ServerUnavailableError:
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
        timeout: float | None = None,
    ) -> dict[str, np.ndarray]:
        request = infer_request(model, inputs, version=version, outputs=outputs)
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
        meta = self._metadata_cache.get((model, version)) or await self.metadata(
            model, version=version, timeout=timeout
        )
        if len(meta.inputs) != 1:
            raise ValueError(f"model {model!r} has {len(meta.inputs)} inputs; use infer()")
        first_input, first_output = meta.inputs[0], meta.outputs[0]
        x = np.asarray(array, dtype=first_input.dtype)
        step = batch_size or max(len(x), 1)
        parts = []
        for start in range(0, max(len(x), 1), step):
            result = await self.infer(
                model, {first_input.name: x[start : start + step]}, version=version,
                outputs=[first_output.name], timeout=timeout,
            )
            parts.append(result[first_output.name])
        return parts[0] if len(parts) == 1 else np.concatenate(parts)
