"""One server interceptor: ServingError -> its gRPC status, anything else -> INTERNAL with a
generic message (traceback logged), plus the standard grpc_server_* metrics.

Wrapped handlers are built once per method and cached: nothing per call but the call.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import Counter, Histogram

from services.errors import ServingError
from services.metrics import Metrics

log = logging.getLogger(__name__)


class _MethodMetrics:
    def __init__(self, metrics: Metrics, grpc_type: str, service: str, method: str) -> None:
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


def _aborted_code(context: grpc.aio.ServicerContext) -> str:
    """The status a handler aborted with (context.abort raises AbortError)."""
    code = context.code()
    return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"


class ErrorAndMetricsInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._cache: dict[str, grpc.RpcMethodHandler | None] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        if method in self._cache:
            return self._cache[method]
        handler = await continuation(handler_call_details)
        wrapped = self._wrap(method, handler) if handler is not None else None
        self._cache[method] = wrapped
        return wrapped

    def _wrap(self, full_method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        service, _, name = full_method.lstrip("/").rpartition("/")
        if handler.unary_unary:
            m = _MethodMetrics(self._metrics, "unary", service, name)
            return grpc.unary_unary_rpc_method_handler(
                _unary(handler.unary_unary, m),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream and inspect.isasyncgenfunction(handler.stream_stream):
            m = _MethodMetrics(self._metrics, "bidi_stream", service, name)
            return grpc.stream_stream_rpc_method_handler(
                _streaming(handler.stream_stream, m),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream and inspect.isasyncgenfunction(handler.unary_stream):
            m = _MethodMetrics(self._metrics, "server_stream", service, name)
            return grpc.unary_stream_rpc_method_handler(
                _streaming(handler.unary_stream, m),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # library handlers written with context.write (health Watch)


async def _abort_for(exc: BaseException, context: grpc.aio.ServicerContext) -> None:
    if isinstance(exc, ServingError):
        await context.abort(exc.code, exc.message)
    log.exception("unhandled error in handler", exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, "internal server error")


class _Accounted:
    """Count the call, turn exceptions into statuses, record code and duration.

    A plain class, not @asynccontextmanager: this runs on every RPC.
    """

    __slots__ = ("_context", "_m", "_start")

    def __init__(self, m: _MethodMetrics, context: grpc.aio.ServicerContext) -> None:
        self._m = m
        self._context = context
        self._start = 0.0

    async def __aenter__(self) -> None:
        self._m.started.inc()
        self._start = time.perf_counter()

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, _tb: object
    ) -> bool:
        code = "OK"
        try:
            if exc is None:
                return False
            if isinstance(exc, grpc.aio.AbortError):
                code = _aborted_code(self._context)
                return False
            if isinstance(exc, Exception):
                code = exc.code.name if isinstance(exc, ServingError) else "INTERNAL"
                await _abort_for(exc, self._context)  # raises AbortError
            code = "CANCELLED"  # cancelled by the client
            return False
        finally:
            self._m.handled(code).inc()
            self._m.handling.observe(time.perf_counter() - self._start)


def _unary(
    inner: Callable[..., Awaitable[Any]], m: _MethodMetrics
) -> Callable[..., Awaitable[Any]]:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        async with _Accounted(m, context):
            return await inner(request, context)

    return handle


def _streaming(
    inner: Callable[..., AsyncIterator[Any]], m: _MethodMetrics
) -> Callable[..., AsyncIterator[Any]]:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async with _Accounted(m, context):
            async for item in inner(request, context):
                yield item

    return handle
