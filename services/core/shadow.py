"""Shadow versions: every request the serving version answers also runs on a shadow
version, off the request's path, and the two versions' scores are compared.

The copy is taken when the serving version's outputs are ready (a request that failed is
not mirrored) and waits in a bounded queue per model: at most `shadow_queue_bytes` of
input tensors (and MAX_PENDING requests). A request that does not fit is dropped, never
queued without bound. One worker per model feeds the shadow version's own batcher one
batch at a time, with no deadline, on the same inference threads, and only while the
serving version's batcher is idle (nothing queued or running): when the server is busy
the shadow falls behind and sheds, and client requests do not queue behind shadow work.
A batch waits up to FLUSH_SECONDS for copies to reach the shadow's max_batch_size rows,
so that at low rates many copies share one ONNX Runtime run; the copies of a batch are
merged here and reach the batcher as one request, and their rows are compared in one
pass. The shadow's answers go nowhere but into the comparison.

Per compared row: the top class (classify) or verdict (sequence) of both versions, and
the largest absolute difference of their scores. Cumulative counts are metrics
(nnserve_shadow_*, docs/metrics.md); the last WINDOW_ROWS rows give DescribeModel's
agreement, max and p99 difference.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from contract.model import ModelSpec
from services.batching.batcher import Batcher
from services.batching.merge import BatchLayout
from services.errors import ServingError
from services.ops.metrics import Metrics

log = logging.getLogger(__name__)

Tensors = dict[str, np.ndarray]

WINDOW_ROWS = 4096  # compared rows behind DescribeModel's agreement and differences
MAX_PENDING = 1024  # requests waiting for their shadow run, per model, whatever their size
FLUSH_SECONDS = 0.01  # the longest a copy waits for others to share its shadow batch
YIELD_SECONDS = 0.002  # how often a waiting shadow batch looks whether the serving one is idle


def scores_output(spec: ModelSpec) -> str:
    """The output whose rows are compared: class scores, or sequence verdict scores."""
    if spec.classify is not None:
        return spec.classify.scores_output
    assert spec.sequence is not None  # a model is one or the other (contract/model.py)
    return spec.sequence.sequence_scores_output


def incompatibility(serving: ModelSpec, shadow: ModelSpec) -> str:
    """Why `shadow` cannot take `serving`'s requests as they are ("" when it can): the
    same task, inputs, labels, and the same reading of them (features, vocabulary)."""
    if serving.task != shadow.task:
        return f"its task is {shadow.task}, not {serving.task}"
    if serving.inputs != shadow.inputs:
        return "its inputs differ (names, types or shapes)"
    if serving.labels != shadow.labels:
        return "its labels differ"
    if serving.classify != shadow.classify or serving.sequence != shadow.sequence:
        return "it reads its inputs differently (features, image shape or vocabulary)"
    if scores_output(serving) != scores_output(shadow):
        return "its scores output has another name"
    return ""


@dataclass(frozen=True)
class ShadowSummary:
    serving_version: int
    shadow_version: int
    compared_rows: int
    dropped_requests: int
    window_rows: int
    agreement: float  # 0 when no row was compared yet
    max_abs_difference: float
    p99_abs_difference: float


class ShadowComparison:
    """Cumulative metrics and a window of the last WINDOW_ROWS compared rows."""

    def __init__(self, metrics: Metrics, model: str, version: int, shadow: int) -> None:
        labels = (model, str(version), str(shadow))
        self._rows = metrics.shadow_rows.labels(*labels)
        self._agreeing = metrics.shadow_agreeing_rows.labels(*labels)
        self._difference = metrics.shadow_score_difference.labels(*labels)
        self._agree = np.zeros(WINDOW_ROWS, bool)
        self._diff = np.zeros(WINDOW_ROWS, np.float64)
        self._filled = 0
        self._next = 0
        self.compared_rows = 0

    def add(self, served: np.ndarray, shadowed: np.ndarray) -> None:
        """Rows answered by both versions: their scores, shape (rows, classes)."""
        rows = served.shape[0]
        served2 = served.reshape(rows, -1).astype(np.float64, copy=False)
        shadowed2 = shadowed.reshape(rows, -1).astype(np.float64, copy=False)
        agree = served2.argmax(axis=1) == shadowed2.argmax(axis=1)
        diff = np.abs(served2 - shadowed2).max(axis=1)
        self._rows.inc(rows)
        self._agreeing.inc(int(agree.sum()))
        for value in diff.tolist():  # prometheus_client has no bulk observe
            self._difference.observe(value)
        self.compared_rows += rows
        agree, diff = agree[-WINDOW_ROWS:], diff[-WINDOW_ROWS:]  # the window keeps the last
        idx = (self._next + np.arange(len(agree))) % WINDOW_ROWS
        self._agree[idx], self._diff[idx] = agree, diff
        self._next = int((self._next + len(agree)) % WINDOW_ROWS)
        self._filled = min(WINDOW_ROWS, self._filled + len(agree))

    def window(self) -> tuple[int, float, float, float]:
        """(rows, agreement, max, p99 of the per-row largest difference) over the window."""
        n = self._filled
        if n == 0:
            return 0, 0.0, 0.0, 0.0
        agree, diff = self._agree[:n], self._diff[:n]
        return n, float(agree.mean()), float(diff.max()), float(np.quantile(diff, 0.99))


class Version(Protocol):
    """A loaded model version, as far as a shadow needs it (registry.LoadedModel)."""

    @property
    def spec(self) -> ModelSpec: ...

    @property
    def version(self) -> int: ...

    @property
    def batcher(self) -> Batcher: ...


@dataclass(frozen=True, slots=True)
class _Copy:
    """One answered request waiting for its shadow run."""

    inputs: Tensors
    served: np.ndarray  # the serving version's scores for it
    rows: int
    nbytes: int
    shape: tuple[tuple[int, ...], ...]  # of its inputs beyond the batch and sequence axes


class Shadow:
    """Mirrors one serving version's answered requests onto one shadow version.

    Lives on the event loop (offers come from batcher futures' callbacks, the worker is a
    task), so it takes no lock. `stop()` ends it: later offers are dropped."""

    def __init__(
        self,
        serving: Version,
        shadow: Version,
        metrics: Metrics,
        *,
        max_bytes: int,
        min_agreement: float,
    ) -> None:
        self.serving = serving
        self.shadow = shadow
        self._batcher = shadow.batcher
        self._layout = BatchLayout.for_model(shadow.spec)
        self._padded = self._layout.padded_inputs
        self._scores = scores_output(shadow.spec)
        name = serving.spec.name
        self._labels = (name, str(serving.spec.version), str(shadow.spec.version))
        self._metrics = metrics
        self._outcomes = {
            outcome: metrics.shadow_requests.labels(*self._labels, outcome)
            for outcome in ("compared", "dropped", "failed")
        }
        metrics.shadow_min_agreement.labels(*self._labels).set(min_agreement)
        self.comparison = ShadowComparison(metrics, name, serving.spec.version, shadow.spec.version)
        self.dropped = 0
        self._max_bytes = max_bytes
        self._pending: collections.deque[_Copy] = collections.deque()
        self._bytes = 0  # input and score bytes of pending and running copies
        self._pending_rows = 0
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._stopped = False

    # ------------------------------------------------------------------ intake

    def follow(self, served: asyncio.Future[Tensors], inputs: Tensors, rows: int) -> None:
        """Mirror this request once the serving version has answered it."""
        served.add_done_callback(lambda future: self._answered(future, inputs, rows))

    def _answered(self, future: asyncio.Future[Tensors], inputs: Tensors, rows: int) -> None:
        if future.cancelled() or future.exception() is not None:
            return  # what the serving version did not answer has nothing to compare with
        scores = future.result().get(self._scores)
        if scores is None:
            return
        nbytes = sum(v.nbytes for v in inputs.values()) + scores.nbytes
        if (
            self._stopped
            or len(self._pending) >= MAX_PENDING
            or self._bytes + nbytes > self._max_bytes
        ):
            self._drop()
            return
        shape = tuple(v.shape[2:] if k in self._padded else v.shape[1:] for k, v in inputs.items())
        self._pending.append(_Copy(inputs, scores, rows, nbytes, shape))
        self._bytes += nbytes
        self._pending_rows += rows
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(
                self._run(), name=f"nnserve-shadow-{self._labels[0]}"
            )
        self._wake.set()

    def _drop(self, outcome: str = "dropped") -> None:
        self.dropped += 1
        self._outcomes[outcome].inc()

    # ------------------------------------------------------------------ worker

    async def _run(self) -> None:
        while not self._stopped:
            await self._wake.wait()
            self._wake.clear()
            while self._pending and not self._stopped:
                if self._pending_rows < self._batcher.config.max_batch_size:
                    await asyncio.sleep(FLUSH_SECONDS)  # company for one shared run
                while self.serving.batcher.busy and not self._stopped:
                    # The serving version first: copies wait (and new ones are dropped
                    # once the queue is full) while it has requests queued or running.
                    await asyncio.sleep(YIELD_SECONDS)
                if self._pending:
                    await self._run_batch(self._take())

    def _take(self) -> list[_Copy]:
        """Queued copies for one shadow batch (at least one): up to the shadow's
        max_batch_size rows, of one shape apart from the batch and sequence axes."""
        cap = self._batcher.config.max_batch_size
        batch = [self._pending.popleft()]
        rows = batch[0].rows
        while (
            self._pending
            and rows + self._pending[0].rows <= cap
            and self._pending[0].shape == batch[0].shape
        ):
            copy = self._pending.popleft()
            batch.append(copy)
            rows += copy.rows
        self._pending_rows -= rows
        return batch

    async def _run_batch(self, batch: list[_Copy]) -> None:
        """One submission of the merged copies, one comparison of all their rows."""
        future: asyncio.Future[Tensors] | None = None
        try:
            lengths = [self._layout.length_of(c.inputs) for c in batch]
            merged = self._layout.merge([c.inputs for c in batch], lengths)
            rows = sum(c.rows for c in batch)
            try:
                future = self._batcher.submit(merged, rows, None)
            except ServingError:  # the shadow's queue is full, or it is draining
                for _ in batch:
                    self._drop()
                return
            try:
                outputs = await future
            except ServingError:  # the shadow version failed the batch
                for _ in batch:
                    self._drop("failed")
                return
            shadowed = outputs.get(self._scores)
            served = (
                np.concatenate([c.served for c in batch]) if len(batch) > 1 else batch[0].served
            )
            if shadowed is None or shadowed.shape != served.shape:
                for _ in batch:
                    self._drop("failed")
                return
            self.comparison.add(served, shadowed)
            self._outcomes["compared"].inc(len(batch))
        finally:
            self._bytes -= sum(copy.nbytes for copy in batch)
            if future is not None:
                future.cancel()  # stopped mid-batch: the shadow need not run it

    # ------------------------------------------------------------------ views

    def summary(self) -> ShadowSummary:
        rows, agreement, max_diff, p99 = self.comparison.window()
        return ShadowSummary(
            serving_version=self.serving.version,
            shadow_version=self.shadow.version,
            compared_rows=self.comparison.compared_rows,
            dropped_requests=self.dropped,
            window_rows=rows,
            agreement=agreement,
            max_abs_difference=max_diff,
            p99_abs_difference=p99,
        )

    def stop(self) -> None:
        """No more mirroring: pending copies are dropped, the worker ends, and the
        configured bound's series goes (so no alert compares a pair that is gone)."""
        self._stopped = True
        while self._pending:
            self._bytes -= self._pending.popleft().nbytes
        self._pending_rows = 0
        if self._worker is not None:
            self._worker.cancel()
        with contextlib.suppress(KeyError):
            self._metrics.shadow_min_agreement.remove(*self._labels)
