"""Closed-loop batching: the AIMD controller on its own, and its knobs in the batcher (with
a gated fake runner). A real server that backs off under a target it cannot meet:
tests/service/test_adaptive_server.py."""

from __future__ import annotations

import asyncio

from services.batching.adaptive import WINDOW, AdaptiveBatching
from services.batching.threads import InferenceThreads
from tests.support.batching import GatedRunner, make_batcher, row, started


def test_over_target_backs_off_multiplicatively_under_target_probes_additively() -> None:
    c = AdaptiveBatching.start(target_s=0.010, max_batch_size=64, delay_s=0.004)
    assert (c.batch_cap, c.delay_s) == (64, 0.004)
    c.decide(0.020)  # over: x0.7 and x0.5
    assert (c.batch_cap, c.delay_s) == (44, 0.002)
    c.decide(0.009)  # within 80..100% of the target: hold
    assert (c.batch_cap, c.delay_s) == (44, 0.002)
    c.decide(0.001)  # well under: +1/8 of the cap, +1/20 of the target
    assert c.batch_cap == 49 and abs(c.delay_s - 0.0025) < 1e-12
    for _ in range(100):
        c.decide(0.001)
    assert (c.batch_cap, c.delay_s) == (64, 0.005)  # bounded: max batch, half the target
    for _ in range(30):
        c.decide(1.0)
    assert c.batch_cap == 1 and c.delay_s < 1e-6


def test_a_full_window_makes_one_decision() -> None:
    c = AdaptiveBatching.start(target_s=0.010, max_batch_size=8, delay_s=0.0)
    for _ in range(WINDOW - 1):
        c.observe(0.5)
    assert c.decisions == 0
    c.observe(0.5)
    assert c.decisions == 1 and c.batch_cap == 5


async def test_the_batcher_forms_batches_of_the_current_cap() -> None:
    threads = InferenceThreads(1)
    try:
        runner = GatedRunner()
        batcher = make_batcher(runner, threads, max_batch=8)
        batcher.adaptive = AdaptiveBatching.start(0.01, 8, 0.0)
        batcher.adaptive.batch_cap = 3
        first = asyncio.create_task(batcher.infer(row(0), 1, None))
        await started(runner)
        rest = [asyncio.create_task(batcher.infer(row(i), 1, None)) for i in range(1, 8)]
        await asyncio.sleep(0)
        runner.gate.set()
        await asyncio.gather(first, *rest)
        assert [len(b) for b in runner.batches] == [1, 3, 3, 1]
    finally:
        threads.shutdown()
