"""Input drift: live inputs of each model version against its training inputs.

Every accepted request's inputs are binned with the version's drift reference
(model.json "drift_reference", contract/drift.py) and the bin counts added to a sliding
window of about the last `drift_window` rows. The window is a ring of CHUNKS count
vectors, never raw inputs: its memory is CHUNKS x (bins of all features) int64,
whatever the traffic (mlp: 8 x 80 counts; a sequence model: 8 x about 50).

A background task turns the window into one population stability index per feature
every `drift_interval_seconds` (never per request) and sets `nnserve_input_drift`:

    PSI = sum over bins i of (a_i - e_i) * ln(a_i / e_i)

with e_i the training proportion of bin i, a_i the window's, both floored at
PSI_EPSILON so that an empty bin does not divide by zero. Usual reading: below 0.1
stable, 0.1 to 0.25 moderate, above 0.25 significant drift.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable

import numpy as np
from prometheus_client import Gauge

from contract.drift import DriftReference

log = logging.getLogger(__name__)

Tensors = dict[str, np.ndarray]

CHUNKS = 8  # the window slides by one eighth of its rows at a time
PSI_EPSILON = 1e-4  # floor of both proportions: empty bins stay finite
# A request's rows beyond this are sampled (every k-th row), so binning stays cheap next
# to the request's own decode whatever max_batch_size allows.
MAX_ROWS_PER_REQUEST = 256
# At most one request is binned per this interval: under load the window samples requests
# (by time, so independently of their content) and binning costs a bounded share of a
# core whatever the request rate; at low rates every request is binned.
OBSERVE_INTERVAL_S = 0.001


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of proportions `actual` against `expected` (both sum
    to 1; zeros allowed): sum((a - e) * ln(a / e)), each floored at PSI_EPSILON."""
    e = np.maximum(np.asarray(expected, np.float64), PSI_EPSILON)
    a = np.maximum(np.asarray(actual, np.float64), PSI_EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


class DriftWindow:
    """Bin counts of about the last `rows` request rows of one model version.

    Rows are what axis 0 of a request counts: a tabular row, an image, a sequence (all
    its events). The window holds between 7/8 of `rows` and `rows` once full. Called on
    the event loop only (observe per request, scores per refresh), so it takes no lock.
    """

    def __init__(
        self, reference: DriftReference, rows: int, interval_s: float = OBSERVE_INTERVAL_S
    ) -> None:
        if rows < 1:
            raise ValueError("a drift window needs at least one row")
        self.reference = reference
        self.capacity = rows
        self._chunk_rows = -(-rows // CHUNKS)
        self._ring = np.zeros((CHUNKS, reference.size), np.int64)
        self._ring_rows = [0] * CHUNKS
        self._total = np.zeros(reference.size, np.int64)
        self._rows = 0
        self._slot = 0
        self._interval = interval_s
        self._next_observation = 0.0

    @property
    def rows(self) -> int:
        return self._rows

    @property
    def min_rows(self) -> int:
        """Rows the window needs before it is scored: a quarter of it (fewer would be noise:
        with 10 bins, PSI's sampling floor is about 9 / rows)."""
        return max(1, self.capacity // 4)

    def observe(self, inputs: Tensors, rows: int) -> None:
        """Add one accepted request's (validated) input tensors, unless one was added less
        than the interval (OBSERVE_INTERVAL_S) ago."""
        now = time.monotonic()
        if now < self._next_observation:
            return
        self._next_observation = now + self._interval
        if rows > MAX_ROWS_PER_REQUEST:
            step = -(-rows // MAX_ROWS_PER_REQUEST)
            inputs = {k: v[::step] for k, v in inputs.items()}
            rows = -(-rows // step)
        counts = self.reference.counts(inputs)
        slot = self._slot
        self._ring[slot] += counts
        self._total += counts
        self._ring_rows[slot] += rows
        self._rows += rows
        if self._ring_rows[slot] >= self._chunk_rows:
            # Slide: the oldest chunk leaves the window and becomes the current one.
            slot = self._slot = (slot + 1) % CHUNKS
            self._total -= self._ring[slot]
            self._rows -= self._ring_rows[slot]
            self._ring[slot] = 0
            self._ring_rows[slot] = 0

    def scores(self) -> dict[str, float]:
        """PSI per feature; empty until the window holds min_rows rows."""
        if self._rows < self.min_rows:
            return {}
        offsets = self.reference.offsets
        result = {}
        for i, feature in enumerate(self.reference.features):
            counts = self._total[offsets[i] : offsets[i + 1]]
            seen = int(counts.sum())
            if seen:
                result[feature.name] = psi(feature.expected, counts / seen)
        return result


# (model, version, window) of every version that serves and has a reference.
Windows = Callable[[], Iterable[tuple[str, int, DriftWindow]]]


class DriftExporter:
    """Sets nnserve_input_drift from every window now and then; drops the series of
    versions that went away (retired, unloaded) or whose window is not scored."""

    def __init__(self, windows: Windows, gauge: Gauge, interval_seconds: float) -> None:
        self._windows = windows
        self._gauge = gauge
        self._interval = interval_seconds
        self._published: set[tuple[str, str, str]] = set()

    def refresh(self) -> None:
        current: set[tuple[str, str, str]] = set()
        for name, version, window in self._windows():
            for feature, value in window.scores().items():
                labels = (name, str(version), feature)
                self._gauge.labels(*labels).set(value)
                current.add(labels)
        for labels in self._published - current:
            with contextlib.suppress(KeyError):
                self._gauge.remove(*labels)
        self._published = current

    async def run_forever(self) -> None:
        while True:
            try:
                self.refresh()
            except Exception:  # a scoring bug must not end the task (and the metric)
                log.exception("input drift: refresh failed")
            await asyncio.sleep(self._interval)
