"""A served model version: its runtime session, its batcher, its statistics, and the checks a
request must pass. The loader builds it (``bnserve.server.loader``); the registry finds it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bnserve.proto.tensors import datatype_of, dtype_of
from bnserve.proto.tokenizer import Tokenizer
from bnserve.repository.card import ModelCard
from bnserve.server.batcher import BatchPolicy, BatchRecord, DynamicBatcher, Tensors, Ticket
from bnserve.server.classification import top_k
from bnserve.server.errors import InvalidInputError, quoted
from bnserve.server.independence import IndependenceResult
from bnserve.server.input_ranges import check_ranges
from bnserve.server.model_config import ModelSettings
from bnserve.server.runtime import TensorSpec
from bnserve.server.sampling import Monitoring
from bnserve.server.statistics import InferenceStatistics

log = logging.getLogger(__name__)


STRING_RUN_ELEMENTS = 1 << 16  # string elements per onnxruntime call (see ServedModel._run)

Header = tuple[str, Sequence[int]]  # a tensor's datatype and shape, before its data


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    classification: int | None = None  # top K as "score:index:label" BYTES


@dataclass(frozen=True)
class ServingPlan:
    """How a version is served, resolved at load from its graph, config and card."""

    inputs: tuple[TensorSpec, ...]  # full shapes; -1 on the batch axis when max_batch_size > 0
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int  # rows per request and per run; 0: the graph has no batch axis
    batching: bool  # requests are merged into one run
    input_formats: dict[str, str] = field(default_factory=dict)  # FORMAT_NONE/NCHW/NHWC
    labels: dict[str, tuple[str, ...]] = field(default_factory=dict)  # output -> class labels
    # integer input -> lowest and highest valid value (token ids; bnserve.server.input_ranges)
    value_ranges: dict[str, tuple[int, int]] = field(default_factory=dict)
    independence: IndependenceResult | None = None
    # How text becomes the ids of a text model's input (the graph's bnserve.tokenizer);
    # reported in ModelConfig's parameters, for clients to encode with.
    tokenizer: Tokenizer | None = None


class ServedModel:
    def __init__(
        self,
        name: str,
        version: int,
        directory: Path,
        session: Any,  # OnnxRuntimeSession or a test's fake: .run(feeds) and .providers
        plan: ServingPlan,
        settings: ModelSettings,
        *,
        card: ModelCard | None = None,
        fingerprint: tuple = (),
        observer: Callable[[str, BatchRecord], None] | None = None,
        monitoring: Monitoring | None = None,
    ) -> None:
        self.name = name
        self.version = str(version)
        self.version_number = version
        self.directory = directory
        self.session = session
        self.plan = plan
        self.settings = settings
        self.card = card
        self.fingerprint = fingerprint  # what the files looked like when loaded
        self.statistics = InferenceStatistics()
        # The drift monitor and the input capture (either may be off); the loader builds them.
        self.monitoring = monitoring or Monitoring(drift_problem="the version has no monitor")
        self._sampler = self.monitoring.sampler
        self.inputs: list[TensorSpec] = list(plan.inputs)
        self.outputs: list[TensorSpec] = list(plan.outputs)
        self._inputs_by_name = {spec.name: spec for spec in self.inputs}
        self._output_names = {spec.name for spec in self.outputs}
        self.batchable = plan.max_batch_size > 0
        self.max_batch_size = plan.max_batch_size
        self._running = 0  # runtime calls in progress (executor threads update it)
        self._running_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=settings.instance_count,
                                            thread_name_prefix=f"ort-{name}-{version}")

        def observe(record: BatchRecord) -> None:
            self.statistics.record_run(requests=record.requests, rows=record.rows,
                                       queue_waits=list(record.queue_waits_s),
                                       input_s=record.input_s, infer_s=record.run_s,
                                       output_s=record.output_s)
            if observer:
                observer(name, record)

        self.batcher = DynamicBatcher(
            self._run,
            executor=self._executor,
            policy=BatchPolicy(
                max_batch_size=max(plan.max_batch_size, 1),
                max_queue_delay_s=settings.max_queue_delay_s,
                max_queue_size=settings.max_queue_size,
                batching=plan.batching,
                preferred_batch_sizes=settings.preferred_batch_sizes,
                queue_timeout_s=settings.queue_timeout_s,
                allow_timeout_override=settings.allow_timeout_override,
                instances=settings.instance_count,
                # A config that sets dynamic_batching keeps Triton's fixed delay.
                adaptive_delay=settings.dynamic_batching is not True,
            ),
            name=f"{name}/{version}",
            observer=observe,
        )

    def _run(self, feeds: Tensors) -> Tensors:
        """One runtime call, or several over row slices when string tensors are large:
        onnxruntime converts strings to and from Python objects holding the GIL, 75 ms for
        250k of them, which would stall the event loop. Only for models whose rows are
        independent (the batching ones), where slicing cannot change an answer."""
        with self._running_lock:
            self._running += 1
        try:
            strings = max((a.size for a in feeds.values() if a.dtype == object), default=0)
            if strings <= STRING_RUN_ELEMENTS or not self.plan.batching:
                answer = self.session.run(feeds)
            else:
                rows = next(iter(feeds.values())).shape[0]
                step = max(1, rows * STRING_RUN_ELEMENTS // strings)
                parts = [self.session.run({n: a[i:i + step] for n, a in feeds.items()})
                         for i in range(0, rows, step)]
                answer = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
            if self._sampler is not None:  # only inputs the model took; one draw when unsampled
                self._sampler.offer(feeds)
            return answer
        finally:
            with self._running_lock:
                self._running -= 1

    def start(self) -> None:
        self.batcher.start()

    async def drain(self) -> None:
        """Finish every request already taken, take no more, release the session's threads."""
        await self.batcher.drain()
        self._executor.shutdown(wait=False)  # idle now: its threads exit on their own
        self.monitoring.close()

    async def stop(self) -> None:
        """Stop now: waiting requests are answered UNAVAILABLE. A run still in progress
        finishes in its thread, which nothing waits for (a stuck run must not hold up a
        shutdown)."""
        await self.batcher.stop()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.monitoring.close()
        if self._running:
            log.warning("model %r version %s: a run outlived the shutdown grace period; not "
                        "waiting for it", self.name, self.version)

    def check(self, headers: Mapping[str, Header], outputs: Sequence[RequestedOutput] = ()
              ) -> int:
        """The request's rows, from its tensors' datatypes and shapes alone (nothing is
        decoded yet, so a shape cannot make the server allocate); InvalidInputError naming
        the tensor unless the request fits the model."""
        unknown = sorted(set(headers) - set(self._inputs_by_name))
        if unknown:
            raise InvalidInputError(
                f"model {quoted(self.name)} has no input {quoted(unknown[0], 128)}; "
                f"its inputs are {sorted(self._inputs_by_name)}"
            )
        missing = sorted(set(self._inputs_by_name) - set(headers))
        if missing:
            spec = self._inputs_by_name[missing[0]]
            raise InvalidInputError(
                f"input {spec.name!r} is missing: expected {spec.datatype} with shape "
                f"{list(spec.shape)}"
            )
        rows = set()
        for name, (datatype, shape) in headers.items():
            spec = self._inputs_by_name[name]
            if datatype != spec.datatype:
                raise InvalidInputError(
                    f"input {name!r}: datatype {datatype} does not match the model's "
                    f"{spec.datatype}"
                )
            if len(shape) != len(spec.shape) or any(
                want not in (-1, got) for want, got in zip(spec.shape, shape, strict=True)
            ):
                shown = list(shape) if len(shape) <= 8 else f"of rank {len(shape)}"
                raise InvalidInputError(
                    f"input {name!r}: shape {shown} does not fit the model's "
                    f"{list(spec.shape)} (-1 = any size)"
                )
            # Only the batch axis may be 0 (a zero-row request answers zero rows).
            if any(d == 0 for d in shape[1 if self.batchable else 0:]):
                raise InvalidInputError(f"input {name!r}: shape {list(shape)} is empty")
            rows.add(shape[0] if shape else 1)
        batch = 1
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
        seen: set[str] = set()
        for output in outputs:
            if output.name not in self._output_names:
                raise InvalidInputError(
                    f"model {self.name!r} has no output {quoted(output.name, 128)}; "
                    f"its outputs are {sorted(self._output_names)}"
                )
            if output.name in seen:
                raise InvalidInputError(f"outputs name {output.name!r} twice")
            seen.add(output.name)
        return batch

    def prepare(self, inputs: Tensors, outputs: Sequence[RequestedOutput] = ()
                ) -> tuple[Tensors, int]:
        """The inputs as the runtime takes them, and their rows (see ``check``)."""
        rows = self.check({name: (datatype_of(array.dtype), array.shape)
                           for name, array in inputs.items()}, outputs)
        return self.runtime_inputs(inputs), rows

    def runtime_inputs(self, inputs: Tensors) -> Tensors:
        """The decoded inputs as the runtime takes them (BYTES as str), their values
        checked: InvalidInputError for an integer input outside its valid range (a token
        id outside the vocabulary). The headers' checks are ``check``'s."""
        check_ranges(inputs, self.plan.value_ranges)
        return {name: _runtime_form(array, name) for name, array in inputs.items()}

    def reserve(self) -> Ticket:
        """A place in the queue for a request still being decoded (off the event loop): a
        drain waits for it and a full queue refuses it now, before the work."""
        return self.batcher.reserve()

    def release(self, ticket: Ticket) -> None:
        """Give back a reserved place: the request was refused before it was queued."""
        self.batcher.release(ticket)

    async def infer(self, inputs: Tensors, outputs: Sequence[RequestedOutput] = (), *,
                    ticket: Ticket | None = None, timeout_s: float | None = None,
                    rows: int | None = None) -> Tensors:
        """Answer one request. Without a ``ticket`` it is queued before this coroutine first
        suspends, so a caller that awaits it right after looking the model up is never lost
        to a version swap; with one, its reserved place is used. ``timeout_s``: the
        request's own queue timeout (Triton's ``timeout`` parameter). ``rows``: the caller
        has already checked the request (``check`` gave these rows) and converted its
        inputs (``runtime_inputs``); the server does so before and while decoding."""
        started = time.perf_counter()
        ok = False
        try:
            try:
                if rows is None:
                    inputs, rows = self.prepare(inputs, outputs)
            except BaseException:
                rows = 0
                if ticket is not None:
                    self.release(ticket)
                raise
            if rows == 0 and self.batchable:
                if ticket is not None:
                    self.release(ticket)
                result = self._empty_outputs(outputs)
            else:
                queued = self.batcher.enqueue(inputs, ticket=ticket, timeout_s=timeout_s)
                del inputs  # the run frees large inputs off the event loop
                answer = await queued
                result = self._shape_outputs(answer, outputs)
            ok = True
            return result
        finally:
            self.statistics.record_request(ok=ok, seconds=time.perf_counter() - started,
                                           rows=rows)

    def _empty_outputs(self, outputs: Sequence[RequestedOutput]) -> Tensors:
        """A zero-row request's answer, as Triton gives it: every output with 0 rows."""
        wanted = outputs or [RequestedOutput(spec.name) for spec in self.outputs]
        specs = {spec.name: spec for spec in self.outputs}
        empty = {}
        for output in wanted:
            spec = specs[output.name]
            if output.classification is not None:
                empty[output.name] = np.empty((0, output.classification), dtype=object)
            else:
                tail = [max(d, 0) for d in spec.shape[1:]]
                empty[output.name] = np.empty((0, *tail), dtype=dtype_of(spec.datatype))
        return empty

    def _shape_outputs(self, answer: Tensors, outputs: Sequence[RequestedOutput]) -> Tensors:
        if not outputs:
            return answer
        shaped = {}
        for output in outputs:
            array = answer[output.name]
            if output.classification is not None:
                array = top_k(array, output.classification, self.plan.labels.get(output.name, ()),
                              batched=self.batchable, output=output.name)
            shaped[output.name] = array
        return shaped

    def describe(self) -> dict[str, Any]:
        """Plain-data summary for logs."""
        return {
            "name": self.name,
            "version": self.version,
            "providers": self.session.providers,
            "max_batch_size": self.max_batch_size,
            "batching": self.plan.batching,
            "instances": self.settings.instance_count,
            "config": self.settings.source,
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
