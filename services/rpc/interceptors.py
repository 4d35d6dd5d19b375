"""One server interceptor for every RPC: statuses, request ids, logs and grpc_server_* metrics.

- Exceptions become statuses by errors.status_of (ServingError -> its code; anything else
  INTERNAL with a generic message, traceback logged).
- A message that cannot be decoded is INVALID_ARGUMENT (never UNKNOWN/INTERNAL), on unary
  calls and streams alike, and ends a stream instead of leaving it open.
- Each call gets a request id (the client's `x-request-id` metadata, bounded, or a new
  one), sent back as trailing metadata and named in the log line of every failed call.
- With an Authenticator (NNSERVE_TOKENS_FILE), each call's bearer token is checked
  against the role its method needs (services.ops.auth.METHOD_ROLES) inside the accounting,
  so UNAUTHENTICATED / PERMISSION_DENIED are counted and logged like any other status.
- Wrapped handlers are built once per registered method and cached; paths that name no
  method are not cached, so unknown paths cannot grow memory.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from prometheus_client import Counter, Histogram

from services.errors import InvalidInput, status_of
from services.ops.auth import Authenticator, Role, required_role
from services.ops.calls import CURRENT, REQUEST_ID_KEY, Call, CallCounter
from services.ops.metrics import Metrics
from services.ops.tracing import Tracing

log = logging.getLogger(__name__)

# Expected client-side outcomes: logged at INFO; anything else at WARNING or ERROR.
_CLIENT_CODES = {
    "INVALID_ARGUMENT", "NOT_FOUND", "CANCELLED", "DEADLINE_EXCEEDED", "UNAUTHENTICATED",
    "PERMISSION_DENIED", "FAILED_PRECONDITION", "UNIMPLEMENTED",
}  # fmt: skip


class _Undecodable:
    """Stands in for a request message that failed to parse."""

    __slots__ = ()


UNDECODABLE = _Undecodable()


def _tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except (DecodeError, ValueError, TypeError):
            return UNDECODABLE

    return parse


def _undecodable() -> InvalidInput:
    return InvalidInput("the request message cannot be decoded (malformed protobuf)")


class _MethodMetrics:
    """What every call of one method needs, bound once: metric children and tracing."""

    def __init__(
        self,
        metrics: Metrics,
        grpc_type: str,
        service: str,
        method: str,
        tracing: Tracing | None,
        calls: CallCounter,
    ) -> None:
        self.method = f"{service}/{method}"
        self.tracing = tracing
        self.calls = calls
        self._labels = (grpc_type, service, method)
        self._handled_family = metrics.grpc_handled
        self.started: Counter = metrics.grpc_started.labels(*self._labels)
        self.handling: Histogram = metrics.grpc_handling.labels(*self._labels)
        self._handled: dict[str, Counter] = {}

    def handled(self, code: str) -> Counter:
        child = self._handled.get(code)
        if child is None:
            child = self._handled[code] = self._handled_family.labels(*self._labels, code)
        return child


class _Guard:
    """The token check of one method (its required role bound once)."""

    __slots__ = ("_auth", "_role")

    def __init__(self, auth: Authenticator, role: Role) -> None:
        self._auth = auth
        self._role = role

    def check(self, context: grpc.aio.ServicerContext) -> None:
        self._auth.check(context.invocation_metadata(), self._role)


class ErrorAndMetricsInterceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self,
        metrics: Metrics,
        auth: Authenticator | None = None,
        auth_health: bool = False,
        tracing: Tracing | None = None,
        calls: CallCounter | None = None,
    ) -> None:
        self._metrics = metrics
        self._tracing = tracing
        self.calls = calls or CallCounter()
        self._auth = auth
        self._auth_health = auth_health
        self._cache: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        cached = self._cache.get(method)
        if cached is not None:
            return cached
        handler = await continuation(handler_call_details)
        if handler is None:
            return None  # UNIMPLEMENTED from gRPC itself; nothing kept
        wrapped = self._cache[method] = self._wrap(method, handler)
        return wrapped

    def _wrap(self, full_method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        service, _, name = full_method.lstrip("/").rpartition("/")
        parse = _tolerant(handler.request_deserializer)
        guard = None
        if self._auth is not None:
            role = required_role(full_method, self._auth_health)
            guard = _Guard(self._auth, role) if role is not None else None
        if handler.unary_unary:
            m = _MethodMetrics(self._metrics, "unary", service, name, self._tracing, self.calls)
            return grpc.unary_unary_rpc_method_handler(
                _unary(handler.unary_unary, m, guard),
                request_deserializer=parse,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream and inspect.isasyncgenfunction(handler.stream_stream):
            m = _MethodMetrics(
                self._metrics, "bidi_stream", service, name, self._tracing, self.calls
            )
            return grpc.stream_stream_rpc_method_handler(
                _bidi(handler.stream_stream, m, guard),
                request_deserializer=parse,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream and inspect.isasyncgenfunction(handler.unary_stream):
            m = _MethodMetrics(
                self._metrics, "server_stream", service, name, self._tracing, self.calls
            )
            return grpc.unary_stream_rpc_method_handler(
                _server_stream(handler.unary_stream, m, guard),
                request_deserializer=parse,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream and guard is not None:  # health Watch under NNSERVE_AUTH_HEALTH
            m = _MethodMetrics(
                self._metrics, "server_stream", service, name, self._tracing, self.calls
            )
            return grpc.unary_stream_rpc_method_handler(
                _writing_stream(handler.unary_stream, m, guard),
                request_deserializer=parse,
                response_serializer=handler.response_serializer,
            )
        if guard is not None:  # fail closed: a method that needs a token is never unchecked
            raise RuntimeError(f"{full_method}: this handler kind cannot be token-checked")
        return handler  # library handlers written with context.write (health Watch)


class _Accounted:
    """Open the Call (request id, trace span), count it, turn exceptions into statuses,
    record code and duration, log failures with the request id.

    A plain class, not @asynccontextmanager: this runs on every RPC.
    """

    __slots__ = ("_call", "_context", "_m", "_start")

    def __init__(self, m: _MethodMetrics, context: grpc.aio.ServicerContext) -> None:
        self._m = m
        self._context = context
        self._start = 0.0

    async def __aenter__(self) -> None:
        self._m.started.inc()
        self._m.calls.started += 1
        self._start = time.perf_counter()
        tracing = self._m.tracing
        span = (
            tracing.start_call(self._m.method, self._context.invocation_metadata() or ())
            if tracing is not None
            else None
        )
        self._call = Call(self._context, span)
        CURRENT.set(self._call)  # each RPC runs in its own task: no reset needed

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, _tb: object
    ) -> bool:
        code = "OK"
        try:
            if exc is None:
                return False
            if isinstance(exc, grpc.aio.AbortError):  # a handler called context.abort
                aborted = self._context.code()
                code = aborted.name if isinstance(aborted, grpc.StatusCode) else "UNKNOWN"
                return False
            status, message = status_of(exc)
            code = status.name
            rid = self._call.request_id
            if status is grpc.StatusCode.INTERNAL:
                log.error("request %s %s: INTERNAL", rid, self._m.method, exc_info=exc)
            elif code not in _CLIENT_CODES:
                log.warning("request %s %s: %s: %s", rid, self._m.method, code, message)
            else:
                log.info("request %s %s: %s: %s", rid, self._m.method, code, message)
            if status is grpc.StatusCode.CANCELLED:
                return False  # the client went away: nobody to answer
            self._context.set_trailing_metadata(((REQUEST_ID_KEY, rid),))
            await self._context.abort(status, message)  # raises AbortError
            return False
        finally:
            self._m.handled(code).inc()
            self._m.handling.observe(time.perf_counter() - self._start)
            span = self._call.span
            if span is not None:
                span.set_attribute("nnserve.request_id", self._call.request_id)
                Tracing.end_call(span, code)


def _unary(
    inner: Callable[..., Awaitable[Any]], m: _MethodMetrics, guard: _Guard | None
) -> Callable[..., Awaitable[Any]]:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        async with _Accounted(m, context):
            if guard is not None:
                guard.check(context)
            if request is UNDECODABLE:
                raise _undecodable()
            return await inner(request, context)

    return handle


def _server_stream(
    inner: Callable[..., AsyncIterator[Any]], m: _MethodMetrics, guard: _Guard | None
) -> Callable[..., AsyncIterator[Any]]:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async with _Accounted(m, context):
            if guard is not None:
                guard.check(context)
            if request is UNDECODABLE:
                raise _undecodable()
            async for item in inner(request, context):
                yield item

    return handle


def _writing_stream(
    inner: Callable[..., Awaitable[None]], m: _MethodMetrics, guard: _Guard
) -> Callable[..., Awaitable[None]]:
    """A server stream written with context.write (health Watch), behind a token check."""

    async def handle(request: Any, context: grpc.aio.ServicerContext) -> None:
        async with _Accounted(m, context):
            guard.check(context)
            if request is UNDECODABLE:
                raise _undecodable()
            await inner(request, context)

    return handle


async def _checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """A request stream that ends the call with INVALID_ARGUMENT at an undecodable message."""
    async for request in requests:
        if request is UNDECODABLE:
            raise _undecodable()
        yield request


def _bidi(
    inner: Callable[..., AsyncIterator[Any]], m: _MethodMetrics, guard: _Guard | None
) -> Callable[..., AsyncIterator[Any]]:
    async def handle(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async with _Accounted(m, context):
            if guard is not None:
                guard.check(context)
            async for item in inner(_checked(requests), context):
                yield item

    return handle
