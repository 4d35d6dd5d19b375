"""What every call gets, whichever front end received it (grpc.aio or native).

- grpc_server_started_total, grpc_server_handled_total{grpc_code} and the handling time,
  per method (children bound once per method).
- A Call: the request id (the client's `x-request-id`, bounded, or a new one) and, with
  tracing on, the call's SERVER span; the data plane and the JSON log read it.
- The status rule (errors.status_of) with one log line per failed call naming the request
  id: INFO for client-side outcomes, WARNING for the rest, ERROR with the traceback for
  INTERNAL.
"""

from __future__ import annotations

import logging
import time

import grpc
from prometheus_client import Counter, Histogram

from services.errors import InvalidInput, status_of
from services.ops.calls import Call, CallCounter, Metadata
from services.ops.metrics import Metrics
from services.ops.tracing import Tracing

log = logging.getLogger(__name__)

# Expected client-side outcomes: logged at INFO; anything else at WARNING or ERROR.
_CLIENT_CODES = {
    "INVALID_ARGUMENT", "NOT_FOUND", "CANCELLED", "DEADLINE_EXCEEDED", "UNAUTHENTICATED",
    "PERMISSION_DENIED", "FAILED_PRECONDITION", "UNIMPLEMENTED",
}  # fmt: skip


def undecodable() -> InvalidInput:
    """A request message that does not parse: the client's fault, never UNKNOWN."""
    return InvalidInput("the request message cannot be decoded (malformed protobuf)")


class MethodAccount:
    """The accounting of one method, bound once: metric children, tracing, call counter."""

    def __init__(
        self,
        metrics: Metrics,
        grpc_type: str,
        full_method: str,
        tracing: Tracing | None,
        calls: CallCounter,
    ) -> None:
        service, _, name = full_method.lstrip("/").rpartition("/")
        self.method = f"{service}/{name}"
        self.tracing = tracing
        self.calls = calls
        self._labels = (grpc_type, service, name)
        self._handled_family = metrics.grpc_handled
        self.started: Counter = metrics.grpc_started.labels(*self._labels)
        self.handling: Histogram = metrics.grpc_handling.labels(*self._labels)
        self._handled: dict[str, Counter] = {}

    def handled(self, code: str) -> Counter:
        child = self._handled.get(code)
        if child is None:
            child = self._handled[code] = self._handled_family.labels(*self._labels, code)
        return child

    def open(self, metadata: Metadata | None) -> Call:
        """Count a call that starts now and make its Call (span started with tracing on)."""
        self.started.inc()
        self.calls.started += 1
        tracing = self.tracing
        span = tracing.start_call(self.method, metadata or ()) if tracing is not None else None
        return Call(metadata, span)

    def close(self, call: Call, code: str, start: float) -> None:
        """Record the outcome of a call that started at `start` (perf_counter)."""
        self.handled(code).inc()
        self.handling.observe(time.perf_counter() - start)
        span = call.span
        if span is not None:
            span.set_attribute("nnserve.request_id", call.request_id)
            Tracing.end_call(span, code)

    def failed(self, call: Call, exc: BaseException) -> tuple[grpc.StatusCode, str]:
        """The status a failed call answers with, logged once with its request id."""
        status, message = status_of(exc)
        code, rid = status.name, call.request_id
        if status is grpc.StatusCode.INTERNAL:
            log.error("request %s %s: INTERNAL", rid, self.method, exc_info=exc)
        elif code not in _CLIENT_CODES:
            log.warning("request %s %s: %s: %s", rid, self.method, code, message)
        else:
            log.info("request %s %s: %s: %s", rid, self.method, code, message)
        return status, message
