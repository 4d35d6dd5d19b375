"""The inference path both APIs share, as a request scope.

A servicer reads top to bottom inside one scope:

    async with plane.request("ModelInfer", name, version, deadline) as scope:
        inputs = codec.decode_...(request, scope.model.spec)     # to numpy
        outputs = await scope.infer(inputs)                      # validate, batch, run
        return codec.encode_...(request, scope.model.spec, outputs)  # from numpy

The scope owns what every request shares: the draining check, model resolution, the
server-wide bounds on requests and bytes in flight, the deadline, and the accounting
(nnserve_requests_total, the request duration, ModelStatistics), so KServe v2 and
nnserve.v1 requests are counted the same way. It takes no gRPC objects.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import numpy as np
from prometheus_client import Counter, Histogram

from services.batching.batcher import Batcher, Timing
from services.core.readiness import ServerState
from services.core.registry import LoadedModel, ModelRegistry
from services.core.validation import check_request
from services.errors import (
    DeadlineExpired,
    QueueFull,
    Unavailable,
    status_of,
)
from services.ops.calls import CURRENT, Call
from services.ops.metrics import Metrics
from services.ops.tracing import Tracing

Tensors = dict[str, np.ndarray]

UNKNOWN_MODEL = "_unknown"  # label for requests naming no served model: keeps labels bounded


@dataclass(frozen=True)
class Limits:
    """Server-wide bounds on work accepted at once (RESOURCE_EXHAUSTED beyond them)."""

    max_inflight_requests: int
    max_inflight_bytes: int


@dataclass(frozen=True)
class _Accounting:
    ok: Counter
    duration: Histogram


class DataPlane:
    def __init__(
        self,
        registry: ModelRegistry,
        metrics: Metrics,
        state: ServerState,
        limits: Limits,
        *,
        stage_metrics: bool = True,
        tracing: Tracing | None = None,
    ) -> None:
        self.registry = registry
        self.state = state
        self.limits = limits
        self.stage_metrics = stage_metrics
        self.tracing = tracing
        self._metrics = metrics
        self._accounting: dict[tuple[str, int, str], _Accounting] = {}
        self.inflight_requests = 0
        self.inflight_bytes = 0

    def request(self, method: str, name: str, version: str, deadline: float | None) -> Request:
        """The scope of one inference request; `deadline` is a time.monotonic() value."""
        return Request(self, method, name, version, deadline)

    def account(self, model: LoadedModel, method: str) -> _Accounting:
        key = (model.name, model.version, method)
        acc = self._accounting.get(key)
        if acc is None:
            v = str(model.version)
            acc = _Accounting(
                ok=self._metrics.requests.labels(model.name, v, method, "OK"),
                duration=self._metrics.request_duration.labels(model.name, v, method),
            )
            self._accounting[key] = acc
        return acc

    def count_failure(self, model: LoadedModel | None, name: str, method: str, code: str) -> None:
        if model is None:  # only names the registry knows become label values
            label = name if self.registry.versions(name) else UNKNOWN_MODEL
            self._metrics.requests.labels(label, "", method, code).inc()
        else:
            self._metrics.requests.labels(model.name, str(model.version), method, code).inc()


class Request:
    """One request: `async with` resolves the model and accounts for the outcome."""

    __slots__ = (
        "_bytes",
        "_deadline",
        "_entered",
        "_infer_start",
        "_inferred",
        "_method",
        "_name",
        "_plane",
        "_rows",
        "_start",
        "_timing",
        "_version",
        "call",
        "model",
    )  # fmt: skip

    def __init__(
        self, plane: DataPlane, method: str, name: str, version: str, deadline: float | None
    ) -> None:
        self._plane = plane
        self._method = method
        self._name = name
        self._version = version
        self._deadline = deadline
        self._start = 0.0
        self._rows = 0
        self._bytes = 0
        self._timing = Timing()
        self._entered = self._infer_start = self._inferred = 0.0
        self.call: Call | None = None  # set by a front end that runs no task per call
        self.model: LoadedModel

    async def __aenter__(self) -> Request:
        return self.enter()

    def enter(self) -> Request:
        """Admit the request (draining, server bounds, model resolution) or raise."""
        plane = self._plane
        self._start = time.perf_counter()
        try:
            if plane.state.draining:
                raise Unavailable("server is draining; no new requests")
            if plane.inflight_requests >= plane.limits.max_inflight_requests:
                raise QueueFull(
                    f"server has {plane.limits.max_inflight_requests} requests in flight "
                    "(max_inflight_requests); retry later"
                )
            self.model = plane.registry.resolve(self._name, self._version)
        except BaseException as exc:
            code, _ = status_of(exc)
            plane.count_failure(None, self._name, self._method, code.name)
            raise
        plane.inflight_requests += 1
        self.model.batcher.enter()
        self._entered = time.perf_counter()
        return self

    async def infer(self, inputs: Tensors, batcher: Batcher | None = None) -> Tensors:
        """Validate, bound, queue and run one request's tensors; returns its outputs.
        `batcher`: another graph of the model (its explainer); default the main one."""
        outputs = await self.submit(inputs, batcher)
        self.inferred()
        return outputs

    def submit(
        self, inputs: Tensors, batcher: Batcher | None = None, dispatch: bool = True
    ) -> asyncio.Future[Tensors]:
        """infer() without the wait: the future of the request's outputs; call inferred()
        when it resolves (batcher.dispatch() starts the batch when `dispatch` is False)."""
        self._rows = check_request(self.model.spec, inputs)
        size = sum(v.nbytes for v in inputs.values())
        plane = self._plane
        if plane.inflight_bytes + size > plane.limits.max_inflight_bytes:
            raise QueueFull(
                f"server has {plane.inflight_bytes >> 20} MiB of request tensors in flight; "
                f"this request needs {size >> 20} MiB more than max_inflight_bytes allows; "
                "retry later"
            )
        plane.inflight_bytes += size
        self._bytes = size
        self._infer_start = time.perf_counter()
        runner = batcher or self.model.batcher
        future = runner.submit(inputs, self._rows, self._deadline, self._timing, dispatch)
        shadows = plane.registry.shadows
        if shadows and runner is self.model.batcher:  # the main graph's answers only
            shadow = shadows.get(self.model.name)
            if shadow is not None and shadow.serving is self.model:
                shadow.follow(future, inputs, self._rows)
        drift = self.model.drift
        if drift is not None:  # accepted: its inputs may join the drift window (sampled)
            drift.observe(inputs, self._rows)
        return future

    def inferred(self) -> None:
        """The outputs arrived (stage timing: what follows is encoding)."""
        self._inferred = time.perf_counter()

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, _tb: object
    ) -> None:
        self.exit(exc)

    def exit(self, exc: BaseException | None) -> None:
        """Account for the outcome of an admitted request (exc None: it succeeded)."""
        plane, model = self._plane, self.model
        plane.inflight_requests -= 1
        plane.inflight_bytes -= self._bytes
        model.batcher.leave()
        end = time.perf_counter()
        elapsed = end - self._start
        acc = plane.account(model, self._method)
        acc.duration.observe(elapsed)
        stats = model.stats
        if exc is None:
            acc.ok.inc()
            stats.success_count += 1
            stats.success_ns += int(elapsed * 1e9)
            stats.inference_count += self._rows
            stats.last_inference_ms = int(time.time() * 1000)
            if self._inferred:  # the batcher ran it (a Stream message's steps do not)
                if plane.stage_metrics:
                    self._observe_stages(end)
                if plane.tracing is not None:
                    self._trace_stages(plane.tracing, end)
            return
        if isinstance(exc, asyncio.CancelledError) and self.expired():
            exc = DeadlineExpired("deadline exceeded")  # the client's deadline ended the call
        code, _ = status_of(exc)
        plane.count_failure(model, self._name, self._method, code.name)
        stats.fail_count += 1
        stats.fail_ns += int(elapsed * 1e9)

    def _observe_stages(self, end: float) -> None:
        t = self._timing
        inside = self._inferred - self._infer_start  # batcher's share: queue to split
        handoff = max(0.0, inside - t.queue - t.merge - t.compute - t.split)
        decode = self._infer_start - self._entered
        for histogram, seconds in zip(
            self.model.batcher.metrics.stages,
            (decode, t.queue, t.merge, t.compute, t.split, handoff, end - self._inferred),
            strict=True,
        ):
            histogram.observe(seconds)

    def _trace_stages(self, tracing: Tracing, end: float) -> None:
        call = self.call or CURRENT.get()
        if call is None or call.span is None:
            return
        t, span = self._timing, call.span
        model: dict[str, str | int] = {
            "nnserve.model": self.model.name,
            "nnserve.version": self.model.version,
        }
        queued = self._infer_start
        run_start = queued + t.queue
        tracing.stage(span, "decode", self._entered, self._infer_start, **model)
        tracing.stage(span, "queue", queued, run_start, **model)
        tracing.stage(span, "compute", run_start, self._inferred, rows=self._rows, **model)
        tracing.stage(span, "encode", self._inferred, end, **model)

    def expired(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline - 0.001
