"""The grpc.aio server's one interceptor: every RPC it serves is accounted
(services/rpc/accounting.py), token-checked and decoded tolerantly.

- A message that cannot be decoded is INVALID_ARGUMENT (never UNKNOWN/INTERNAL), on unary
  calls and streams alike, and ends a stream instead of leaving it open.
- With an Authenticator (NNSERVE_TOKENS_FILE), each call's bearer token is checked
  against the role its method needs (services.ops.auth.METHOD_ROLES) inside the
  accounting, so UNAUTHENTICATED / PERMISSION_DENIED are counted and logged like any other
  status.
- A failed call answers with its request id as trailing metadata.
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

from services.ops.auth import Authenticator, Role, required_role
from services.ops.calls import CURRENT, REQUEST_ID_KEY, CallCounter
from services.ops.metrics import Metrics
from services.ops.tracing import Tracing
from services.rpc.accounting import MethodAccount, undecodable

log = logging.getLogger(__name__)


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


class _Guard:
    """The token check of one method (its required role bound once)."""

    __slots__ = ("_auth", "_role")

    def __init__(self, auth: Authenticator, role: Role) -> None:
        self._auth = auth
        self._role = role

    def check(self, context: grpc.aio.ServicerContext) -> None:
        self._auth.check(context.invocation_metadata(), self._role)


class AccountingInterceptor(grpc.aio.ServerInterceptor):
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
        parse = _tolerant(handler.request_deserializer)
        guard = None
        if self._auth is not None:
            role = required_role(full_method, self._auth_health)
            guard = _Guard(self._auth, role) if role is not None else None
        if handler.unary_unary:
            m = MethodAccount(self._metrics, "unary", full_method, self._tracing, self.calls)
            return grpc.unary_unary_rpc_method_handler(
                _unary(handler.unary_unary, m, guard),
                request_deserializer=parse,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream and inspect.isasyncgenfunction(handler.stream_stream):
            m = MethodAccount(self._metrics, "bidi_stream", full_method, self._tracing, self.calls)
            return grpc.stream_stream_rpc_method_handler(
                _bidi(handler.stream_stream, m, guard),
                request_deserializer=parse,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream and inspect.isasyncgenfunction(handler.unary_stream):
            m = MethodAccount(
                self._metrics, "server_stream", full_method, self._tracing, self.calls
            )
            return grpc.unary_stream_rpc_method_handler(
                _server_stream(handler.unary_stream, m, guard),
                request_deserializer=parse,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:  # written with context.write (health Watch)
            m = MethodAccount(
                self._metrics, "server_stream", full_method, self._tracing, self.calls
            )
            return grpc.unary_stream_rpc_method_handler(
                _writing_stream(handler.unary_stream, m, guard),
                request_deserializer=parse,
                response_serializer=handler.response_serializer,
            )
        if guard is not None:  # fail closed: a method that needs a token is never unchecked
            raise RuntimeError(f"{full_method}: this handler kind cannot be token-checked")
        return handler


class _Accounted:
    """Open the call's accounting, turn exceptions into statuses (with the request id as
    trailing metadata), record the outcome. A plain class: this runs on every RPC."""

    __slots__ = ("_call", "_context", "_m", "_start")

    def __init__(self, m: MethodAccount, context: grpc.aio.ServicerContext) -> None:
        self._m = m
        self._context = context
        self._start = 0.0

    async def __aenter__(self) -> None:
        self._start = time.perf_counter()
        self._call = self._m.open(self._context.invocation_metadata())
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
            status, message = self._m.failed(self._call, exc)
            code = status.name
            if status is grpc.StatusCode.CANCELLED:
                return False  # the client went away: nobody to answer
            self._context.set_trailing_metadata(((REQUEST_ID_KEY, self._call.request_id),))
            await self._context.abort(status, message)  # raises AbortError
            return False
        finally:
            self._m.close(self._call, code, self._start)


def _unary(
    inner: Callable[..., Awaitable[Any]], m: MethodAccount, guard: _Guard | None
) -> Callable[..., Awaitable[Any]]:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        async with _Accounted(m, context):
            if guard is not None:
                guard.check(context)
            if request is UNDECODABLE:
                raise undecodable()
            return await inner(request, context)

    return handle


def _server_stream(
    inner: Callable[..., AsyncIterator[Any]], m: MethodAccount, guard: _Guard | None
) -> Callable[..., AsyncIterator[Any]]:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async with _Accounted(m, context):
            if guard is not None:
                guard.check(context)
            if request is UNDECODABLE:
                raise undecodable()
            async for item in inner(request, context):
                yield item

    return handle


def _writing_stream(
    inner: Callable[..., Awaitable[None]], m: MethodAccount, guard: _Guard | None
) -> Callable[..., Awaitable[None]]:
    """A server stream written with context.write (health Watch)."""

    async def handle(request: Any, context: grpc.aio.ServicerContext) -> None:
        async with _Accounted(m, context):
            if guard is not None:
                guard.check(context)
            if request is UNDECODABLE:
                raise undecodable()
            await inner(request, context)

    return handle


async def _checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """A request stream that ends the call with INVALID_ARGUMENT at an undecodable message."""
    async for request in requests:
        if request is UNDECODABLE:
            raise undecodable()
        yield request


def _bidi(
    inner: Callable[..., AsyncIterator[Any]], m: MethodAccount, guard: _Guard | None
) -> Callable[..., AsyncIterator[Any]]:
    async def handle(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async with _Accounted(m, context):
            if guard is not None:
                guard.check(context)
            async for item in inner(_checked(requests), context):
                yield item

    return handle
