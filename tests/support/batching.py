"""A runner that stands in for ONNX Runtime in the batcher's unit tests: each run is
recorded, and the first ones wait on an event, so that batches form deterministically
behind a run the test holds."""

from __future__ import annotations

import asyncio
import threading

import numpy as np

from services.batching.batcher import Batcher
from services.batching.merge import BatchLayout
from services.batching.threads import InferenceThreads
from services.ops.metrics import Metrics
from services.settings import DevicePolicy, ServingConfig

CPU = "CPUExecutionProvider"
FAIL = -1.0  # a row holding this value makes its batch fail


class GatedRunner:
    """Records each batch; the first `blocked` runs wait until `gate` is set."""

    output_names = ("y",)

    def __init__(self, blocked: int = 1) -> None:
        self.gate = threading.Event()
        self.entered = threading.Semaphore(0)
        self.batches: list[list[float]] = []
        self._blocked = blocked

    def provider_for(self, rows: int) -> str:
        return CPU

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        x = feeds["x"]
        self.batches.append(x[:, 0].tolist())
        self.entered.release()
        if len(self.batches) <= self._blocked:
            self.gate.wait(10)
        if (x == FAIL).any():
            raise RuntimeError("bad batch")
        return [x * 2]


def make_batcher(
    runner: GatedRunner,
    threads: InferenceThreads,
    *,
    max_batch: int = 8,
    max_queue: int = 64,
    delay_s: float = 0.0,
    slots: int = 1,
) -> Batcher:
    config = ServingConfig(DevicePolicy.CPU_ONLY, max_batch, delay_s, max_queue)
    metrics = Metrics().for_model("fake", 1, (CPU,))
    return Batcher("fake/1", runner, BatchLayout({}, frozenset()), threads, metrics, config, slots)


def row(value: float, rows: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.full((rows, 2), value, np.float32)}


async def started(runner: GatedRunner, count: int = 1) -> None:
    """Wait until `count` more batches have entered the runner."""
    for _ in range(count):
        assert await asyncio.to_thread(runner.entered.acquire, True, 10)
