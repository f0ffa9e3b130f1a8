"""Dynamic batching: concurrent requests for one model become one runtime call.

    enqueue() --> queue --> collect (up to max_batch_size rows, at most max_queue_delay,
                            sooner at a preferred batch size) --> group by row signature
              --> run_batch in the executor (up to `instances` runs at once)
              --> split the outputs row-wise back to each caller

Requests wait for each other only as long as the delay allows (counted from the oldest
one's arrival, Triton's meaning); a batch that reaches a preferred size with nothing more
queued goes at once. While every instance is busy, new requests pile up in the queue and
form the next batch. A batch that fails is retried one request at a time, so one bad
request cannot fail its neighbours. A request that waited longer than ``queue_timeout_s``
is answered QueueTimeoutError instead of run. With ``batching=False`` every request runs
alone. ``drain()`` stops taking requests and returns once every taken one is answered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from bnserve.server.errors import ModelNotReadyError, QueueFullError, QueueTimeoutError

log = logging.getLogger(__name__)

Tensors = dict[str, np.ndarray]
RunBatch = Callable[[Tensors], Tensors]


@dataclass(frozen=True)
class BatchRecord:
    """What happened to one runtime call; handed to the observer."""

    requests: int
    rows: int
    queue_waits_s: tuple[float, ...]  # per request, arrival to the start of the run
    input_s: float  # merging the requests' inputs
    run_s: float  # the runtime call
    output_s: float  # splitting the outputs back

    @property
    def queue_wait_s(self) -> float:
        """The longest wait of its requests."""
        return max(self.queue_waits_s, default=0.0)


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


@dataclass(frozen=True)
class BatchPolicy:
    max_batch_size: int  # rows per run
    max_queue_delay_s: float
    max_queue_size: int  # requests waiting; more are refused
    batching: bool = True  # False: every request runs alone
    preferred_batch_sizes: tuple[int, ...] = ()
    queue_timeout_s: float | None = None
    instances: int = 1  # runs at once


class DynamicBatcher:
    def __init__(
        self,
        run_batch: RunBatch,
        *,
        executor: Executor,
        policy: BatchPolicy,
        name: str = "model",
        observer: Callable[[BatchRecord], None] | None = None,
    ) -> None:
        self._run_batch = run_batch
        self._executor = executor
        self.policy = policy
        self.name = name
        self._observer = observer
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._carry: _Pending | None = None
        self._collecting: list[_Pending] = []  # the batch being collected
        self._runs: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._accepting = False
        self._unanswered = 0  # taken and not yet answered (queued or running)
        self._answered_all = asyncio.Event()
        self.runs = 0  # runtime calls made; tests and metrics read it

    @property
    def max_batch_size(self) -> int:
        return self.policy.max_batch_size

    def start(self) -> None:
        if self._task is None:
            self._accepting = True
            self._instances = asyncio.Semaphore(self.policy.instances)
            self._task = asyncio.get_running_loop().create_task(
                self._loop(), name=f"batcher:{self.name}"
            )

    async def drain(self) -> None:
        """Take no new requests; return when every taken one has its answer; then stop."""
        self._accepting = False
        if self._unanswered:
            self._answered_all.clear()
            await self._answered_all.wait()
        await self.stop()

    async def stop(self) -> None:
        """Stop now: requests still queued or running are answered UNAVAILABLE."""
        self._accepting = False
        tasks = [t for t in (self._task, *self._runs) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._task = None
        leftovers = self._collecting + ([self._carry] if self._carry else [])
        self._carry, self._collecting = None, []
        while not self._queue.empty():
            leftovers.append(self._queue.get_nowait())
        for pending in leftovers:
            if not pending.future.done():
                pending.future.set_exception(ModelNotReadyError(f"model {self.name!r} is stopping"))

    @property
    def queued(self) -> int:
        return self._queue.qsize() + (1 if self._carry else 0)

    def enqueue(self, inputs: Tensors) -> asyncio.Future[Tensors]:
        """Queue one request (all inputs share the leading batch dimension); its future
        gets the request's rows of every output. Synchronous: a caller that looked the
        model up is queued before anything else can run on the loop."""
        if not self._accepting:
            raise ModelNotReadyError(f"model {self.name!r} is not accepting requests")
        if self.queued >= self.policy.max_queue_size:
            raise QueueFullError(
                f"model {self.name!r} has {self.policy.max_queue_size} requests waiting; "
                "retry later"
            )
        loop = asyncio.get_running_loop()
        first = next(iter(inputs.values()))
        rows = first.shape[0] if first.ndim else 1
        pending = _Pending(inputs, rows, loop.create_future(), loop.time())
        self._unanswered += 1
        pending.future.add_done_callback(self._answered)
        self._queue.put_nowait(pending)
        return pending.future

    async def submit(self, inputs: Tensors) -> Tensors:
        return await self.enqueue(inputs)

    def _answered(self, _future: asyncio.Future) -> None:
        self._unanswered -= 1
        if self._unanswered == 0:
            self._answered_all.set()

    def _ready_to_go(self, rows: int) -> bool:
        """A collected batch of ``rows`` goes now rather than waiting for more."""
        preferred = self.policy.preferred_batch_sizes
        if rows >= self.policy.max_batch_size or not self.policy.batching:
            return True
        if rows in preferred and (rows == preferred[-1] or self._queue.empty()):
            return True
        return False

    async def _next_batch(self) -> list[_Pending]:
        loop = asyncio.get_running_loop()
        first = self._carry or await self._queue.get()
        self._carry = None
        # Collected in self._collecting, so stop() can answer them whenever it cancels.
        batch, rows = self._collecting, first.rows
        batch.append(first)
        deadline = first.enqueued_at + self.policy.max_queue_delay_s
        while not self._ready_to_go(rows):
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
            if rows + pending.rows > self.policy.max_batch_size:
                self._carry = pending  # opens the next batch
                break
            batch.append(pending)
            rows += pending.rows
        return batch

    def _expired(self, batch: Sequence[_Pending]) -> list[_Pending]:
        """The live requests of ``batch``; those past the queue timeout are answered so."""
        timeout = self.policy.queue_timeout_s
        now = asyncio.get_running_loop().time()
        live = []
        for pending in batch:
            if pending.future.done():  # the caller gave up (deadline, cancel)
                continue
            if timeout is not None and now - pending.enqueued_at > timeout:
                pending.future.set_exception(QueueTimeoutError(
                    f"request waited over the queue timeout of {timeout * 1e3:g} ms of model "
                    f"{self.name!r}; retry later"))
                continue
            live.append(pending)
        return live

    async def _loop(self) -> None:
        while True:
            await self._instances.acquire()
            self._collecting = []
            try:
                batch = self._expired(await self._next_batch())
            except BaseException:
                self._instances.release()
                raise
            self._collecting = []
            if self.policy.instances == 1:
                await self._run(batch)  # one instance: no task to create per batch
                continue
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._runs.add(task)
            task.add_done_callback(self._runs.discard)

    async def _run(self, batch: list[_Pending]) -> None:
        try:
            groups: dict[tuple, list[_Pending]] = {}
            for pending in batch:
                groups.setdefault(pending.signature, []).append(pending)
            for group in groups.values():
                await self._run_group(group)
        except asyncio.CancelledError:  # stop(): answer what this run held
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(
                        ModelNotReadyError(f"model {self.name!r} is stopping"))
            raise
        except Exception:  # a bug here must not leave callers waiting forever
            log.exception("%s: batcher failed; failing the batch", self.name)
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(RuntimeError("batcher failed"))
        finally:
            self._instances.release()

    async def _run_group(self, group: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        names = list(group[0].inputs)
        merged = (
            group[0].inputs
            if len(group) == 1
            else {n: np.concatenate([p.inputs[n] for p in group]) for n in names}
        )
        merged_at = loop.time()
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
        offset = 0
        for pending in group:
            part = {n: out[offset : offset + pending.rows] for n, out in outputs.items()}
            offset += pending.rows
            if not pending.future.done():  # the caller may have given up (deadline)
                pending.future.set_result(part)
        record = BatchRecord(
            requests=len(group),
            rows=sum(p.rows for p in group),
            queue_waits_s=tuple(started - p.enqueued_at for p in group),
            input_s=merged_at - started,
            run_s=finished - merged_at,
            output_s=loop.time() - finished,
        )
        log.debug(
            "%s: batch of %d requests, %d rows, queue wait %.2f ms, run %.2f ms",
            self.name, record.requests, record.rows,
            record.queue_wait_s * 1e3, record.run_s * 1e3,
        )
        if self._observer:
            self._observer(record)
