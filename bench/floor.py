"""The in-process floor: ONNX Runtime alone, no gRPC, no batcher.

The session is opened by services.core.runtime.open_session, so it has exactly the options
the services use (threads, graph optimisation, no spinning, provider order and options);
only the device policy is chosen here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.workload import ModelInfo, Row, stack


@dataclass(frozen=True)
class FloorResult:
    model: str
    batch: int
    calls: int
    provider: str
    p50_ms: float
    p99_ms: float
    mean_ms: float
    inferences_per_s: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "batch": self.batch,
            "calls": self.calls,
            "provider": self.provider,
            "p50_ms": round(self.p50_ms, 4),
            "p99_ms": round(self.p99_ms, 4),
            "mean_ms": round(self.mean_ms, 4),
            "inferences_per_s": round(self.inferences_per_s, 1),
        }


def open_model(info: ModelInfo, policy: str = "cpu_only", intra_op_threads: int = 1) -> Any:
    """A services.core.runtime.ModelSession for the model's directory."""
    from services.core.runtime import open_session
    from services.settings import DevicePolicy

    assert info.spec is not None, "the floor needs the model repository"
    return open_session(info.spec, DevicePolicy(policy), intra_op_threads)


def feeds_for(rows: list[Row], batch: int) -> Row:
    """`batch` rows (cycling through the pool) stacked into one feed."""
    return stack([rows[i % len(rows)] for i in range(batch)])


def time_calls(session: Any, feeds: Row, duration_s: float, min_calls: int = 50) -> np.ndarray:
    """Seconds per session.run call, for about duration_s (after a short warm-up)."""
    for _ in range(10):
        session.run(feeds)
    times: list[float] = []
    clock = time.perf_counter
    stop = clock() + duration_s
    while len(times) < min_calls or clock() < stop:
        t0 = clock()
        session.run(feeds)
        times.append(clock() - t0)
    return np.asarray(times)


def measure(
    info: ModelInfo,
    rows: list[Row],
    batch: int,
    duration_s: float,
    *,
    session: Any = None,
    intra_op_threads: int = 1,
) -> FloorResult:
    session = session or open_model(info, intra_op_threads=intra_op_threads)
    times = time_calls(session, feeds_for(rows, batch), duration_s)
    ms = times * 1e3
    return FloorResult(
        model=info.name,
        batch=batch,
        calls=len(times),
        provider=session.provider,
        p50_ms=float(np.percentile(ms, 50)),
        p99_ms=float(np.percentile(ms, 99)),
        mean_ms=float(ms.mean()),
        inferences_per_s=batch * len(times) / float(times.sum()),
    )
