"""Dynamic batching: concurrent requests for one model become one runtime call.

    submit() --> queue --> collect (up to max_batch_size rows, at most max_queue_delay)
                             --> group by row signature --> run_batch in the executor
                             --> split the outputs row-wise back to each caller

Requests wait for each other only as long as the delay allows; while a batch runs, new
requests pile up in the queue and form the next one. A batch that fails is retried one
request at a time, so one bad request cannot fail its neighbours.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from bnserve.server.errors import ModelNotReadyError, QueueFullError

log = logging.getLogger(__name__)

Tensors = dict[str, np.ndarray]
RunBatch = Callable[[Tensors], Tensors]


@dataclass(frozen=True)
class BatchRecord:
    """What happened to one runtime call; handed to the observer."""

    requests: int
    rows: int
    queue_wait_s: float  # longest wait of its requests
    run_s: float


@dataclass
class _Pending:
    inputs: Tensors
    rows: int
    future: asyncio.Future[Tensors]
    enqueued_at: float
    # Requests are merged only when every input agrees on dtype and per-row shape.
    signature: tuple = field(init=False)

    def __post_init__(self) -> None:
        self.signature = tuple(
            (name, array.dtype.str, array.shape[1:]) for name, array in sorted(self.inputs.items())
        )


class DynamicBatcher:
    def __init__(
        self,
        run_batch: RunBatch,
        *,
        executor: Executor,
        max_batch_size: int,
        max_queue_delay_s: float,
        max_queue_size: int,
        name: str = "model",
        observer: Callable[[BatchRecord], None] | None = None,
    ) -> None:
        self._run_batch = run_batch
        self._executor = executor
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_s
        self.max_queue_size = max_queue_size
        self.name = name
        self._observer = observer
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._carry: _Pending | None = None
        self._inflight: list[_Pending] = []  # the batch being collected or run
        self._task: asyncio.Task[None] | None = None
        self.runs = 0  # runtime calls made; tests and metrics read it

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._loop(), name=f"batcher:{self.name}"
            )

    async def stop(self) -> None:
        """Stop collecting; requests still queued are answered UNAVAILABLE."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        leftovers = self._inflight + ([self._carry] if self._carry else [])
        self._carry, self._inflight = None, []
        while not self._queue.empty():
            leftovers.append(self._queue.get_nowait())
        for pending in leftovers:
            if not pending.future.done():
                pending.future.set_exception(ModelNotReadyError(f"model {self.name!r} is stopping"))

    @property
    def queued(self) -> int:
        return self._queue.qsize() + (1 if self._carry else 0)

    async def submit(self, inputs: Tensors) -> Tensors:
        """Queue one request (all inputs share the leading batch dimension); await its rows."""
        if self._task is None:
            raise ModelNotReadyError(f"model {self.name!r} is not accepting requests")
        if self.queued >= self.max_queue_size:
            raise QueueFullError(
                f"model {self.name!r} has {self.max_queue_size} requests waiting; retry later"
            )
        loop = asyncio.get_running_loop()
        first = next(iter(inputs.values()))
        rows = first.shape[0] if first.ndim else 1
        pending = _Pending(inputs, rows, loop.create_future(), loop.time())
        self._queue.put_nowait(pending)
        return await pending.future

    async def _next_batch(self) -> list[_Pending]:
        loop = asyncio.get_running_loop()
        first = self._carry or await self._queue.get()
        self._carry = None
        # Collected straight into _inflight, so stop() can answer them whenever it cancels.
        batch, rows = self._inflight, first.rows
        batch.append(first)
        # The delay counts from when the oldest request arrived (Triton's meaning): one that
        # already waited through a whole run does not wait again.
        deadline = first.enqueued_at + self.max_queue_delay_s
        while rows < self.max_batch_size:
            if self._queue.empty():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    pending = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            else:
                pending = self._queue.get_nowait()
            if rows + pending.rows > self.max_batch_size:
                self._carry = pending  # opens the next batch
                break
            batch.append(pending)
            rows += pending.rows
        return batch

    async def _loop(self) -> None:
        while True:
            self._inflight = []
            batch = [p for p in await self._next_batch() if not p.future.done()]
            groups: dict[tuple, list[_Pending]] = {}
            for pending in batch:
                groups.setdefault(pending.signature, []).append(pending)
            try:
                for group in groups.values():
                    await self._run_group(group)
            except Exception:  # a bug here must not leave callers waiting forever
                log.exception("%s: batcher failed; failing the batch", self.name)
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(RuntimeError("batcher failed"))

    async def _run_group(self, group: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        names = list(group[0].inputs)
        merged = (
            group[0].inputs
            if len(group) == 1
            else {n: np.concatenate([p.inputs[n] for p in group]) for n in names}
        )
        started = loop.time()
        try:
            outputs = await loop.run_in_executor(self._executor, self._run_batch, merged)
        except Exception as exc:
            if len(group) > 1:
                log.warning("batch of %d failed (%s); retrying one by one", len(group), exc)
                for pending in group:
                    await self._run_group([pending])
            else:
                self.runs += 1
                if not group[0].future.done():
                    group[0].future.set_exception(exc)
            return
        self.runs += 1
        finished = loop.time()
        record = BatchRecord(
            requests=len(group),
            rows=sum(p.rows for p in group),
            queue_wait_s=started - min(p.enqueued_at for p in group),
            run_s=finished - started,
        )
        log.debug(
            "%s: batch of %d requests, %d rows, queue wait %.2f ms, run %.2f ms",
            self.name, record.requests, record.rows,
            record.queue_wait_s * 1e3, record.run_s * 1e3,
        )
        if self._observer:
            self._observer(record)
        offset = 0
        for pending in group:
            part = {n: out[offset : offset + pending.rows] for n, out in outputs.items()}
            offset += pending.rows
            if not pending.future.done():  # the caller may have given up (deadline)
                pending.future.set_result(part)
