"""Dynamic batcher: one per model version.

Requests wait in a bounded queue ordered by deadline (earliest first; requests without a
deadline after them, in arrival order). A batch starts at once when a run slot is free,
so a lone request waits for nothing; while batches are running, arrivals pile up and the
next batch takes as many as fit (up to max_batch_size rows). max_queue_delay only applies
under load: with a slot free and another batch still running, a partial batch may wait
that long for company. Work whose deadline has passed is dropped before it runs.
Merging, ONNX Runtime and splitting run on an inference thread, off the event loop.
Every future is resolved: a failed batch fails only its own requests.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from services.batching.adaptive import AdaptiveBatching
from services.batching.merge import BatchLayout
from services.batching.threads import InferenceThreads
from services.errors import DeadlineExpired, InvalidInput, QueueFull, ServingError, Unavailable
from services.ops.metrics import ModelMetrics, multiprocess_enabled
from services.settings import ServingConfig

log = logging.getLogger(__name__)

Tensors = dict[str, np.ndarray]


class Runner(Protocol):
    """What the batcher runs a merged batch on (runtime.ModelSession in production)."""

    output_names: tuple[str, ...]

    def provider_for(self, rows: int) -> str: ...

    def run(self, feeds: Tensors) -> list[np.ndarray]: ...


@dataclass(slots=True)
class Timing:
    """Where one request's time went inside the batcher (seconds), filled as it happens."""

    queue: float = 0.0
    merge: float = 0.0
    compute: float = 0.0
    split: float = 0.0


@dataclass(slots=True, order=True)
class _Pending:
    # Heap order: earliest deadline first (math.inf = none), then arrival order.
    due: float
    seq: int
    inputs: Tensors = field(compare=False)
    rows: int = field(compare=False)
    length: int = field(compare=False)  # sequence axis length, 0 when the model has none
    shape_key: tuple[tuple[int, ...], ...] = field(compare=False)  # batch only when equal
    future: asyncio.Future[Tensors] = field(compare=False)
    enqueued: float = field(compare=False)
    timing: Timing = field(compare=False)


@dataclass
class PhaseTotals:
    """Cumulative count and nanoseconds of Triton's three compute phases."""

    count: int = 0
    input_ns: int = 0  # merging requests into the batch
    infer_ns: int = 0  # ONNX Runtime run
    output_ns: int = 0  # splitting outputs per request


@dataclass
class BatchStats:
    """What ModelStatistics reports: queue wait, compute phases, and per batch size."""

    queue_count: int = 0
    queue_ns: int = 0
    compute: PhaseTotals = field(default_factory=PhaseTotals)
    by_batch_size: dict[int, PhaseTotals] = field(default_factory=dict)  # <= max_batch_size keys

    def record(self, rows: int, merging: float, running: float, splitting: float) -> None:
        for totals in (self.compute, self.by_batch_size.setdefault(rows, PhaseTotals())):
            totals.count += 1
            totals.input_ns += int(merging * 1e9)
            totals.infer_ns += int(running * 1e9)
            totals.output_ns += int(splitting * 1e9)


@dataclass(slots=True)
class _Outcome:
    """What an inference thread hands back: the requests that ran and their outputs."""

    ran: list[_Pending]
    results: list[Tensors]
    phases: tuple[float, float, float] | None  # merge, run, split seconds; None: nothing ran


class BatchFailed(ServingError):
    """The batch's ONNX Runtime run failed: a server fault, reported as INTERNAL."""


class Batcher:
    def __init__(
        self,
        name: str,
        runner: Runner,
        layout: BatchLayout,
        threads: InferenceThreads,
        metrics: ModelMetrics,
        config: ServingConfig,
        max_in_flight: int,
        adaptive: AdaptiveBatching | None = None,
    ) -> None:
        self.name = name
        self._runner = runner
        self._layout = layout
        self._threads = threads
        self.metrics = metrics
        self.config = config
        self._max_in_flight = max(1, max_in_flight)
        self.adaptive = (
            adaptive  # closed-loop batch cap and queue delay (services.batching.adaptive)
        )
        self._publish_knobs()
        self.stats = BatchStats()
        self.inflight = 0  # requests between decode and encode (the data plane counts them)
        self._queue: list[_Pending] = []  # a heap
        self._seq = itertools.count()
        # Queue depth and in-flight are read at scrape time instead of being pushed on
        # every request; multiprocess mode has no callbacks, so it keeps pushing.
        self._push_gauges = multiprocess_enabled()
        if not self._push_gauges:
            metrics.queue_depth.set_function(lambda: len(self._queue))
            metrics.inflight.set_function(lambda: self.inflight)
        self._running = 0
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def _pop(self) -> _Pending:
        if self._push_gauges:
            self.metrics.queue_depth.dec()
        return heapq.heappop(self._queue)

    def enter(self) -> None:
        """A request for this model was accepted (decode to encode)."""
        self.inflight += 1
        if self._push_gauges:
            self.metrics.inflight.inc()

    def leave(self) -> None:
        self.inflight -= 1
        if self._push_gauges:
            self.metrics.inflight.dec()

    @property
    def busy(self) -> bool:
        return bool(self._queue) or self._running > 0

    async def infer(
        self, inputs: Tensors, rows: int, deadline: float | None, timing: Timing | None = None
    ) -> Tensors:
        """Queue one request of at most max_batch_size rows and wait for its outputs;
        `timing`, when given, receives its queue wait and its batch's phases."""
        return await self.submit(inputs, rows, deadline, timing)

    def submit(
        self,
        inputs: Tensors,
        rows: int,
        deadline: float | None,
        timing: Timing | None = None,
        dispatch: bool = True,
    ) -> asyncio.Future[Tensors]:
        """Queue one request; its future resolves with its outputs (cancel it to drop the
        request). `dispatch=False` leaves starting batches to a later dispatch(), so that
        requests received together are queued before the first batch forms."""
        if self._closed:
            raise Unavailable(f"model {self.name!r} is draining or unloading")
        if rows > self.config.max_batch_size:
            raise InvalidInput(
                f"request has {rows} rows; model {self.name!r} takes at most "
                f"{self.config.max_batch_size} per request (max_batch_size)"
            )
        if len(self._queue) >= self.config.max_queue_size:
            raise QueueFull(
                f"model {self.name!r} queue is full ({self.config.max_queue_size} requests "
                "waiting); retry later"
            )
        now = time.monotonic()
        if deadline is not None and deadline <= now:
            raise DeadlineExpired("deadline passed before the request was queued")
        padded = self._layout.padded_inputs
        pending = _Pending(
            due=math.inf if deadline is None else deadline,
            seq=next(self._seq),
            inputs=inputs,
            rows=rows,
            length=self._layout.length_of(inputs),
            shape_key=tuple(v.shape[1:] for k, v in inputs.items() if k not in padded),
            future=asyncio.get_running_loop().create_future(),
            enqueued=now,
            timing=timing or Timing(),
        )
        heapq.heappush(self._queue, pending)
        if self._push_gauges:
            self.metrics.queue_depth.inc()
        if dispatch:
            self._dispatch()
        return pending.future

    def dispatch(self) -> None:
        """Start the batches the queue allows now (after submit(..., dispatch=False))."""
        self._dispatch()

    def _dispatch(self) -> None:
        while self._queue and self._running < self._max_in_flight:
            if self._should_wait():
                return
            batch = self._take_batch()
            if batch:
                self._start(batch)

    @property
    def batch_cap(self) -> int:
        return self.adaptive.batch_cap if self.adaptive else self.config.max_batch_size

    @property
    def queue_delay_s(self) -> float:
        return self.adaptive.delay_s if self.adaptive else self.config.max_queue_delay_s

    def _publish_knobs(self) -> None:
        self.metrics.batch_cap.set(self.batch_cap)
        self.metrics.queue_delay.set(self.queue_delay_s)

    def _should_wait(self) -> bool:
        """Under load, let a partial batch wait up to the queue delay for more requests."""
        delay = self.queue_delay_s
        if delay <= 0 or self._running == 0:
            return False
        if sum(p.rows for p in self._queue) >= self.batch_cap:
            return False
        due = min(p.enqueued for p in self._queue) + delay
        remaining = due - time.monotonic()
        if remaining <= 0:
            return False
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(remaining, self._on_timer)
        return True

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch()

    def _take_batch(self) -> list[_Pending]:
        """Earliest deadline first; expired and cancelled work is dropped, never run."""
        batch: list[_Pending] = []
        rows = 0
        now = time.monotonic()
        queue = self._queue
        while queue:
            head = queue[0]
            if head.future.done():  # cancelled by the client
                self._pop()
                continue
            if head.due <= now:
                self._pop()
                head.future.set_exception(
                    DeadlineExpired("deadline passed while queued; the request was not run")
                )
                continue
            if batch and (
                rows + head.rows > self.batch_cap or head.shape_key != batch[0].shape_key
            ):
                break
            self._pop()
            waited = now - head.enqueued
            head.timing.queue = waited
            self.metrics.queue_wait.observe(waited)
            self.stats.queue_count += 1
            self.stats.queue_ns += int(waited * 1e9)
            batch.append(head)
            rows += head.rows
        return batch

    def _start(self, batch: list[_Pending]) -> None:
        self._running += 1
        loop = asyncio.get_running_loop()
        self._threads.submit(
            self._run, batch, loop, lambda outcome, error: self._finish(batch, outcome, error)
        )

    def _run(self, batch: list[_Pending]) -> _Outcome:
        """Inference thread: drop what expired while waiting for a thread, merge, run, split."""
        now = time.monotonic()
        live = [p for p in batch if p.due > now and not p.future.done()]
        if not live:
            return _Outcome(live, [], None)
        rows = [p.rows for p in live]
        lengths = [p.length for p in live]
        begin = time.perf_counter()
        feeds = self._layout.merge([p.inputs for p in live], lengths)
        total = sum(rows)
        start = time.perf_counter()
        outputs = self._runner.run(feeds)
        elapsed = time.perf_counter() - start
        self.metrics.compute[self._runner.provider_for(total)].observe(elapsed)
        self.metrics.batch_size.observe(total)
        named = dict(zip(self._runner.output_names, outputs, strict=True))
        split_start = time.perf_counter()
        results = self._layout.split(named, rows, lengths)
        phases = (start - begin, elapsed, time.perf_counter() - split_start)
        return _Outcome(live, results, phases)

    def _finish(
        self, batch: list[_Pending], outcome: _Outcome | None, error: BaseException | None
    ) -> None:
        self._running -= 1
        if error is not None:
            log.error(
                "model %s: batch of %d requests failed", self.name, len(batch), exc_info=error
            )
            failure = BatchFailed(
                f"model {self.name!r} failed to run the batch: {type(error).__name__}"
            )
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(failure)
        elif outcome is not None:
            if outcome.phases is not None:
                total = sum(p.rows for p in outcome.ran)
                self.stats.record(total, *outcome.phases)
                merging, running, splitting = outcome.phases
                for p in outcome.ran:
                    t = p.timing
                    t.merge, t.compute, t.split = merging, running, splitting
            for p, result in zip(outcome.ran, outcome.results, strict=True):
                if not p.future.done():
                    p.future.set_result(result)
            if self.adaptive is not None and outcome.ran:
                now = time.monotonic()
                decisions = self.adaptive.decisions
                for p in outcome.ran:
                    self.adaptive.observe(now - p.enqueued)
                if self.adaptive.decisions != decisions:
                    self._publish_knobs()
            for p in batch:  # expired while waiting for an inference thread
                if not p.future.done():
                    p.future.set_exception(
                        DeadlineExpired("deadline passed while queued; the request was not run")
                    )
        self._dispatch()

    def close(self) -> None:
        """Refuse new requests; queued ones still run (drain)."""
        self._closed = True
