"""The native front end (NNSERVE_FRONTEND=native): HTTP/2 and gRPC outside the GIL.

pygrpc-native's NativeGrpcFront owns the public port. Its tokio threads do the framing,
flow control and deadlines, and hand the unary inference calls (ModelInfer, Classify,
Sequence) to Python in batches: one receiver thread takes a batch and passes it to the
event loop in one hand-off, where every call of it is checked, decoded and queued on
its model's batcher before the batcher forms a batch (decode many, one batcher
hand-off); each answer is encoded and sent as its batch finishes. No coroutine, task or
ServicerContext is made per call.

Every other method (metadata, model control, statistics, health, reflection, every
stream) reaches the grpc.aio server behind it on a private Unix socket, with the same
interceptor as the aio front end. Both paths share the per-call accounting
(rpc/accounting.py), the token check, the data plane and the status rule, so a client
cannot tell which path served it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.protobuf.message import DecodeError
from pygrpc_native import EVENT_CANCEL, NativeGrpcFront

from services.batching.batcher import Batcher
from services.core.dataplane import DataPlane, Request, Tensors
from services.errors import DeadlineExpired, QueueFull, TooLarge
from services.ops.auth import Authenticator, Role, required_role
from services.ops.calls import CURRENT, REQUEST_ID_KEY, Call, CallCounter, Metadata
from services.ops.metrics import Metrics
from services.ops.tracing import Tracing
from services.rpc.accounting import MethodAccount, undecodable
from services.rpc.endpoints import UNARY_INFERENCE, InferenceMethod, Prepared
from services.settings import Settings

log = logging.getLogger(__name__)

MAX_EVENTS = 256  # calls taken from the front in one hand-off to the event loop
_RECEIVE_WAIT_MS = 200  # the receiver wakes this often to notice a stop


@dataclass(frozen=True, slots=True)
class _Method:
    endpoint: InferenceMethod
    account: MethodAccount
    role: Role | None  # the token role it needs (None: no token check)


class _Pending:
    """One call between its hand-off to the batcher and its answer."""

    __slots__ = ("account", "call", "call_id", "future", "prepared", "scope", "start")

    def __init__(
        self,
        call_id: int,
        account: MethodAccount,
        call: Call,
        start: float,
        scope: Request,
        prepared: Prepared,
        future: asyncio.Future[Tensors],
    ) -> None:
        self.future = future
        self.call_id = call_id
        self.account = account
        self.call = call
        self.start = start
        self.scope = scope
        self.prepared = prepared


class NativeFrontend:
    """The public port on NativeGrpcFront, with `fallback` (grpc.aio) behind it."""

    def __init__(
        self,
        settings: Settings,
        fallback: grpc.aio.Server,
        plane: DataPlane,
        metrics: Metrics,
        auth: Authenticator | None,
        tracing: Tracing | None,
        calls: CallCounter,
    ) -> None:
        self._settings = settings
        self._fallback = fallback
        self._plane = plane
        self._auth = auth
        self._max_message = settings.max_message_bytes
        self._max_calls = settings.max_concurrent_rpcs
        self._methods: dict[int, _Method] = {}
        self._accounts = {
            m.path: MethodAccount(metrics, "unary", m.path, tracing, calls) for m in UNARY_INFERENCE
        }
        self._pending: dict[int, _Pending] = {}
        self._front: NativeGrpcFront | None = None
        self._socket_dir: Path | None = None
        self._receiver: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = threading.Event()

    def bind(self, address: str) -> int:
        """Bind the public port (and the fallback's socket); returns the bound port."""
        s = self._settings
        options: dict[str, int | bool] = {
            "keepalive_time_ms": int(s.keepalive_seconds * 1000) or 7_200_000,
            "keepalive_timeout_ms": max(1, int(s.keepalive_timeout_seconds * 1000)),
            "keepalive_permit_without_calls": True,
            "reuse_port": s.workers > 1,
            "io_threads": s.native_io_threads,
        }
        if s.max_concurrent_streams > 0:
            options["max_concurrent_streams"] = s.max_concurrent_streams
        try:
            front = NativeGrpcFront(address, [], call_details=True, **options)  # type: ignore[arg-type]
        except OSError as exc:
            raise RuntimeError(f"cannot bind gRPC on {address}: {exc}") from None
        ids = front.add_methods([(m.path, False) for m in UNARY_INFERENCE])
        for method_id, endpoint in zip(ids, UNARY_INFERENCE, strict=True):
            role = None
            if self._auth is not None:
                role = required_role(endpoint.path, s.auth_health)
            self._methods[method_id] = _Method(endpoint, self._accounts[endpoint.path], role)
        self._socket_dir = Path(tempfile.mkdtemp(prefix="nnserve-fallback-"))
        socket = self._socket_dir / "grpc.sock"
        if self._fallback.add_insecure_port(f"unix:{socket}") == 0:
            raise RuntimeError("cannot bind the fallback gRPC server's Unix socket")
        front.set_fallback(str(socket))
        self._front = front
        return front.bound_port

    async def start(self) -> None:
        assert self._front is not None, "bind() first"
        self._loop = asyncio.get_running_loop()
        await self._fallback.start()
        self._front.start()
        self._receiver = threading.Thread(target=self._receive, name="native-front", daemon=True)
        self._receiver.start()

    async def stop(self, grace: float) -> None:
        """Stop the fallback (its calls, such as health Watch streams, get up to `grace`
        and see the last updates), then close the public port (GOAWAY)."""
        await self._fallback.stop(grace)
        if self._front is not None:
            self._front.close()
        self._closed.set()
        self._pending.clear()
        if self._receiver is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._receiver.join, 1.0)
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)

    async def wait_for_termination(self) -> None:
        await self._fallback.wait_for_termination()

    # ------------------------------------------------------------ receiving

    def _receive(self) -> None:
        """Receiver thread: batches of calls from the front to the event loop, one
        hand-off per batch (recv_batch waits without the GIL)."""
        front, loop = self._front, self._loop
        assert front is not None and loop is not None
        while not self._closed.is_set():
            try:
                events = front.recv_batch_details(MAX_EVENTS, _RECEIVE_WAIT_MS)
            except Exception:  # the front closed under us
                log.debug("native front receive ended", exc_info=True)
                return
            if events is None:
                return
            if events:
                try:
                    loop.call_soon_threadsafe(self._on_events, events)
                except RuntimeError:  # the loop closed during shutdown
                    return

    def _on_events(self, events: Sequence[tuple]) -> None:  # type: ignore[type-arg]
        """Event loop: admit, decode and queue every call of a batch, then start batches."""
        touched: set[Batcher] = set()
        for kind, call_id, method_id, payload, _key, details in events:
            if kind == EVENT_CANCEL:
                self._cancel(call_id)
                continue
            batcher = self._begin(call_id, self._methods[method_id], payload, details)
            if batcher is not None:
                touched.add(batcher)
        for batcher in touched:
            batcher.dispatch()

    def _begin(
        self,
        call_id: int,
        method: _Method,
        payload: bytes,
        details: tuple[Metadata, str, float | None],
    ) -> Batcher | None:
        """Queue one call on its batcher (returned), or answer it with its error."""
        start = time.perf_counter()
        metadata, _peer, remaining = details
        account = method.account
        call = account.open(metadata)
        scope: Request | None = None
        try:
            if len(payload) > self._max_message:
                raise TooLarge(
                    f"request message is {len(payload)} bytes; at most {self._max_message} "
                    "(max_message_bytes)"
                )
            if len(self._pending) >= self._max_calls:
                raise QueueFull(
                    f"Concurrent RPC limit exceeded: {self._max_calls} calls running "
                    "(max_concurrent_rpcs); retry later"
                )
            if method.role is not None:
                assert self._auth is not None
                self._auth.check(metadata, method.role)
            endpoint = method.endpoint
            try:
                request = endpoint.request_type.FromString(payload)
            except (DecodeError, ValueError, TypeError):
                raise undecodable() from None
            deadline = None if remaining is None else time.monotonic() + remaining
            scope = self._plane.request(
                endpoint.name,
                request.model_name,  # type: ignore[attr-defined]
                request.model_version,  # type: ignore[attr-defined]
                deadline,
            ).enter()
            scope.call = call
            prepared = endpoint.prepare(request, scope.model)
            future = scope.submit(prepared.inputs, prepared.graph, dispatch=False)
        except Exception as exc:
            if scope is not None:
                scope.exit(exc)
            self._fail(call_id, account, call, start, exc)
            return None
        pending = _Pending(call_id, account, call, start, scope, prepared, future)
        self._pending[call_id] = pending
        future.add_done_callback(lambda done: self._answer(pending, done))
        return prepared.graph or scope.model.batcher

    def _cancel(self, call_id: int) -> None:
        """The client cancelled or its deadline passed: drop the call if still queued."""
        pending = self._pending.get(call_id)
        if pending is not None:
            # The batcher skips a cancelled request; the future's callback accounts for it.
            pending.future.cancel()

    def _answer(self, pending: _Pending, future: asyncio.Future[Tensors]) -> None:
        """Event loop, as the call's batch finishes: encode and send, or fail."""
        if self._pending.pop(pending.call_id, None) is None:
            return  # stopped meanwhile
        scope = pending.scope
        try:
            if future.cancelled():
                if scope.expired():
                    raise DeadlineExpired("deadline exceeded")
                raise asyncio.CancelledError()
            error = future.exception()
            if error is not None:
                raise error
            scope.inferred()
            data = pending.prepared.encode(future.result()).SerializeToString()
            if len(data) > self._max_message:
                raise TooLarge(
                    f"response message is {len(data)} bytes; at most {self._max_message} "
                    "(max_message_bytes)"
                )
        except (Exception, asyncio.CancelledError) as exc:
            scope.exit(exc)
            self._fail(pending.call_id, pending.account, pending.call, pending.start, exc)
            return
        scope.exit(None)
        front = self._front
        assert front is not None
        front.respond(pending.call_id, data)
        pending.account.close(pending.call, "OK", pending.start)

    def _fail(
        self, call_id: int, account: MethodAccount, call: Call, start: float, exc: BaseException
    ) -> None:
        token = CURRENT.set(call)  # the JSON log line carries the request id
        try:
            status, message = account.failed(call, exc)
        finally:
            CURRENT.reset(token)
        front = self._front
        assert front is not None
        if status is not grpc.StatusCode.CANCELLED:
            with contextlib.suppress(Exception):  # the call may be gone already
                front.fail(call_id, status.value[0], message, [(REQUEST_ID_KEY, call.request_id)])
        account.close(call, status.name, start)
