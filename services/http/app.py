"""The KServe v2 REST API (the Open Inference Protocol's HTTP binding) as a Starlette app.

Routes (docs/protocol.md "REST"): health, server and model metadata, model readiness and
inference, each the twin of a KServe v2 gRPC method: the same data plane (admission,
bounds, batching, nnserve_requests_total), the same token roles (METHOD_ROLES of that
method), the same status rule (errors.status_of), then HTTP_STATUS below. Errors answer
{"error": message} with the message the gRPC status would carry (bounded, client
strings cut by `shown`).

Request bodies are bounded before they are read: a Content-Length over
max_message_bytes is refused with 413 before a byte of the body is read (and the
connection closed, so the rest is never read either), a body without one is counted as
it arrives; body bytes held by all requests at once are bounded by max_inflight_bytes
(429). JSON is parsed and turned into arrays without yielding the event loop, so one
parsed body (several times its size as Python objects) exists at a time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import grpc
from prometheus_client import Counter, Histogram
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services import __version__
from services.core.dataplane import DataPlane
from services.core.model_control import ModelControl
from services.core.readiness import Readiness
from services.core.registry import ModelRegistry
from services.errors import (
    DeadlineExpired,
    QueueFull,
    ServingError,
    shown,
    status_of,
)
from services.http import codec
from services.ops.auth import AUTHORIZATION, Authenticator, required_role
from services.ops.calls import CURRENT, REQUEST_ID_KEY, Call
from services.ops.metrics import Metrics

log = logging.getLogger(__name__)

KSERVE = "inference.GRPCInferenceService"
REST_INFER = "RestInfer"  # the method label of REST inference in nnserve_requests_total
# Triton's binary tensor data (codec.py) and model repository (index, load, unload).
EXTENSIONS = ["binary_tensor_data", "model_repository"]
BODY_TIMEOUT_S = 30.0  # a request body must arrive within this (408 otherwise)
UNMATCHED = "unmatched"  # the route label of paths no route serves
CLIENT_CLOSED = 499  # nginx's code for "the client went away": only ever a metric label
# Headers a Call reads (request id, token, trace context); others never reach it.
_CALL_HEADERS = frozenset({AUTHORIZATION, REQUEST_ID_KEY, "traceparent", "tracestate"})

# The gRPC status of a failure -> its HTTP status (docs/protocol.md "REST").
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    # Overload: retry later, here or elsewhere (Retry-After); 503 means not ready/draining.
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: CLIENT_CLOSED,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
# Expected client-side outcomes: logged at INFO; anything else at WARNING or ERROR.
_CLIENT_STATUSES = frozenset({400, 401, 403, 404, 408, 413, 415, CLIENT_CLOSED, 504})


class BodyTooLarge(ServingError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED  # as gRPC refuses a message over the limit
    http_status = 413


class BodyTimeout(ServingError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    http_status = 408


class UnsupportedEncoding(ServingError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 415


def http_status(exc: BaseException) -> tuple[int, str]:
    """The HTTP status and client message of a failure: errors.status_of, then the table."""
    code, message = status_of(exc)
    return getattr(exc, "http_status", None) or HTTP_STATUS.get(code, 500), message


class RequestAccounting:
    """ASGI middleware: nnserve_http_requests_total and the duration histogram, for every
    request, labelled by route template (bounded) and the status actually sent."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self._requests = metrics.http_requests
        self._duration = metrics.http_request_duration
        self._children: dict[tuple[str, int], tuple[Counter, Histogram]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # an exception escaped before any response: uvicorn answers 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", UNMATCHED) if route is not None else UNMATCHED
            children = self._children.get((label, status))
            if children is None:
                children = (
                    self._requests.labels(label, str(status)),
                    self._duration.labels(label),
                )
                self._children[(label, status)] = children
            children[0].inc()
            children[1].observe(time.perf_counter() - start)


class RestApi:
    """The REST routes over one server's data plane, registry, readiness and tokens."""

    def __init__(
        self,
        plane: DataPlane,
        registry: ModelRegistry,
        readiness: Readiness,
        metrics: Metrics,
        control: ModelControl,
        *,
        auth: Authenticator | None,
        auth_health: bool,
        max_body_bytes: int,
        max_inflight_body_bytes: int,
    ) -> None:
        self._plane = plane
        self._registry = registry
        self._readiness = readiness
        self._metrics = metrics
        self._control = control  # the only way in to state-changing requests
        self._auth = auth
        self._auth_health = auth_health
        self._max_body = max_body_bytes
        self._max_inflight_body = max_inflight_body_bytes
        self.body_bytes = 0  # request body bytes held by requests now, all connections

    def app(self) -> Starlette:
        model = "/v2/models/{name}"
        version = "/v2/models/{name}/versions/{version}"
        routes = [
            self._route("/v2/health/live", "ServerLive", self._live),
            self._route("/v2/health/ready", "ServerReady", self._ready),
            self._route("/v2", "ServerMetadata", self._server_metadata),
        ]
        for base in (model, version):
            routes += [
                self._route(base, "ModelMetadata", self._model_metadata),
                self._route(f"{base}/ready", "ModelReady", self._model_ready),
                self._route(f"{base}/infer", "ModelInfer", self._infer, methods=["POST"]),
            ]
        repository = "/v2/repository/models/{name}"
        routes += [
            self._route("/v2/repository/index", "RepositoryIndex", self._index, ["POST"]),
            self._route(f"{repository}/load", "RepositoryModelLoad", self._load, ["POST"]),
            self._route(f"{repository}/unload", "RepositoryModelUnload", self._unload, ["POST"]),
        ]
        return Starlette(
            routes=routes,
            middleware=[Middleware(RequestAccounting, metrics=self._metrics)],
            exception_handlers={HTTPException: _routing_error},
        )

    # ------------------------------------------------------------- plumbing

    def _route(
        self,
        path: str,
        method: str,
        handler: Callable[[Request], Awaitable[Response]],
        methods: list[str] | None = None,
    ) -> Route:
        """A route whose calls are token-checked with the role of the gRPC twin `method`,
        run with a Call (request id, logs) and answer every failure as {"error": ...}."""
        auth = self._auth
        role = required_role(f"/{KSERVE}/{method}", self._auth_health) if auth else None

        async def endpoint(request: Request) -> Response:
            call = Call([(k, v) for k, v in request.headers.items() if k in _CALL_HEADERS])
            token = CURRENT.set(call)
            try:
                if auth is not None and role is not None:
                    auth.check(call.metadata, role)
                return await handler(request)
            except (Exception, ClientDisconnect) as exc:  # CancelledError passes: shutdown
                return _failure(request, call, method, exc)
            finally:
                CURRENT.reset(token)

        return Route(path, endpoint, methods=methods or ["GET"])

    @asynccontextmanager
    async def _body(self, request: Request) -> AsyncIterator[bytes]:
        """The request body, read within the bounds; its bytes count against
        max_inflight_bytes until the request is answered."""
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding != "identity":
            raise UnsupportedEncoding(
                f"Content-Encoding {shown(encoding, 24)} is not supported; send the body "
                "uncompressed"
            )
        length = request.headers.get("content-length")
        if length is not None and int(length) > self._max_body:  # h11 checked its form
            raise BodyTooLarge(
                f"request body of {int(length)} bytes is over the {self._max_body} byte limit "
                "(max_message_bytes)"
            )
        held = 0
        try:
            chunks: list[bytes] = []
            try:
                async with asyncio.timeout(BODY_TIMEOUT_S):
                    async for chunk in request.stream():
                        held += len(chunk)
                        self.body_bytes += len(chunk)
                        if held > self._max_body:
                            raise BodyTooLarge(
                                f"request body is over the {self._max_body} byte limit "
                                "(max_message_bytes)"
                            )
                        if self.body_bytes > self._max_inflight_body:
                            raise QueueFull(
                                "request bodies in flight are at the max_inflight_bytes "
                                "bound; retry later"
                            )
                        chunks.append(chunk)
            except TimeoutError:
                raise BodyTimeout(
                    f"request body did not arrive within {BODY_TIMEOUT_S:g} s"
                ) from None
            request.state.body_read = True
            yield b"".join(chunks)
        finally:
            self.body_bytes -= held

    # ------------------------------------------------------------- health, metadata

    async def _live(self, request: Request) -> Response:
        return JSONResponse({"live": True})

    async def _ready(self, request: Request) -> Response:
        ready = self._readiness.server_ready()
        return JSONResponse({"ready": ready}, 200 if ready else 503)

    async def _server_metadata(self, request: Request) -> Response:
        return JSONResponse({"name": "nnserve", "version": __version__, "extensions": EXTENSIONS})

    async def _model_metadata(self, request: Request) -> Response:
        name, version = _model(request)
        model = self._readiness.describe(name, version).loaded()
        versions = sorted(self._registry.versions(name))
        return JSONResponse(codec.model_metadata(model.spec, versions))

    async def _model_ready(self, request: Request) -> Response:
        name, version = _model(request)
        ready = self._readiness.model_ready(name, version)  # NOT_FOUND when unknown
        return JSONResponse({"name": name, "ready": ready}, 200 if ready else 503)

    # ------------------------------------------------------------- repository

    async def _index(self, request: Request) -> Response:
        async with self._body(request) as body:
            only_ready = codec.flag(codec.parse_object(body), "ready", "index request")
        return JSONResponse(
            [
                {"name": mv.name, "version": str(mv.version), "state": mv.state.value,
                 "reason": mv.reason}
                for mv in self._registry.all_versions()
                if mv.ready or not only_ready
            ]
        )  # fmt: skip

    async def _load(self, request: Request) -> Response:
        async with self._body(request) as body:
            params = codec.parameters(codec.parse_object(body), "load request")
        await self._control.load(request.path_params["name"], params)
        return Response(status_code=200)

    async def _unload(self, request: Request) -> Response:
        async with self._body(request) as body:
            # unload_dependents (Triton's) is accepted: nnserve models have no dependents.
            codec.flag(codec.parameters(codec.parse_object(body), "unload request"),
                       "unload_dependents", "unload request")  # fmt: skip
        await self._control.unload(request.path_params["name"])
        return Response(status_code=200)

    # ------------------------------------------------------------- inference

    async def _infer(self, request: Request) -> Response:
        arrived = time.monotonic()
        name, version = _model(request)
        async with self._body(request) as body:
            parsed = codec.parse_infer_request(body, request.headers.get(codec.HEADER_LENGTH))
            deadline = None if parsed.timeout_s is None else arrived + parsed.timeout_s
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                # No await runs between the parse above and `del parsed`: the JSON values
                # become arrays before another request can parse its body.
                async with (
                    asyncio.timeout(remaining),
                    self._plane.request(REST_INFER, name, version, deadline) as scope,
                ):
                    spec = scope.model.spec
                    wanted = codec.requested_outputs(parsed, spec)
                    inputs = codec.decode_inputs(parsed, spec, scope.model.config.max_batch_size)
                    request_id = parsed.id
                    del parsed
                    outputs = await scope.infer(inputs)
                    content, json_length = codec.encode_infer_response(
                        request_id, spec, outputs, wanted
                    )
            except TimeoutError:
                raise DeadlineExpired("deadline exceeded (parameters.timeout)") from None
        if json_length is None:
            return Response(content, media_type="application/json")
        return Response(
            content,
            media_type="application/octet-stream",
            headers={codec.HEADER_LENGTH: str(json_length)},
        )


def _model(request: Request) -> tuple[str, str]:
    params = request.path_params
    return params["name"], params.get("version", "")


def _failure(request: Request, call: Call, method: str, exc: BaseException) -> Response:
    """The {"error": ...} answer to a failed request, logged once with its request id."""
    if isinstance(exc, ClientDisconnect):
        status, message = CLIENT_CLOSED, "the client closed the connection"
    else:
        status, message = http_status(exc)
    rid = call.request_id
    if status == 500:
        log.error("request %s REST %s: 500", rid, method, exc_info=exc)
    elif status in _CLIENT_STATUSES:
        log.info("request %s REST %s: %d: %s", rid, method, status, message)
    else:
        log.warning("request %s REST %s: %d: %s", rid, method, status, message)
    headers = {REQUEST_ID_KEY: rid}
    if status == 401:
        headers["www-authenticate"] = "Bearer"
    elif status == 429:
        headers["retry-after"] = "1"
    if _body_unread(request):
        # Answered before the body was read: close rather than read the rest of it.
        headers["connection"] = "close"
    return JSONResponse({"error": message}, status, headers)


def _body_unread(request: Request) -> bool:
    if getattr(request.state, "body_read", False):
        return False
    headers = request.headers
    return headers.get("content-length", "0") != "0" or "transfer-encoding" in headers


async def _routing_error(request: Request, exc: Exception) -> Response:
    """404 for a path no route serves, 405 for a method a route does not take."""
    assert isinstance(exc, HTTPException)
    message = {404: "no such route; see docs/protocol.md (REST)"}.get(exc.status_code, exc.detail)
    headers = dict(exc.headers or {})
    if _body_unread(request):
        headers["connection"] = "close"
    return JSONResponse({"error": message}, exc.status_code, headers)
