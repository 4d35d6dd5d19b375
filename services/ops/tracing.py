"""OpenTelemetry tracing, off by default.

On (NNSERVE_OTLP_ENDPOINT, or a span exporter handed to the server in tests): each RPC
gets a SERVER span, child of the caller's W3C `traceparent` from gRPC metadata, and each
inference request adds child spans for its stages (decode, queue, compute, encode) with
the times the data plane measured. Off: nothing is created per call.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_PROPAGATOR = TraceContextTextMapPropagator()
_TRACE_KEYS = ("traceparent", "tracestate")
# perf_counter() seconds -> epoch nanoseconds: every span time comes from perf_counter, so
# a call and its stage spans nest exactly even when the wall clock is adjusted.
_EPOCH_OFFSET_NS = time.time_ns() - time.perf_counter_ns()


def epoch_ns(perf_seconds: float) -> int:
    return _EPOCH_OFFSET_NS + int(perf_seconds * 1e9)


class Tracing:
    def __init__(self, service: str, exporter: SpanExporter, batch: bool = True) -> None:
        self.provider = TracerProvider(resource=Resource.create({"service.name": service}))
        processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
        self.provider.add_span_processor(processor)
        self._tracer = self.provider.get_tracer("nnserve")

    @classmethod
    def otlp(cls, service: str, endpoint: str, insecure: bool) -> Tracing:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return cls(service, OTLPSpanExporter(endpoint=endpoint, insecure=insecure))

    def start_call(self, method: str, metadata: Iterable[tuple[str, str | bytes]]) -> Span:
        """The SERVER span of one RPC, continuing the caller's trace when it sent one."""
        carrier = {k: v for k, v in metadata if k in _TRACE_KEYS and isinstance(v, str)}
        parent = _PROPAGATOR.extract(carrier) if carrier else None
        service, _, name = method.rpartition("/")
        return self._tracer.start_span(
            method,
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
            start_time=epoch_ns(time.perf_counter()),  # one clock for the call and its stages
        )

    def stage(
        self, parent: Span, name: str, start: float, end: float, **attributes: str | int
    ) -> None:
        """A finished child span from perf_counter() times."""
        span = self._tracer.start_span(
            name,
            context=set_span_in_context(parent),
            start_time=epoch_ns(start),
            attributes=attributes,
        )
        span.end(end_time=epoch_ns(end))

    @staticmethod
    def end_call(span: Span, code: str) -> None:
        span.set_attribute("rpc.grpc.status_code", code)
        if code != "OK":
            span.set_status(Status(StatusCode.ERROR, code))
        span.end(end_time=epoch_ns(time.perf_counter()))

    def shutdown(self) -> None:
        self.provider.shutdown()
