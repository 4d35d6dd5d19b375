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
- Compressed request messages are inflated here, bounded by max_message_bytes
  (services/rpc/inflate.py; gRPC core's own decompression is off).
- max_concurrent_rpcs is enforced here rather than by grpc.aio, so a refused call is
  accounted and logged like any other (grpc.aio refuses before any handler runs).
- Calls that gRPC routes to a method but ends before its handler runs (metadata over
  core's hard limit, a message over max_message_bytes, a client gone first) are counted
  in nnserve_refusals_total{reason="ended_before_handler"}, with a throttled log line.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from prometheus_client import Counter

from services.errors import QueueFull, ServingError, TooLarge, shown
from services.ops.auth import Authenticator, Role, required_role
from services.ops.calls import CURRENT, REQUEST_ID_KEY, Call, CallCounter
from services.ops.logs import Throttled
from services.ops.metrics import Metrics
from services.ops.tracing import Tracing
from services.rpc.accounting import MethodAccount, undecodable
from services.rpc.inflate import inflated

log = logging.getLogger(__name__)

UNLIMITED = 2**31 - 1


class Refused:
    """Stands in for a request message that cannot be used (undecodable, or a
    compressed message over the bound): the handler raises `error()`.

    It keeps the error's class and message, not the exception: an exception kept here
    and raised in the handler would reach its own traceback (handler frame -> request ->
    exception -> traceback -> handler frame), a cycle that only the garbage collector
    frees, holding the frames of the refused inflation meanwhile."""

    __slots__ = ("_kind", "_message")

    def __init__(self, error: ServingError) -> None:
        self._kind = type(error)
        self._message = error.message

    def error(self) -> ServingError:
        return self._kind(self._message)


def _tolerant(
    deserialize: Callable[[bytes], Any] | None, limit: int, refusals: Counter
) -> Callable[[bytes], Any]:
    too_large = refusals.labels("inflated_too_large")
    malformed = refusals.labels("malformed_compression")

    def parse(data: bytes) -> Any:
        try:
            data = inflated(data, limit)
        except ServingError as exc:
            (too_large if isinstance(exc, TooLarge) else malformed).inc()
            return Refused(exc)
        if deserialize is None:
            return data
        try:
            return deserialize(data)
        except (DecodeError, ValueError, TypeError):
            return Refused(undecodable())

    return parse


class _Guard:
    """The token check of one method (its required role bound once)."""

    __slots__ = ("_auth", "_role")

    def __init__(self, auth: Authenticator, role: Role) -> None:
        self._auth = auth
        self._role = role

    def check(self, context: grpc.aio.ServicerContext, call: Call) -> None:
        call.principal = self._auth.check(context.invocation_metadata(), self._role).name


class _Gate:
    """max_concurrent_rpcs: calls running at once on this server (grpc.aio would refuse
    them before any handler ran, out of sight of the accounting)."""

    __slots__ = ("_refused", "active", "limit", "unary")

    def __init__(self, limit: int, refusals: Counter) -> None:
        self.active = 0
        self.unary = 0  # of which unary calls (a drain waits for them, not for streams)
        self.limit = limit
        self._refused = refusals.labels("max_concurrent_rpcs")

    def refusal(self) -> QueueFull:
        self._refused.inc()
        return QueueFull(
            f"Concurrent RPC limit exceeded: {self.limit} calls running "
            "(max_concurrent_rpcs); retry later"
        )


class _Probe:
    """One call between routing and its handler: if the call's task ends before the
    handler ran, gRPC ended it (the server never sees why)."""

    __slots__ = ("_owner", "handled")

    def __init__(self, owner: AccountingInterceptor) -> None:
        self.handled = False
        self._owner = owner

    def ended(self, _task: object) -> None:
        if not self.handled:
            self._owner.ended_before_handler()


_PROBE: ContextVar[_Probe | None] = ContextVar("nnserve_probe", default=None)


class AccountingInterceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self,
        metrics: Metrics,
        auth: Authenticator | None = None,
        auth_health: bool = False,
        tracing: Tracing | None = None,
        calls: CallCounter | None = None,
        *,
        max_message_bytes: int = UNLIMITED,
        max_concurrent_rpcs: int = UNLIMITED,
    ) -> None:
        self._metrics = metrics
        self._tracing = tracing
        self.calls = calls or CallCounter()
        self._auth = auth
        self._auth_health = auth_health
        self._max_message = max_message_bytes
        self._cache: dict[str, grpc.RpcMethodHandler] = {}
        self.gate = _Gate(max_concurrent_rpcs, metrics.refusals)
        self._unknown = metrics.refusals.labels("unknown_method")
        self._unknown_log = Throttled(log, logging.INFO)
        self._dropped = metrics.refusals.labels("ended_before_handler")
        self._dropped_log = Throttled(log, logging.INFO)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        cached = self._cache.get(method)
        if cached is None:
            handler = await continuation(handler_call_details)
            if handler is None:  # UNIMPLEMENTED from gRPC itself; nothing kept
                self._unknown.inc()
                self._unknown_log.log("call to unknown method %s: UNIMPLEMENTED", shown(method))
                return None
            cached = self._cache[method] = self._wrap(method, handler)
        # Every call runs routing and its handler in one task (grpc.aio's _handle_rpc).
        task = asyncio.current_task()
        if task is not None:
            probe = _Probe(self)
            _PROBE.set(probe)
            task.add_done_callback(probe.ended)
        return cached

    def ended_before_handler(self) -> None:
        self._dropped.inc()
        self._dropped_log.log(
            "a call ended before its handler ran: gRPC refused it (metadata over its hard "
            "limit, a message over max_message_bytes) or the client went first "
            '(nnserve_refusals_total{reason="ended_before_handler"})'
        )

    def _wrap(self, full_method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        parse = _tolerant(handler.request_deserializer, self._max_message, self._metrics.refusals)
        guard = None
        if self._auth is not None:
            role = required_role(full_method, self._auth_health)
            guard = _Guard(self._auth, role) if role is not None else None
        gate = self.gate
        if handler.unary_unary:
            m = MethodAccount(self._metrics, "unary", full_method, self._tracing, self.calls)
            return grpc.unary_unary_rpc_method_handler(
                _unary(handler.unary_unary, m, guard, gate),
                request_deserializer=parse,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream and inspect.isasyncgenfunction(handler.stream_stream):
            m = MethodAccount(self._metrics, "bidi_stream", full_method, self._tracing, self.calls)
            return grpc.stream_stream_rpc_method_handler(
                _bidi(handler.stream_stream, m, guard, gate),
                request_deserializer=parse,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream and inspect.isasyncgenfunction(handler.unary_stream):
            m = MethodAccount(
                self._metrics, "server_stream", full_method, self._tracing, self.calls
            )
            return grpc.unary_stream_rpc_method_handler(
                _server_stream(handler.unary_stream, m, guard, gate),
                request_deserializer=parse,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:  # written with context.write (health Watch)
            m = MethodAccount(
                self._metrics, "server_stream", full_method, self._tracing, self.calls
            )
            return grpc.unary_stream_rpc_method_handler(
                _writing_stream(handler.unary_stream, m, guard, gate),
                request_deserializer=parse,
                response_serializer=handler.response_serializer,
            )
        if guard is not None:  # fail closed: a method that needs a token is never unchecked
            raise RuntimeError(f"{full_method}: this handler kind cannot be token-checked")
        # Unaccounted kinds still get the bounded decompression (core's is off).
        return handler._replace(request_deserializer=parse)  # type: ignore[attr-defined, no-any-return]


class _Accounted:
    """Open the call's accounting, turn exceptions into statuses (with the request id as
    trailing metadata), record the outcome. A plain class: this runs on every RPC."""

    __slots__ = ("_admitted", "_call", "_context", "_gate", "_m", "_start", "_unary")

    def __init__(
        self,
        m: MethodAccount,
        context: grpc.aio.ServicerContext,
        gate: _Gate,
        unary: bool = False,
    ) -> None:
        self._m = m
        self._context = context
        self._gate = gate
        self._unary = unary
        self._start = 0.0
        self._admitted = False

    async def __aenter__(self) -> Call:
        self._start = time.perf_counter()
        probe = _PROBE.get()
        if probe is not None:
            probe.handled = True
        self._call = self._m.open(self._context.invocation_metadata())
        CURRENT.set(self._call)  # each RPC runs in its own task: no reset needed
        gate = self._gate
        if gate.active < gate.limit:
            gate.active += 1
            gate.unary += self._unary
            self._admitted = True
        return self._call

    def check(self, guard: _Guard | None, request: Any = None) -> None:
        """Inside the accounting, before the handler: refuse a call beyond
        max_concurrent_rpcs, check its token, refuse a message that cannot be used."""
        if not self._admitted:
            raise self._gate.refusal()
        if guard is not None:
            guard.check(self._context, self._call)
        if type(request) is Refused:
            raise request.error()

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, _tb: object
    ) -> bool:
        code = "OK"
        if self._admitted:
            self._gate.active -= 1
            self._gate.unary -= self._unary
            self._admitted = False
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
            if _deadline_passed(self._context):
                # The client has given up (its own DEADLINE_EXCEEDED) and gRPC core cancels
                # the call: a status sent now fails, and grpcio 1.81's aio server leaks the
                # failed batch's op array each time (grpc/grpc#43360). End it unanswered.
                raise asyncio.CancelledError
            self._context.set_trailing_metadata(((REQUEST_ID_KEY, self._call.request_id),))
            await self._context.abort(status, message)  # raises AbortError
            return False
        finally:
            self._m.close(self._call, code, self._start)


def _deadline_passed(context: grpc.aio.ServicerContext) -> bool:
    remaining = context.time_remaining()
    return remaining is not None and remaining <= 0


def _unary(
    inner: Callable[..., Awaitable[Any]], m: MethodAccount, guard: _Guard | None, gate: _Gate
) -> Callable[..., Awaitable[Any]]:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        accounted = _Accounted(m, context, gate, unary=True)
        async with accounted:
            accounted.check(guard, request)
            return await inner(request, context)

    return handle


def _server_stream(
    inner: Callable[..., AsyncIterator[Any]], m: MethodAccount, guard: _Guard | None, gate: _Gate
) -> Callable[..., AsyncIterator[Any]]:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        accounted = _Accounted(m, context, gate)
        async with accounted:
            accounted.check(guard, request)
            async for item in inner(request, context):
                yield item

    return handle


def _writing_stream(
    inner: Callable[..., Awaitable[None]], m: MethodAccount, guard: _Guard | None, gate: _Gate
) -> Callable[..., Awaitable[None]]:
    """A server stream written with context.write (health Watch)."""

    async def handle(request: Any, context: grpc.aio.ServicerContext) -> None:
        accounted = _Accounted(m, context, gate)
        async with accounted:
            accounted.check(guard, request)
            await inner(request, context)

    return handle


async def _checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """A request stream that ends the call with its error at a message that cannot be
    used (INVALID_ARGUMENT when undecodable, RESOURCE_EXHAUSTED for a bomb)."""
    async for request in requests:
        if type(request) is Refused:
            raise request.error()
        yield request


def _bidi(
    inner: Callable[..., AsyncIterator[Any]], m: MethodAccount, guard: _Guard | None, gate: _Gate
) -> Callable[..., AsyncIterator[Any]]:
    async def handle(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        accounted = _Accounted(m, context, gate)
        async with accounted:
            accounted.check(guard)
            async for item in inner(_checked(requests), context):
                yield item

    return handle
