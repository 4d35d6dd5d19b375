"""Inference threads: run batches off the event loop and hand results back to it.

A lean replacement for ThreadPoolExecutor + run_in_executor on the hot path: one C-level
SimpleQueue in, one call_soon_threadsafe out, no concurrent.futures.Future to wrap.
The models are small, so the hand-off's own cost counts: it is kept to these two steps.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

Done = Callable[[Any, BaseException | None], None]


class InferenceThreads:
    def __init__(self, threads: int) -> None:
        self._jobs: queue.SimpleQueue[
            tuple[Callable[[Any], Any], Any, asyncio.AbstractEventLoop, Done] | None
        ] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"ort-{i}", daemon=True)
            for i in range(max(1, threads))
        ]
        for thread in self._threads:
            thread.start()

    def submit(
        self, fn: Callable[[Any], Any], arg: Any, loop: asyncio.AbstractEventLoop, done: Done
    ) -> None:
        """Run fn(arg) on an inference thread; done(result, error) then runs on `loop`."""
        self._jobs.put((fn, arg, loop, done))

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, arg, loop, done = job
            result: Any = None
            error: BaseException | None = None
            try:
                result = fn(arg)
            except BaseException as exc:  # handed to the loop: fails only this batch
                error = exc
            try:
                loop.call_soon_threadsafe(done, result, error)
            except RuntimeError:  # the loop closed during shutdown
                log.debug("event loop closed before a batch result was delivered")

    def shutdown(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)
