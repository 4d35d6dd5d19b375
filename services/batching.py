"""Dynamic batcher: one per model version.

Requests queue in a bounded deque. A batch starts at once when a run slot is free, so a
lone request waits for nothing; while batches are running, arrivals pile up and the next
batch takes all of them (up to max_batch_size). max_queue_delay only applies under load:
with a slot free and another batch still running, a partial batch may wait that long for
company. Merging, ONNX Runtime and splitting run on a worker thread, off the event loop.
Every future is resolved: a failed batch fails only its own requests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from services.errors import DeadlineExpired, QueueFull, ServingError, Unavailable
from services.merge import BatchLayout
from services.metrics import ModelMetrics, multiprocess_enabled
from services.runtime import ModelSession
from services.workers import InferenceThreads

log = logging.getLogger(__name__)

Tensors = dict[str, np.ndarray]


@dataclass(slots=True)
class _Pending:
    inputs: Tensors
    rows: int
    length: int  # sequence axis length, 0 when the model has none
    shape_key: tuple[tuple[int, ...], ...]  # requests batch together only when equal
    future: asyncio.Future[Tensors]
    enqueued: float
    deadline: float | None  # time.monotonic() value, None for no deadline


@dataclass
class BatchStats:
    """Cumulative counts and nanoseconds for ModelStatistics (Triton's queue/compute)."""

    queue_count: int = 0
    queue_ns: int = 0
    compute_count: int = 0  # batches; Triton's three compute phases share this count
    input_ns: int = 0  # merging requests into the batch
    compute_ns: int = 0  # ONNX Runtime run
    output_ns: int = 0  # splitting outputs per request


class BatchFailed(ServingError):
    """The batch's ONNX Runtime run failed: a server fault, reported as INTERNAL."""


class Batcher:
    def __init__(
        self,
        name: str,
        session: ModelSession,
        layout: BatchLayout,
        threads: InferenceThreads,
        metrics: ModelMetrics,
        *,
        max_batch_size: int,
        max_queue_delay_s: float,
        max_queue_size: int,
        max_in_flight: int,
    ) -> None:
        self.name = name
        self._session = session
        self._layout = layout
        self._threads = threads
        self.metrics = metrics
        self.max_batch_size = max(1, max_batch_size)
        self.max_queue_delay_s = max(0.0, max_queue_delay_s)
        self._max_queue = max_queue_size
        self._max_in_flight = max(1, max_in_flight)
        self.stats = BatchStats()
        self.inflight = 0  # requests between decode and encode (the data plane counts them)
        self._queue: deque[_Pending] = deque()
        # Queue depth and in-flight are read at scrape time instead of being pushed on
        # every request; multiprocess mode has no callbacks, so it keeps pushing.
        self._push_gauges = multiprocess_enabled()
        if not self._push_gauges:
            metrics.queue_depth.set_function(lambda: len(self._queue))
            metrics.inflight.set_function(lambda: self.inflight)
        self._in_flight = 0
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def _dequeued(self) -> None:
        if self._push_gauges:
            self.metrics.queue_depth.dec()

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
        return bool(self._queue) or self._in_flight > 0

    async def infer(self, inputs: Tensors, rows: int, deadline: float | None) -> Tensors:
        """Queue one request (any number of rows) and wait for its outputs."""
        if self._closed:
            raise Unavailable(f"model {self.name!r} is draining or unloading")
        if len(self._queue) >= self._max_queue:
            raise QueueFull(
                f"model {self.name!r} queue is full ({self._max_queue} requests waiting); "
                "retry later"
            )
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        if deadline is not None and deadline <= now:
            raise DeadlineExpired("deadline passed before the request was queued")
        padded = self._layout.padded_inputs
        pending = _Pending(
            inputs=inputs,
            rows=rows,
            length=self._layout.length_of(inputs),
            shape_key=tuple(v.shape[1:] for k, v in inputs.items() if k not in padded),
            future=loop.create_future(),
            enqueued=now,
            deadline=deadline,
        )
        self._queue.append(pending)
        if self._push_gauges:
            self.metrics.queue_depth.inc()
        self._dispatch()
        return await pending.future

    def _dispatch(self) -> None:
        while self._queue and self._in_flight < self._max_in_flight:
            if self._should_wait():
                return
            batch = self._take_batch()
            if batch:
                self._start(batch)

    def _should_wait(self) -> bool:
        """Under load, let a partial batch wait up to max_queue_delay for more requests."""
        if self.max_queue_delay_s <= 0 or self._in_flight == 0:
            return False
        if sum(p.rows for p in self._queue) >= self.max_batch_size:
            return False
        due = self._queue[0].enqueued + self.max_queue_delay_s
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
        batch: list[_Pending] = []
        rows = 0
        now = time.monotonic()
        queue = self._queue
        while queue:
            head = queue[0]
            if head.future.done():  # cancelled by the client: drop silently
                queue.popleft()
                self._dequeued()
                continue
            if head.deadline is not None and head.deadline <= now:
                queue.popleft()
                self._dequeued()
                head.future.set_exception(
                    DeadlineExpired("deadline passed while queued; the request was not run")
                )
                continue
            if batch and (
                rows + head.rows > self.max_batch_size or head.shape_key != batch[0].shape_key
            ):
                break
            queue.popleft()
            self._dequeued()
            self.metrics.queue_wait.observe(now - head.enqueued)
            self.stats.queue_count += 1
            self.stats.queue_ns += int((now - head.enqueued) * 1e9)
            batch.append(head)
            rows += head.rows
        return batch

    def _start(self, batch: list[_Pending]) -> None:
        self._in_flight += 1
        loop = asyncio.get_running_loop()
        self._threads.submit(
            self._run, batch, loop, lambda outcome, error: self._finish(batch, outcome, error)
        )

    def _run(self, batch: list[_Pending]) -> tuple[list[Tensors], tuple[float, float, float]]:
        """Worker thread: merge, run, split."""
        rows = [p.rows for p in batch]
        lengths = [p.length for p in batch]
        begin = time.perf_counter()
        feeds = self._layout.merge([p.inputs for p in batch], lengths)
        total = sum(rows)
        start = time.perf_counter()
        outputs = self._session.run(feeds)
        elapsed = time.perf_counter() - start
        self.metrics.compute[self._session.provider_for(total)].observe(elapsed)
        self.metrics.batch_size.observe(total)
        named = dict(zip(self._session.output_names, outputs, strict=True))
        split_start = time.perf_counter()
        results = self._layout.split(named, rows, lengths)
        phases = (start - begin, elapsed, time.perf_counter() - split_start)
        return results, phases

    def _finish(
        self,
        batch: list[_Pending],
        outcome: tuple[list[Tensors], tuple[float, float, float]] | None,
        error: BaseException | None,
    ) -> None:
        self._in_flight -= 1
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
            results, (merging, running, splitting) = outcome
            self.stats.compute_count += 1
            self.stats.input_ns += int(merging * 1e9)
            self.stats.compute_ns += int(running * 1e9)
            self.stats.output_ns += int(splitting * 1e9)
            for p, result in zip(batch, results, strict=True):
                if not p.future.done():
                    p.future.set_result(result)
        self._dispatch()

    def close(self) -> None:
        """Refuse new requests; queued ones still run (drain)."""
        self._closed = True
