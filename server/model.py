"""A served model: its runtime session, its batcher, and the checks a request must pass."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from bnserve.proto.tensors import datatype_of
from bnserve.server.batcher import DynamicBatcher, Tensors
from bnserve.server.errors import InvalidInputError
from bnserve.server.repository import ModelVersion
from bnserve.server.runtime import OnnxRuntimeSession, TensorSpec

log = logging.getLogger(__name__)

PLATFORM = "onnxruntime_onnx"  # what Triton reports for ONNX models; tritonclient knows it


class ServedModel:
    def __init__(
        self,
        entry: ModelVersion,
        session: OnnxRuntimeSession,
        *,
        max_batch_size: int,
        max_queue_delay_s: float,
        max_queue_size: int,
        observer: Any = None,
    ) -> None:
        self.name = entry.name
        self.version = str(entry.version)
        self.metadata = entry.metadata
        self.session = session
        self.inputs: list[TensorSpec] = session.inputs
        self.outputs: list[TensorSpec] = session.outputs
        self._inputs_by_name = {spec.name: spec for spec in self.inputs}
        self._output_names = {spec.name for spec in self.outputs}
        # Rows can be merged only if every tensor's first dimension is the free batch axis.
        self.batchable = all(s.shape[:1] == (-1,) for s in self.inputs + self.outputs)
        self.max_batch_size = max_batch_size if self.batchable else 1
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ort-{self.name}")
        self.batcher = DynamicBatcher(
            session.run,
            executor=self._executor,
            max_batch_size=self.max_batch_size,
            max_queue_delay_s=max_queue_delay_s if self.batchable else 0.0,
            max_queue_size=max_queue_size,
            name=self.name,
            observer=(lambda record: observer(self.name, record)) if observer else None,
        )

    def start(self) -> None:
        self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop()
        # A run still in progress finishes in its thread; the event loop keeps serving.
        await asyncio.to_thread(self._executor.shutdown, True)

    def prepare(self, inputs: Tensors, output_names: Sequence[str] = ()) -> Tensors:
        """The inputs as the runtime takes them; InvalidInputError naming the tensor unless
        the request fits the graph."""
        unknown = sorted(set(inputs) - set(self._inputs_by_name))
        if unknown:
            raise InvalidInputError(
                f"model {self.name!r} has no input {unknown[0]!r}; "
                f"its inputs are {sorted(self._inputs_by_name)}"
            )
        missing = sorted(set(self._inputs_by_name) - set(inputs))
        if missing:
            spec = self._inputs_by_name[missing[0]]
            raise InvalidInputError(
                f"input {spec.name!r} is missing: expected {spec.datatype} with shape "
                f"{list(spec.shape)}"
            )
        rows = set()
        for name, array in inputs.items():
            spec = self._inputs_by_name[name]
            datatype = datatype_of(array.dtype)
            if datatype != spec.datatype:
                raise InvalidInputError(
                    f"input {name!r}: datatype {datatype} does not match the model's "
                    f"{spec.datatype}"
                )
            if array.ndim != len(spec.shape) or any(
                want not in (-1, got) for want, got in zip(spec.shape, array.shape, strict=True)
            ):
                raise InvalidInputError(
                    f"input {name!r}: shape {list(array.shape)} does not fit the model's "
                    f"{list(spec.shape)} (-1 = any size)"
                )
            if array.size == 0 and array.ndim:
                raise InvalidInputError(f"input {name!r}: shape {list(array.shape)} is empty")
            rows.add(array.shape[0] if array.ndim else 1)
        if self.batchable:
            if len(rows) > 1:
                raise InvalidInputError(
                    f"inputs disagree on the batch size (first dimension): {sorted(rows)}"
                )
            batch = rows.pop()
            if batch > self.max_batch_size:
                raise InvalidInputError(
                    f"batch size {batch} is above the limit of {self.max_batch_size} for model "
                    f"{self.name!r}; split the request"
                )
        bad_outputs = sorted(set(output_names) - self._output_names)
        if bad_outputs:
            raise InvalidInputError(
                f"model {self.name!r} has no output {bad_outputs[0]!r}; "
                f"its outputs are {sorted(self._output_names)}"
            )
        if len(set(output_names)) != len(output_names):
            raise InvalidInputError(f"outputs {list(output_names)} name an output twice")
        return {name: _runtime_form(array, name) for name, array in inputs.items()}

    async def infer(self, inputs: Tensors, output_names: Sequence[str] = ()) -> Tensors:
        outputs = await self.batcher.submit(self.prepare(inputs, output_names))
        if output_names:
            return {name: outputs[name] for name in output_names}
        return outputs

    def describe(self) -> dict[str, Any]:
        """Plain-data summary for logs."""
        return {
            "name": self.name,
            "version": self.version,
            "providers": self.session.providers,
            "batchable": self.batchable,
            "inputs": [(s.name, s.datatype, list(s.shape)) for s in self.inputs],
            "outputs": [(s.name, s.datatype, list(s.shape)) for s in self.outputs],
        }


def _runtime_form(array: np.ndarray, name: str) -> np.ndarray:
    """BYTES arrive as Python bytes; onnxruntime's string tensors take str (UTF-8)."""
    if array.dtype != object:
        return array
    try:
        return np.vectorize(_utf8, otypes=[object])(array) if array.size else array
    except UnicodeDecodeError:
        raise InvalidInputError(f"input {name!r}: BYTES element is not UTF-8 text, which "
                                "the model's string input needs") from None


def _utf8(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value
