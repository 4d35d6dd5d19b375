"""The dynamic batcher, driven deterministically: a fake runner whose run blocks on an
event stands in for ONNX Runtime, so queue-full, expiry while queued, batch formation,
size limits, earliest-deadline-first, max queue delay and failure isolation are shown
without depending on machine speed. (End-to-end versions of each run against the real
server in tests/service/test_errors.py and test_lifecycle.py.)"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from services.batching.batcher import BatchFailed
from services.batching.threads import InferenceThreads
from services.errors import DeadlineExpired, InvalidInput, QueueFull
from tests.support.batching import FAIL, GatedRunner, make_batcher, row, started


@pytest.fixture
async def threads() -> AsyncIterator[InferenceThreads]:
    pool = InferenceThreads(2)
    yield pool
    pool.shutdown()


async def test_arrivals_during_a_run_form_one_batch(threads: InferenceThreads) -> None:
    runner = GatedRunner()
    batcher = make_batcher(runner, threads)
    first = asyncio.create_task(batcher.infer(row(0), 1, None))
    await started(runner)
    rest = [asyncio.create_task(batcher.infer(row(i), 1, None)) for i in (1, 2, 3, 4, 5)]
    await asyncio.sleep(0)  # let them queue
    assert batcher.queue_depth == 5
    runner.gate.set()
    results = await asyncio.gather(first, *rest)
    assert runner.batches == [[0.0], [1.0, 2.0, 3.0, 4.0, 5.0]]
    # Each request gets its own rows back.
    assert [float(r["y"][0, 0]) for r in results] == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
    assert batcher.stats.compute.count == 2
    assert sorted(batcher.stats.by_batch_size) == [1, 5]


async def test_batches_respect_max_batch_size_and_rows_are_bounded(
    threads: InferenceThreads,
) -> None:
    runner = GatedRunner()
    batcher = make_batcher(runner, threads, max_batch=4)
    with pytest.raises(InvalidInput, match="at most 4"):
        await batcher.infer(row(9, rows=5), 5, None)
    first = asyncio.create_task(batcher.infer(row(0), 1, None))
    await started(runner)
    rest = [asyncio.create_task(batcher.infer(row(i), 1, None)) for i in range(1, 7)]
    three = asyncio.create_task(batcher.infer(row(7, rows=3), 3, None))
    await asyncio.sleep(0)
    runner.gate.set()
    await asyncio.gather(first, *rest, three)
    assert [len(b) for b in runner.batches] == [1, 4, 2, 3]  # 2 + 3 rows would exceed 4


async def test_queue_full_is_resource_exhausted(threads: InferenceThreads) -> None:
    runner = GatedRunner()
    batcher = make_batcher(runner, threads, max_queue=2)
    first = asyncio.create_task(batcher.infer(row(0), 1, None))
    await started(runner)
    queued = [asyncio.create_task(batcher.infer(row(i), 1, None)) for i in (1, 2)]
    await asyncio.sleep(0)
    with pytest.raises(QueueFull, match="queue is full"):
        await batcher.infer(row(3), 1, None)
    runner.gate.set()
    await asyncio.gather(first, *queued)


async def test_expired_work_is_dropped_before_it_runs(threads: InferenceThreads) -> None:
    runner = GatedRunner()
    batcher = make_batcher(runner, threads)
    first = asyncio.create_task(batcher.infer(row(0), 1, None))
    await started(runner)
    deadline = time.monotonic() + 0.005
    doomed = asyncio.create_task(batcher.infer(row(1), 1, deadline))
    kept = asyncio.create_task(batcher.infer(row(2), 1, None))
    while time.monotonic() <= deadline:  # the deadline passes while the run is held
        await asyncio.sleep(0)
    runner.gate.set()
    with pytest.raises(DeadlineExpired, match="not run"):
        await doomed
    await asyncio.gather(first, kept)
    assert runner.batches == [[0.0], [2.0]]  # the expired row never reached the runner


async def test_earliest_deadline_first(threads: InferenceThreads) -> None:
    runner = GatedRunner()
    batcher = make_batcher(runner, threads, max_batch=1)
    first = asyncio.create_task(batcher.infer(row(0), 1, None))
    await started(runner)
    now = time.monotonic()
    tasks = [
        asyncio.create_task(batcher.infer(row(1), 1, now + 100)),  # late deadline
        asyncio.create_task(batcher.infer(row(2), 1, None)),  # no deadline: last
        asyncio.create_task(batcher.infer(row(3), 1, now + 10)),  # earliest
        asyncio.create_task(batcher.infer(row(4), 1, now + 50)),
    ]
    await asyncio.sleep(0)
    runner.gate.set()
    await asyncio.gather(first, *tasks)
    assert runner.batches == [[0.0], [3.0], [4.0], [1.0], [2.0]]


async def test_max_queue_delay_waits_for_company_only_under_load(
    threads: InferenceThreads,
) -> None:
    runner = GatedRunner()
    batcher = make_batcher(runner, threads, delay_s=0.05, slots=2)
    first = asyncio.create_task(batcher.infer(row(0), 1, None))
    await started(runner)  # slot 1 busy, slot 2 free
    # Arriving together while a batch runs: they wait (up to the delay) and go as one.
    company = [asyncio.create_task(batcher.infer(row(i), 1, None)) for i in (1, 2, 3)]
    await asyncio.sleep(0)
    assert batcher.queue_depth == 3  # held back although a slot is free
    await asyncio.gather(*company)  # the delay timer releases them
    assert runner.batches[1] == [1.0, 2.0, 3.0]
    runner.gate.set()
    await first
    # Idle (nothing running): a lone request starts at once, no delay.
    lone = asyncio.create_task(batcher.infer(row(4), 1, None))
    await started(runner, 2)
    await lone
    assert runner.batches[-1] == [4.0]


async def test_a_failed_batch_fails_only_its_own_requests(threads: InferenceThreads) -> None:
    runner = GatedRunner()
    batcher = make_batcher(runner, threads, max_batch=1)
    first = asyncio.create_task(batcher.infer(row(0), 1, None))
    await started(runner)
    bad = asyncio.create_task(batcher.infer(row(FAIL), 1, None))
    good = asyncio.create_task(batcher.infer(row(5), 1, None))
    await asyncio.sleep(0)
    runner.gate.set()
    with pytest.raises(BatchFailed, match="RuntimeError"):
        await bad
    assert float((await good)["y"][0, 0]) == 10.0
    await first


async def test_closed_batcher_refuses_new_work_and_finishes_queued(
    threads: InferenceThreads,
) -> None:
    runner = GatedRunner()
    batcher = make_batcher(runner, threads)
    first = asyncio.create_task(batcher.infer(row(0), 1, None))
    await started(runner)
    queued = asyncio.create_task(batcher.infer(row(1), 1, None))
    await asyncio.sleep(0)
    batcher.close()
    with pytest.raises(Exception, match="draining"):
        await batcher.infer(row(2), 1, None)
    runner.gate.set()
    await asyncio.gather(first, queued)
    assert not batcher.busy
