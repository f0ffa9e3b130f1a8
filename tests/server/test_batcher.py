"""DynamicBatcher against a deterministic fake runtime: merging, limits, isolation, no leaks."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from bnserve.server.batcher import BatchPolicy, DelayEstimate, DynamicBatcher
from bnserve.server.errors import ModelNotReadyError, QueueFullError


class FakeRuntime:
    """y = 2x + row-sum(x); fails a whole batch when any row holds NaN. Can be paused."""

    def __init__(self) -> None:
        self.batch_rows: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.threads: list[int] = []  # which threads ran the model

    def __call__(self, feeds):
        self.threads.append(threading.get_ident())
        self.entered.set()
        self.gate.wait(10)
        x = feeds["x"]
        self.batch_rows.append(x.shape[0])
        if np.isnan(x).any():
            raise ValueError("NaN in batch")
        return {"y": 2 * x + x.sum(axis=1, keepdims=True)}


@pytest.fixture
def executor():
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield pool


def make(runtime, executor, **kwargs):
    options = dict(max_batch_size=8, max_queue_delay_s=0.05, max_queue_size=100)
    options.update(kwargs)
    observer = options.pop("observer", None)
    batcher = DynamicBatcher(runtime, executor=executor, policy=BatchPolicy(**options),
                             observer=observer)
    batcher.start()
    return batcher


def expected(x):
    return 2 * x + x.sum(axis=1, keepdims=True)


async def test_concurrent_requests_are_merged_and_answered_row_by_row(executor):
    runtime = FakeRuntime()
    batcher = make(runtime, executor, max_batch_size=64)
    rows = [np.full((1, 3), i, np.float32) for i in range(20)]
    results = await asyncio.gather(*(batcher.submit({"x": r}) for r in rows))
    assert batcher.runs < 20 and sum(runtime.batch_rows) == 20
    for row, result in zip(rows, results, strict=True):
        np.testing.assert_array_equal(result["y"], expected(row))
    await batcher.stop()


async def test_no_run_exceeds_max_batch_size(executor):
    runtime = FakeRuntime()
    runtime.gate.clear()  # hold the first run so the rest pile up
    batcher = make(runtime, executor, max_batch_size=5)
    sizes = [1, 2, 3, 4, 1, 2, 5, 1]
    tasks = [asyncio.ensure_future(batcher.submit({"x": np.ones((n, 2), np.float32) * n}))
             for n in sizes]
    await asyncio.to_thread(runtime.entered.wait, 5)
    runtime.gate.set()
    results = await asyncio.gather(*tasks)
    assert max(runtime.batch_rows) <= 5
    assert sum(runtime.batch_rows) == sum(sizes)
    for n, result in zip(sizes, results, strict=True):
        assert result["y"].shape == (n, 2)
    await batcher.stop()


async def test_lone_request_waits_at_most_the_queue_delay(executor):
    runtime = FakeRuntime()
    batcher = make(runtime, executor, max_queue_delay_s=0.01)
    result = await asyncio.wait_for(batcher.submit({"x": np.ones((1, 2), np.float32)}), 5)
    np.testing.assert_array_equal(result["y"], [[4.0, 4.0]])
    await batcher.stop()


async def test_requests_with_different_row_shapes_are_not_merged(executor):
    runtime = FakeRuntime()
    batcher = make(runtime, executor)
    a, b = np.ones((1, 2), np.float32), np.ones((1, 3), np.float32)
    ra, rb = await asyncio.gather(batcher.submit({"x": a}), batcher.submit({"x": b}))
    np.testing.assert_array_equal(ra["y"], expected(a))
    np.testing.assert_array_equal(rb["y"], expected(b))
    assert sorted(runtime.batch_rows) == [1, 1]
    await batcher.stop()


async def test_a_failing_request_does_not_fail_its_batch_neighbours(executor):
    runtime = FakeRuntime()
    batcher = make(runtime, executor)
    good = [np.full((1, 2), i, np.float32) for i in range(3)]
    bad = np.array([[np.nan, 0]], np.float32)
    results = await asyncio.gather(
        *(batcher.submit({"x": g}) for g in good), batcher.submit({"x": bad}),
        return_exceptions=True,
    )
    for g, r in zip(good, results[:3], strict=True):
        np.testing.assert_array_equal(r["y"], expected(g))
    assert isinstance(results[3], ValueError)
    await batcher.stop()


async def test_full_queue_is_refused_and_nothing_leaks(executor):
    runtime = FakeRuntime()
    runtime.gate.clear()
    batcher = make(runtime, executor, max_batch_size=1, max_queue_size=3)
    first = asyncio.ensure_future(batcher.submit({"x": np.ones((1, 2), np.float32)}))
    await asyncio.to_thread(runtime.entered.wait, 5)  # first is running, queue empty
    waiting = [asyncio.ensure_future(batcher.submit({"x": np.ones((1, 2), np.float32)}))
               for _ in range(3)]
    await asyncio.sleep(0)  # let them enqueue (ordering only, not timing)
    with pytest.raises(QueueFullError, match="3 requests waiting"):
        await batcher.submit({"x": np.ones((1, 2), np.float32)})
    runtime.gate.set()
    await asyncio.gather(first, *waiting)
    assert batcher.queued == 0
    await batcher.stop()


async def test_cancelled_callers_are_skipped(executor):
    runtime = FakeRuntime()
    runtime.gate.clear()
    batcher = make(runtime, executor, max_batch_size=1)
    first = asyncio.ensure_future(batcher.submit({"x": np.ones((1, 2), np.float32)}))
    await asyncio.to_thread(runtime.entered.wait, 5)
    abandoned = asyncio.ensure_future(batcher.submit({"x": np.full((1, 2), 7, np.float32)}))
    await asyncio.sleep(0)
    abandoned.cancel()
    runtime.gate.set()
    await first
    last = await batcher.submit({"x": np.ones((1, 2), np.float32)})
    assert last["y"].shape == (1, 2)
    assert runtime.batch_rows == [1, 1]  # the cancelled request never ran
    assert batcher.queued == 0
    await batcher.stop()


async def test_stop_answers_queued_requests_unavailable(executor):
    runtime = FakeRuntime()
    runtime.gate.clear()
    batcher = make(runtime, executor, max_batch_size=1)
    first = asyncio.ensure_future(batcher.submit({"x": np.ones((1, 2), np.float32)}))
    await asyncio.to_thread(runtime.entered.wait, 5)
    queued = asyncio.ensure_future(batcher.submit({"x": np.ones((1, 2), np.float32)}))
    await asyncio.sleep(0)
    stopping = asyncio.ensure_future(batcher.stop())
    runtime.gate.set()
    await stopping
    with pytest.raises(ModelNotReadyError):
        await queued
    with pytest.raises(ModelNotReadyError):  # the one that was running is answered too
        await first
    with pytest.raises(ModelNotReadyError):
        await batcher.submit({"x": np.ones((1, 2), np.float32)})


async def test_the_runtime_runs_off_the_event_loop(executor):
    runtime = FakeRuntime()
    runtime.gate.clear()
    batcher = make(runtime, executor)
    pending = asyncio.ensure_future(batcher.submit({"x": np.ones((1, 2), np.float32)}))
    await asyncio.to_thread(runtime.entered.wait, 5)
    # The model is blocked inside its run. Had it run on the event loop, this coroutine could
    # only resume after the run returned (the gate times out), and the request would be done.
    await asyncio.sleep(0)
    assert not pending.done()
    runtime.gate.set()
    await pending
    assert runtime.threads and threading.get_ident() not in runtime.threads
    await batcher.stop()


async def test_queue_delay_counts_from_arrival_not_from_the_end_of_the_previous_run(executor):
    runtime = FakeRuntime()
    runtime.gate.clear()
    delay = 3.0
    batcher = make(runtime, executor, max_batch_size=2, max_queue_delay_s=delay)
    first = asyncio.ensure_future(batcher.submit({"x": np.ones((2, 2), np.float32)}))
    await asyncio.to_thread(runtime.entered.wait, 5)
    second = asyncio.ensure_future(batcher.submit({"x": np.ones((1, 2), np.float32)}))
    await asyncio.sleep(delay + 0.5)  # the second request's allowed wait passes during the run
    loop = asyncio.get_running_loop()
    released = loop.time()
    runtime.gate.set()
    await asyncio.gather(first, second)
    # Counted from arrival the wait is used up, so it runs at once; counted from the end of
    # the previous run it would wait the whole delay again.
    assert loop.time() - released < delay - 1.0
    await batcher.stop()


# The adaptive delay. The delays below are far longer than any test waits (30 s against a
# 10 s bound), so a batch that waited for them would fail the test: the assertions are about
# which requests ran together, never about how fast.
LONG = 30.0


def one_row(value: float = 1.0) -> dict[str, np.ndarray]:
    return {"x": np.full((1, 2), value, np.float32)}


async def test_a_lone_request_on_an_idle_model_runs_at_once(executor):
    runtime = FakeRuntime()
    batcher = make(runtime, executor, max_queue_delay_s=LONG)
    for value in range(3):  # each one alone: never waits for company that is not coming
        result = await asyncio.wait_for(batcher.submit(one_row(value)), 10)
        np.testing.assert_array_equal(result["y"], expected(one_row(value)["x"]))
    assert runtime.batch_rows == [1, 1, 1]
    await batcher.stop()


async def test_requests_queued_behind_a_run_form_the_next_batch_when_it_ends(executor):
    runtime = FakeRuntime()
    runtime.gate.clear()
    batcher = make(runtime, executor, max_queue_delay_s=LONG)
    first = asyncio.ensure_future(batcher.submit(one_row()))
    await asyncio.to_thread(runtime.entered.wait, 5)  # it went at once, alone
    queued = [asyncio.ensure_future(batcher.submit(one_row(i))) for i in range(5)]
    await asyncio.sleep(0)
    runtime.gate.set()  # the run in progress was their wait
    results = await asyncio.wait_for(asyncio.gather(first, *queued), 10)
    assert runtime.batch_rows == [1, 5]
    for i, result in enumerate(results[1:]):
        np.testing.assert_array_equal(result["y"], expected(one_row(i)["x"]))
    await batcher.stop()


async def test_a_full_batch_goes_without_waiting_and_the_rest_opens_the_next(executor):
    runtime = FakeRuntime()
    runtime.gate.clear()
    batcher = make(runtime, executor, max_batch_size=4, max_queue_delay_s=LONG)
    batcher.estimate.ran(1, LONG)  # a costly run: the estimate alone would wait for company
    first = asyncio.ensure_future(batcher.submit(one_row()))
    await asyncio.to_thread(runtime.entered.wait, 5)
    sizes = [1, 2, 1, 3]
    queued = [asyncio.ensure_future(batcher.submit({"x": np.full((n, 2), n, np.float32)}))
              for n in sizes]
    await asyncio.sleep(0)
    runtime.gate.set()
    results = await asyncio.wait_for(asyncio.gather(first, *queued), 10)
    assert runtime.batch_rows == [1, 4, 3]  # 1+2+1 full; the 3 rows go alone, lone and idle
    for n, result in zip(sizes, results[1:], strict=True):
        np.testing.assert_array_equal(result["y"], expected(np.full((n, 2), n, np.float32)))
    await batcher.stop()


async def test_a_preferred_size_goes_without_waiting(executor):
    runtime = FakeRuntime()
    runtime.gate.clear()
    batcher = make(runtime, executor, max_queue_delay_s=LONG, preferred_batch_sizes=(3, 6))
    batcher.estimate.ran(1, LONG)
    first = asyncio.ensure_future(batcher.submit(one_row()))
    await asyncio.to_thread(runtime.entered.wait, 5)
    queued = [asyncio.ensure_future(batcher.submit(one_row(i))) for i in range(3)]
    await asyncio.sleep(0)
    runtime.gate.set()
    await asyncio.wait_for(asyncio.gather(first, *queued), 10)
    assert runtime.batch_rows == [1, 3]
    await batcher.stop()


async def test_a_batch_waits_for_company_when_runs_cost_more_than_arrivals_take(executor):
    runtime = FakeRuntime()
    runtime.gate.clear()
    batcher = make(runtime, executor, max_batch_size=3, max_queue_delay_s=LONG)
    batcher.estimate.ran(1, LONG)  # every run costs more than the gap to the next request
    first = asyncio.ensure_future(batcher.submit(one_row()))
    await asyncio.to_thread(runtime.entered.wait, 5)
    queued = [asyncio.ensure_future(batcher.submit(one_row(i))) for i in range(2)]
    await asyncio.sleep(0)
    runtime.gate.set()
    await asyncio.wait_for(first, 10)
    late = await asyncio.wait_for(batcher.submit(one_row(7)), 10)  # joins the waiting two
    await asyncio.wait_for(asyncio.gather(*queued), 10)
    assert runtime.batch_rows == [1, 3]
    np.testing.assert_array_equal(late["y"], expected(one_row(7)["x"]))
    await batcher.stop()


async def test_no_queue_delay_means_no_wait_whatever_the_estimate(executor):
    runtime = FakeRuntime()
    runtime.gate.clear()
    batcher = make(runtime, executor, max_batch_size=3, max_queue_delay_s=0.0)
    batcher.estimate.ran(1, LONG)
    first = asyncio.ensure_future(batcher.submit(one_row()))
    await asyncio.to_thread(runtime.entered.wait, 5)
    queued = [asyncio.ensure_future(batcher.submit(one_row(i))) for i in range(2)]
    await asyncio.sleep(0)
    runtime.gate.set()
    await asyncio.wait_for(asyncio.gather(first, *queued), 10)
    await asyncio.wait_for(batcher.submit(one_row(7)), 10)
    assert runtime.batch_rows == [1, 2, 1]
    await batcher.stop()


async def test_a_fixed_delay_keeps_a_lone_request_waiting_for_company(executor):
    runtime = FakeRuntime()
    batcher = make(runtime, executor, max_batch_size=2, max_queue_delay_s=LONG,
                   adaptive_delay=False)  # Triton's meaning, for a configured dynamic_batching
    first = asyncio.ensure_future(batcher.submit(one_row(1)))
    await asyncio.sleep(0.05)  # ordering only: the first is queued and waiting
    assert not first.done()
    second = await asyncio.wait_for(batcher.submit(one_row(2)), 10)
    np.testing.assert_array_equal((await first)["y"], expected(one_row(1)["x"]))
    np.testing.assert_array_equal(second["y"], expected(one_row(2)["x"]))
    assert runtime.batch_rows == [2]
    await batcher.stop()


def test_the_estimate_waits_the_fixed_cost_when_the_next_request_comes_sooner():
    estimate = DelayEstimate(longest_gap_s=0.01)
    assert estimate.patience_s() == 0.0  # nothing known: no wait
    for i in range(50):
        estimate.arrived(i * 0.0001)  # a request every 0.1 ms
    for i in range(50):
        rows = 1 if i % 2 else 9
        estimate.ran(rows, 0.002 + 0.0001 * rows)  # 2 ms fixed, 0.1 ms a row
    assert estimate.gap_s == pytest.approx(0.0001)
    assert estimate.fixed_cost_s == pytest.approx(0.002)
    assert estimate.patience_s() == pytest.approx(0.002)


def test_the_estimate_does_not_wait_when_requests_are_rare_or_runs_grow_with_rows():
    rare = DelayEstimate(longest_gap_s=0.01)
    for i in range(20):
        rare.arrived(i * 5.0)  # an idle gap counts as the longest wait, 10 ms
        rare.ran(1, 0.002)
    assert rare.gap_s == pytest.approx(0.01)
    assert rare.patience_s() == 0.0
    per_row = DelayEstimate(longest_gap_s=0.01)
    for i in range(50):
        per_row.arrived(i * 0.0001)
        per_row.ran(1 + i % 8, 0.001 * (1 + i % 8))  # all of the run grows with its rows
    assert per_row.fixed_cost_s == pytest.approx(0.0, abs=1e-9)
    assert per_row.patience_s() == 0.0


def test_runs_of_one_size_count_as_fixed_cost_until_sizes_vary():
    estimate = DelayEstimate(longest_gap_s=0.01)
    for _ in range(10):
        estimate.ran(32, 0.004)
    assert estimate.fixed_cost_s == pytest.approx(0.004)



async def test_a_run_that_hangs_after_many_quick_ones_still_leaves_the_loop_free(executor):
    # However short the runs have been, none goes on the event loop: the one that hangs
    # would stop health checks and the shutdown with it.
    runtime = FakeRuntime()
    batcher = make(runtime, executor)
    for _ in range(20):
        await batcher.submit({"x": np.ones((1, 2), np.float32)})
    runtime.gate.clear()
    runtime.entered.clear()
    pending = asyncio.ensure_future(batcher.submit({"x": np.ones((1, 2), np.float32)}))
    await asyncio.to_thread(runtime.entered.wait, 5)
    await asyncio.sleep(0)  # the loop runs while the model is stuck in its run
    assert not pending.done()
    runtime.gate.set()
    await pending
    assert threading.get_ident() not in runtime.threads
    await batcher.stop()
