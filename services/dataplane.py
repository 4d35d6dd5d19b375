"""The inference path both APIs share: resolve -> decode -> validate -> batch -> encode.

Servicers only translate; this module owns request accounting (metrics, statistics,
in-flight) so KServe v2 and nnserve.v1 requests are counted the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc
import numpy as np
from prometheus_client import Counter, Histogram

from services.errors import ServingError, Unavailable
from services.metrics import Metrics
from services.registry import ModelRegistry, ModelVersion
from services.validation import check_request

Tensors = dict[str, np.ndarray]
Response = TypeVar("Response")

UNKNOWN_MODEL = "_unknown"  # label for requests naming no served model: keeps labels bounded


@dataclass(frozen=True)
class _Accounting:
    ok: Counter
    duration: Histogram


class DataPlane:
    def __init__(self, registry: ModelRegistry, metrics: Metrics) -> None:
        self.registry = registry
        self._metrics = metrics
        self._accounting: dict[tuple[str, int, str], _Accounting] = {}
        self.draining = False

    def _account(self, mv: ModelVersion, method: str) -> _Accounting:
        key = (mv.name, mv.version, method)
        acc = self._accounting.get(key)
        if acc is None:
            v = str(mv.version)
            acc = _Accounting(
                ok=self._metrics.requests.labels(mv.name, v, method, "OK"),
                duration=self._metrics.request_duration.labels(mv.name, v, method),
            )
            self._accounting[key] = acc
        return acc

    async def infer(
        self,
        method: str,
        name: str,
        version: str,
        decode: Callable[[ModelVersion], Tensors],
        encode: Callable[[ModelVersion, Tensors, Tensors], Response],
        context: grpc.aio.ServicerContext,
    ) -> Response:
        """Run one request end to end; ServingError carries the status for the interceptor."""
        start = time.perf_counter()
        mv: ModelVersion | None = None
        try:
            if self.draining:
                raise Unavailable("server is draining; no new requests")
            mv = self.registry.resolve(name, version)
            batcher, spec = mv.batcher, mv.spec
            assert batcher is not None and spec is not None  # set whenever READY
            batcher.enter()
            try:
                inputs = decode(mv)
                rows = check_request(spec, inputs)
                remaining = context.time_remaining()
                deadline = None if remaining is None else time.monotonic() + remaining
                outputs = await batcher.infer(inputs, rows, deadline)
                response = encode(mv, inputs, outputs)
            finally:
                batcher.leave()
        except ServingError as exc:
            self._record_failure(mv, name, version, method, exc.code, start)
            raise
        except Exception:
            self._record_failure(mv, name, version, method, grpc.StatusCode.INTERNAL, start)
            raise
        elapsed = time.perf_counter() - start
        acc = self._account(mv, method)
        acc.ok.inc()
        acc.duration.observe(elapsed)
        stats = mv.stats
        stats.success_count += 1
        stats.success_ns += int(elapsed * 1e9)
        stats.inference_count += rows
        stats.last_inference_ms = int(time.time() * 1000)
        return response

    def _record_failure(
        self,
        mv: ModelVersion | None,
        name: str,
        version: str,
        method: str,
        code: grpc.StatusCode,
        start: float,
    ) -> None:
        elapsed = time.perf_counter() - start
        if mv is None:
            known = name in self.registry.names()
            label_model, label_version = (name if known else UNKNOWN_MODEL), ""
        else:
            label_model, label_version = mv.name, str(mv.version)
            mv.stats.fail_count += 1
            mv.stats.fail_ns += int(elapsed * 1e9)
        self._metrics.requests.labels(label_model, label_version, method, code.name).inc()
        if mv is not None:
            self._account(mv, method).duration.observe(elapsed)
