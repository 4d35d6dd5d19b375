"""Closed-loop batching: hold a p99 latency target while batching as much as it allows.

Off unless NNSERVE_LATENCY_TARGET_MS is set. Each batcher then feeds the time every
request spent in it (enqueue to result) into a controller, which looks at one window of
requests at a time and adjusts the two knobs that trade latency for throughput:

- p99 of the window above the target: multiplicative decrease (batch cap x 0.7, queue
  delay x 0.5): back off quickly, latency is what the target protects;
- p99 below 80% of the target: additive increase (cap + 1/8 of it, delay + 1/20 of the
  target, up to half the target and the model's max_batch_size): probe for throughput.

AIMD, like TCP's congestion window: it settles where the target is just met.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WINDOW = 256  # requests per decision: enough for a p99, few enough to react in ~1 s


@dataclass
class AdaptiveBatching:
    target_s: float
    max_batch_size: int
    batch_cap: int  # current largest batch
    delay_s: float  # current max queue delay
    decisions: int = 0

    @classmethod
    def start(cls, target_s: float, max_batch_size: int, delay_s: float) -> AdaptiveBatching:
        return cls(target_s, max_batch_size, max_batch_size, min(delay_s, target_s / 2))

    def __post_init__(self) -> None:
        self._window: list[float] = []

    def observe(self, seconds: float) -> None:
        """One request's time in the batcher; decides once a window is full."""
        self._window.append(seconds)
        if len(self._window) >= WINDOW:
            self.decide(float(np.percentile(self._window, 99)))
            self._window.clear()

    def decide(self, p99: float) -> None:
        self.decisions += 1
        if p99 > self.target_s:
            self.batch_cap = max(1, int(self.batch_cap * 0.7))
            self.delay_s *= 0.5
        elif p99 < 0.8 * self.target_s:
            self.batch_cap = min(self.max_batch_size, self.batch_cap + max(1, self.batch_cap // 8))
            self.delay_s = min(self.target_s / 2, self.delay_s + self.target_s / 20)
