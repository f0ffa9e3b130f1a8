"""Dynamic batching: concurrent requests for one model become one runtime call.

    enqueue() --> queue --> collect (up to max_batch_size rows) --> group by row signature
              --> run_batch in the executor (up to `instances` runs at once)
              --> split the outputs row-wise back to each caller

When an instance is free the collector takes the oldest request and everything already
queued behind it, then decides whether to wait for more company (the adaptive delay):

    take oldest + all queued
            |
    full, or at the largest preferred size, or batching off? --yes--> run now
            | no
    more queued?  --yes--> take it, ask again
            | no
    lone request, or at a preferred size? --yes--> run now (the model is idle: no delay)
            | no
    next arrival expected sooner than a run's fixed cost?  (gap < fixed)
            | yes                                        | no
    wait for it, at most `fixed`, and never past     run now
    oldest arrival + max_queue_delay; then ask again

    while every instance is busy: requests pile up, and the run in progress is the wait
    (continuous batching: the next batch is collected the moment an instance frees)

The rule, and why: a request that joins a batch saves one run's fixed cost (the part of a
run that does not grow with its rows: the executor hand-off, onnxruntime's per-call work,
the loop's wake-up); it costs the batch the time until it arrives. So the batch waits only
when the next request is expected (the EWMA of inter-arrival gaps) sooner than that fixed
cost (from an EWMA least-squares fit of run time against rows, ``DelayEstimate``), and at
most that fixed cost, since waiting longer than what merging saves is a loss even if the
request comes. ``max_queue_delay_s`` bounds every wait, counted from the oldest request's
arrival (Triton's meaning): it is an upper bound, not a wait. A model whose config sets
``dynamic_batching`` keeps Triton's fixed delay (``adaptive_delay=False``): a batch waits
for company until the delay passes, the largest preferred size or max_batch_size is
reached, or it is at a preferred size with nothing else waiting.

A batch that fails is retried one request at a time, so one bad request cannot fail its
neighbours. A request still queued at its queue timeout (``queue_timeout_s``, or its own
``timeout_s``) is answered QueueTimeoutError then, and one whose caller gave up (cancel,
deadline) leaves the queue at once: neither holds a place. With ``batching=False`` every
request runs alone. ``drain()`` stops taking requests and returns once every taken one is
answered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

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


class _Pending:
    """One queued request (a plain class with slots: one is made per request)."""

    __slots__ = ("inputs", "rows", "future", "enqueued_at", "signature", "waiting", "expiry")

    def __init__(self, inputs: Tensors, rows: int, future: asyncio.Future[Tensors],
                 enqueued_at: float) -> None:
        self.inputs = inputs
        self.rows = rows
        self.future = future
        self.enqueued_at = enqueued_at
        # Requests are merged only when every input agrees on dtype and per-row shape.
        # Sorted by name: requests may list their inputs in any order.
        items = inputs.items() if len(inputs) == 1 else sorted(inputs.items(), key=_name)
        self.signature = tuple((name, array.dtype, array.shape[1:]) for name, array in items)
        self.waiting = True  # in the queue, not yet taken into a batch
        self.expiry: asyncio.TimerHandle | None = None  # answers it at its queue timeout


def _name(item: tuple[str, np.ndarray]) -> str:
    return item[0]


class DelayEstimate:
    """What the adaptive delay knows: EWMAs of the gap between arrivals and of a run's
    time against its rows. Pure: every time is passed in (tests drive it with their own)."""

    def __init__(self, *, longest_gap_s: float, weight: float = 0.1) -> None:
        self._longest_gap = longest_gap_s  # a longer gap only says "too long to wait for"
        self._weight = weight  # of the newest sample
        self._last_arrival: float | None = None
        self.gap_s: float | None = None  # expected time to the next arrival
        self._runs: tuple[float, float, float, float] | None = None  # E[r], E[t], E[r²], E[rt]

    def arrived(self, now: float) -> None:
        if self._last_arrival is not None:
            gap = min(max(now - self._last_arrival, 0.0), self._longest_gap)
            self.gap_s = gap if self.gap_s is None else self._mix(self.gap_s, gap)
        self._last_arrival = now

    def ran(self, rows: int, seconds: float) -> None:
        sample = (rows, seconds, rows * rows, rows * seconds)
        self._runs = sample if self._runs is None else tuple(  # type: ignore[assignment]
            self._mix(old, new) for old, new in zip(self._runs, sample, strict=True))

    @property
    def fixed_cost_s(self) -> float | None:
        """The run time that does not grow with rows: the intercept of the fit, within
        [0, mean run time]. While the runs seen hardly differ in rows the two parts cannot
        be told apart, and the whole run counts as fixed: the waits that makes are bounded
        by the delay, and the merged batches they form vary the rows for the fit."""
        if self._runs is None:
            return None
        rows, seconds, rows2, rows_seconds = self._runs
        spread = rows2 - rows * rows
        if spread <= 0.01 * rows * rows:
            return seconds
        slope = min(max((rows_seconds - rows * seconds) / spread, 0.0), seconds / rows)
        return seconds - slope * rows

    def patience_s(self) -> float:
        """How long a batch waits for one more request: the fixed cost a request saves by
        joining, when it is expected sooner than that; else 0 (and 0 until both are known)."""
        fixed = self.fixed_cost_s
        if self.gap_s is None or fixed is None or self.gap_s >= fixed:
            return 0.0
        return fixed

    def _mix(self, old: float, new: float) -> float:
        return old + self._weight * (new - old)


class Ticket:
    """A reserved place in a batcher's queue (``DynamicBatcher.reserve``); used once."""

    __slots__ = ("open",)

    def __init__(self) -> None:
        self.open = True


@dataclass(frozen=True)
class BatchPolicy:
    max_batch_size: int  # rows per run
    max_queue_delay_s: float
    max_queue_size: int  # requests waiting; more are refused
    batching: bool = True  # False: every request runs alone
    preferred_batch_sizes: tuple[int, ...] = ()
    queue_timeout_s: float | None = None  # the model's default_timeout_microseconds
    allow_timeout_override: bool = False  # a request's timeout may shorten the default
    instances: int = 1  # runs at once
    # True: max_queue_delay_s bounds an adaptive wait (module docstring); False: Triton's
    # fixed wait, for a model whose config sets dynamic_batching.
    adaptive_delay: bool = True


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
        self._unanswered = 0  # taken and not yet answered (reserved, queued or running)
        self._waiting = 0  # reserved or queued, not cancelled, not yet in a batch
        self._answered_all = asyncio.Event()
        self.runs = 0  # runtime calls made; tests and metrics read it
        self.estimate = DelayEstimate(longest_gap_s=policy.max_queue_delay_s)

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
        """Requests waiting for a run: the queue-depth gauge and the queue-full limit."""
        return self._waiting

    @property
    def in_flight(self) -> int:
        """Requests taken and not yet answered: waiting, in a batch or running."""
        return self._unanswered

    def reserve(self) -> Ticket:
        """Hold a place for a request that is still being decoded; drain() waits for it."""
        self._admit()
        self._unanswered += 1
        self._waiting += 1
        return Ticket()

    def release(self, ticket: Ticket) -> None:
        """Give back a reserved place that will not be used (the request was refused)."""
        if ticket.open:
            ticket.open = False
            self._waiting -= 1
            self._answered(None)

    def _admit(self) -> None:
        if not self._accepting:
            raise ModelNotReadyError(f"model {self.name!r} is not accepting requests")
        if self._waiting >= self.policy.max_queue_size:
            raise QueueFullError(
                f"model {self.name!r} has {self.policy.max_queue_size} requests waiting; "
                "retry later"
            )

    def enqueue(self, inputs: Tensors, *, ticket: Ticket | None = None,
                timeout_s: float | None = None) -> asyncio.Future[Tensors]:
        """Queue one request (all inputs share the leading batch dimension); its future
        gets the request's rows of every output. Synchronous: a caller that looked the
        model up is queued before anything else can run on the loop. With a ``ticket``
        (see reserve) it takes the reserved place, even while draining. A request that
        is cancelled or reaches its queue timeout leaves the queue at once."""
        if ticket is None:
            self._admit()
            self._unanswered += 1
            self._waiting += 1
        elif ticket.open:
            ticket.open = False
        else:
            raise RuntimeError("ticket used twice")
        loop = asyncio.get_running_loop()
        first = next(iter(inputs.values()))
        rows = first.shape[0] if first.ndim else 1
        pending = _Pending(inputs, rows, loop.create_future(), loop.time())
        self.estimate.arrived(pending.enqueued_at)
        timeout = self._queue_timeout(timeout_s)
        if timeout is not None:
            pending.expiry = loop.call_at(pending.enqueued_at + timeout, self._expire,
                                          pending, timeout)
        pending.future.add_done_callback(lambda _f, p=pending: self._settled(p))
        self._queue.put_nowait(pending)
        return pending.future

    def _queue_timeout(self, requested: float | None) -> float | None:
        """Triton's rule: the model's default, which a request may only shorten when the
        config allows it; without a default, the request's own."""
        default = self.policy.queue_timeout_s
        if requested is None or default is None:
            return default if requested is None else requested
        return min(requested, default) if self.policy.allow_timeout_override else default

    def _expire(self, pending: _Pending, timeout: float) -> None:
        if pending.waiting and not pending.future.done():
            pending.future.set_exception(QueueTimeoutError(
                f"request waited over its queue timeout of {timeout * 1e3:g} ms for model "
                f"{self.name!r}"))

    def _settled(self, pending: _Pending) -> None:
        if pending.waiting:  # answered while queued: cancelled, expired or stopped
            self._leave_queue(pending)
            pending.inputs = {}  # a dead entry stays in the queue; its tensors need not
        self._answered(None)

    def _leave_queue(self, pending: _Pending) -> None:
        pending.waiting = False
        self._waiting -= 1
        if pending.expiry is not None:
            pending.expiry.cancel()

    async def submit(self, inputs: Tensors) -> Tensors:
        return await self.enqueue(inputs)

    def _answered(self, _future: asyncio.Future | None) -> None:
        self._unanswered -= 1
        if self._unanswered == 0:
            self._answered_all.set()

    async def _take(self) -> _Pending:
        """The next live request from the queue (dead entries are skipped)."""
        while True:
            pending = await self._queue.get()
            if pending.waiting:
                self._leave_queue(pending)
                return pending

    def _take_nowait(self) -> _Pending | None:
        while not self._queue.empty():
            pending = self._queue.get_nowait()
            if pending.waiting:
                self._leave_queue(pending)
                return pending
        return None

    def _patience(self, requests: int, rows: int, remaining: float) -> float:
        """How long a collected batch of ``requests`` waits for another now that nothing
        more is queued; 0: it goes now (the module docstring draws the rule)."""
        preferred = self.policy.preferred_batch_sizes
        adaptive = self.policy.adaptive_delay
        if remaining <= 0 or (rows in preferred and (adaptive or self._waiting == 0)):
            return 0.0
        if not adaptive:
            return remaining
        if requests == 1:  # lone, and an instance is free: the model is idle
            return 0.0
        return min(remaining, self.estimate.patience_s())

    async def _next_batch(self) -> list[_Pending]:
        loop = asyncio.get_running_loop()
        policy = self.policy
        first = self._carry or await self._take()
        self._carry = None
        # Collected in self._collecting, so stop() can answer them whenever it cancels.
        batch, rows = self._collecting, first.rows
        batch.append(first)
        deadline = first.enqueued_at + policy.max_queue_delay_s
        largest = policy.preferred_batch_sizes[-1:]
        while policy.batching and rows < policy.max_batch_size and rows not in largest:
            pending = self._take_nowait()
            if pending is None:
                wait = self._patience(len(batch), rows, deadline - loop.time())
                if wait <= 0:
                    break
                try:
                    pending = await asyncio.wait_for(self._take(), wait)
                except TimeoutError:
                    break
            if rows + pending.rows > policy.max_batch_size:
                self._carry = pending  # opens the next batch
                break
            batch.append(pending)
            rows += pending.rows
        return batch

    @staticmethod
    def _live(batch: Sequence[_Pending]) -> list[_Pending]:
        """The requests of ``batch`` whose callers still wait (a deadline or a cancel may
        have answered one between its collection and its run)."""
        return [pending for pending in batch if not pending.future.done()]

    async def _loop(self) -> None:
        while True:
            await self._instances.acquire()
            self._collecting = []
            try:
                batch = self._live(await self._next_batch())
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
        # Always off the event loop, however short the runs so far: a run that hangs (or
        # one input that takes long) must never stop health checks, other models and the
        # shutdown (bench/README.md: "Tried and not kept").
        run = loop.run_in_executor(self._executor, self._run_batch, merged)
        if len(group) == 1:
            # Nothing retries a lone request: let the run's thread hold its inputs alone, so
            # that a large one is freed there, not on the event loop (freeing 250k strings
            # takes tens of ms).
            group[0].inputs = {}
        del merged
        try:
            outputs = await run
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
        self.estimate.ran(record.rows, record.run_s)
        log.debug(
            "%s: batch of %d requests, %d rows, queue wait %.2f ms, run %.2f ms",
            self.name, record.requests, record.rows,
            record.queue_wait_s * 1e3, record.run_s * 1e3,
        )
        if self._observer:
            self._observer(record)
