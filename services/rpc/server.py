"""Assemble one gRPC server: registry, batchers, both APIs, health, reflection, metrics,
and the KServe v2 REST port (services/http/) on the same data plane.

Start order: bind and serve with health NOT_SERVING, load models (session, goldens,
warm-up), then SERVING. Stop order: NOT_SERVING (REST ready: 503), refuse new requests
(gRPC UNAVAILABLE, REST 503), GOAWAY (aio: as soon as gRPC allows it without cancelling
calls), let queued and running ones finish (up to the grace period), end open gRPC
streams, stop both ports.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from opentelemetry.sdk.trace.export import SpanExporter

from protos import grpc_service_pb2_grpc, nnserve_pb2_grpc
from services.batching.threads import InferenceThreads
from services.core.dataplane import DataPlane, Limits
from services.core.drift import DriftExporter
from services.core.model_control import ModelControl
from services.core.readiness import Readiness, ServerState
from services.core.registry import ModelRegistry, ModelVersion
from services.core.sessions import SessionStore, cancel
from services.http.app import RestApi
from services.http.server import HttpServer
from services.ops.auth import Authenticator
from services.ops.calls import CallCounter
from services.ops.metrics import Metrics, exposition_registry, serve_metrics
from services.ops.tls import CertificateReloader, server_credentials
from services.ops.tracing import Tracing
from services.rpc.domain import PredictorServicer
from services.rpc.endpoints import KSERVE, PREDICTOR, ROUTING
from services.rpc.interceptor import AccountingInterceptor
from services.rpc.kserve import KServeServicer
from services.rpc.native import NativeFrontend
from services.rpc.routing import RoutingServicer
from services.rpc.stream import StreamService
from services.settings import Frontend, Settings

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
QUIET_BEFORE_STOP_SECONDS = 0.1  # no new call for this long: GOAWAY cancels nothing
GOAWAY_AFTER_SECONDS = 1.0  # calls still arriving this long into a drain: GOAWAY anyway
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class NNServeServer:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics | None = None,
        span_exporter: SpanExporter | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.tracing = _tracing(settings, span_exporter)
        # Unusable TLS or tokens files stop the server here, before anything starts.
        tls = settings.tls
        self._credentials: grpc.ServerCredentials | None = None
        self.certificates: CertificateReloader | None = None
        if tls is not None:
            self._credentials, self.certificates = server_credentials(tls)
        self.auth = (
            Authenticator(settings.tokens_file, self.metrics.auth_failures)
            if settings.tokens_file is not None
            else None
        )
        self.threads = InferenceThreads(settings.inference_threads)
        self.registry = ModelRegistry(settings, self.metrics, self.threads)
        self.state = ServerState()
        self.readiness = Readiness(self.state, self.registry)
        limits = Limits(settings.max_inflight_requests, settings.max_inflight_bytes)
        self.plane = DataPlane(
            self.registry, self.metrics, self.state, limits,
            stage_metrics=settings.stage_metrics, tracing=self.tracing,
        )  # fmt: skip
        self.sessions = SessionStore(
            settings.session_ttl_seconds, settings.max_sessions, self.metrics,
            settings.max_sessions_per_client,
        )  # fmt: skip
        self._sweeper: asyncio.Task[None] | None = None
        self.drift = DriftExporter(
            self.registry.drift_windows, self.metrics.input_drift, settings.drift_interval_seconds
        )
        self._drift_task: asyncio.Task[None] | None = None
        self.health = HealthServicer()
        self.control = ModelControl(settings, self.registry, self._health_settled)
        self.grpc_port = 0
        self.metrics_port = 0
        self._metrics_http: Any = None
        self._health_tasks: set[asyncio.Task[None]] = set()
        self._loader: asyncio.Task[None] | None = None
        self._stopped = False

        self.calls = CallCounter()
        self.interceptor = AccountingInterceptor(
            self.metrics, self.auth, settings.auth_health, self.tracing, self.calls,
            max_message_bytes=settings.max_message_bytes,
            max_concurrent_rpcs=settings.max_concurrent_rpcs,
        )  # fmt: skip
        # No maximum_concurrent_rpcs here: the interceptor enforces it, so refusals are
        # accounted (grpc.aio refuses before any handler runs).
        self.server = grpc.aio.server(
            interceptors=[self.interceptor], options=server_options(settings)
        )
        grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            KServeServicer(
                self.plane,
                self.registry,
                self.readiness,
                self.control,
                stream_window=settings.max_stream_inflight,
            ),
            self.server,
        )
        nnserve_pb2_grpc.add_PredictorServicer_to_server(
            PredictorServicer(
                self.plane,
                self.readiness,
                StreamService(
                    self.plane,
                    self.sessions,
                    self.metrics,
                    settings.max_stream_events,
                    settings.session_idle_seconds,
                ),
                stream_window=settings.max_stream_inflight,
            ),
            self.server,
        )
        nnserve_pb2_grpc.add_RoutingServicer_to_server(RoutingServicer(self.registry), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.frontend, why = settings.frontend_in_use
        if why:
            log.info("front end: aio instead of native, because of %s", why)
        self.metrics.frontend_info.labels(self.frontend.value).set(1)
        self.native: NativeFrontend | None = None
        if self.frontend is Frontend.NATIVE:
            self.native = NativeFrontend(
                settings, self.server, self.plane, self.metrics, self.auth, self.tracing,
                self.calls,
            )  # fmt: skip
        reflection.enable_server_reflection(
            (
                KSERVE,
                PREDICTOR,
                ROUTING,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            self.server,
        )
        self.http_port = 0
        self.http: HttpServer | None = None
        if settings.http_port is not None and settings.http_port >= 0:
            rest = RestApi(
                self.plane, self.registry, self.readiness, self.metrics, self.control,
                auth=self.auth, auth_health=settings.auth_health,
                max_body_bytes=settings.max_message_bytes,
                max_inflight_body_bytes=settings.max_inflight_bytes,
            )  # fmt: skip
            self.http = HttpServer(
                rest.app(), settings.host, settings.http_port,
                reuse_port=settings.workers > 1, tls=settings.tls,
                limit_concurrency=settings.max_concurrent_rpcs,
            )  # fmt: skip
        self.registry.add_listener(self._on_model_state)

    # ------------------------------------------------------------------ health

    def _set_health(self, service: str, status: int) -> None:
        task = asyncio.get_running_loop().create_task(self.health.set(service, status))
        self._health_tasks.add(task)
        task.add_done_callback(self._health_tasks.discard)

    async def _health_settled(self) -> None:
        """Wait for the health updates already scheduled (after a Load, before it answers)."""
        while self._health_tasks:
            await asyncio.gather(*self._health_tasks)

    def _on_model_state(self, mv: ModelVersion) -> None:
        # A model whose last version was retired has no record left: not serving.
        ready = bool(self.registry.versions(mv.name)) and self.readiness.model_ready(mv.name)
        self._set_health(mv.name, SERVING if ready else NOT_SERVING)
        self._update_overall()

    def _update_overall(self) -> None:
        status = SERVING if self.readiness.serving() else NOT_SERVING
        for service in ("", KSERVE, PREDICTOR):
            self._set_health(service, status)

    # ------------------------------------------------------------------ lifecycle

    async def start(self, wait_for_models: bool = True) -> None:
        """Bind gRPC and metrics ports, then load models (health SERVING once loaded)."""
        s = self.settings
        address = f"{s.host}:{s.grpc_port}"
        if self.native is not None:
            self.grpc_port = self.native.bind(address)
        elif self._credentials is None:  # Settings allow this only on loopback or when chosen
            self.grpc_port = self.server.add_insecure_port(address)
        else:
            self.grpc_port = self.server.add_secure_port(address, self._credentials)
        if self.grpc_port == 0:
            raise RuntimeError(f"cannot bind gRPC on {s.host}:{s.grpc_port}")
        if s.metrics_port is not None and s.metrics_port >= 0:
            self._metrics_http, self.metrics_port = serve_metrics(
                exposition_registry(self.metrics), s.host, s.metrics_port
            )
        if self.http is not None:
            self.http_port = await self.http.start()
        self._update_overall()
        if self.native is not None:
            await self.native.start()
        else:
            await self.server.start()
        tls = s.tls
        transport = "plaintext" if tls is None else "mutual TLS" if tls.client_ca else "TLS"
        log.info(
            "%s service: gRPC (%s%s) on %s:%d, %s front end, REST on :%s, metrics on :%d",
            s.service, transport, ", tokens" if self.auth else "", s.host, self.grpc_port,
            self.frontend, self.http_port or "off", self.metrics_port,
        )  # fmt: skip
        if s.ports_file is not None:
            write_ports_file(
                s.ports_file, self.grpc_port, self.metrics_port or None, self.http_port or None
            )
        self._sweeper = asyncio.create_task(self.sessions.sweep_forever())
        if s.drift_window > 0:
            self._drift_task = asyncio.create_task(self.drift.run_forever())
        self._loader = asyncio.create_task(self._load())
        if wait_for_models:
            await self._loader

    async def _load(self) -> None:
        start = time.perf_counter()
        await self.registry.load_startup()
        self.state.started = True
        self.control.start()  # poll mode: watch the repository from here on
        self._update_overall()
        ready = [f"{mv.name}/{mv.version}" for mv in self.registry.all_versions() if mv.ready]
        log.info("ready in %.2fs: %s", time.perf_counter() - start, ", ".join(ready) or "no models")

    async def stop(self, grace: float | None = None) -> None:
        """Graceful drain: NOT_SERVING, refuse new work, finish queued work, stop."""
        if self._stopped:
            return
        self._stopped = True
        grace = self.settings.drain_grace_seconds if grace is None else grace
        deadline = time.monotonic() + grace
        self.state.draining = True
        await self.health.enter_graceful_shutdown()
        await self.control.stop()  # no version may load or retire during the drain
        self.registry.drain()
        if self._loader is not None and not self._loader.done():
            self._loader.cancel()
        grpc_drained = (
            self._drain_native(deadline) if self.native is not None else self._drain_aio(deadline)
        )
        if self.http is not None:
            await asyncio.gather(grpc_drained, self._drain_http(deadline))
        else:
            await grpc_drained
        await cancel(self._sweeper)
        await cancel(self._drift_task)
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
        self.threads.shutdown()
        if self.tracing is not None:
            self.tracing.shutdown()  # flushes spans still batched for the exporter
        log.info("stopped")

    def _working(self) -> bool:
        """Accepted work is still running: inference requests (decode to encode, queued
        or running, streams' included) or unary calls. An open stream between messages
        is not work: nothing of it is lost when it ends."""
        return bool(
            self.registry.busy() or self.plane.inflight_requests or self.interceptor.gate.unary
        )

    async def _drain_aio(self, deadline: float) -> None:
        """GOAWAY as early as gRPC allows without cancelling calls, then stop once the
        accepted work is done (docs/operations.md, "Draining").

        grpc.aio sends GOAWAY only from server.stop(), and gRPC core then cancels every
        call it has received but not yet handed to the server, and every call arriving
        before the client has seen the GOAWAY (the client gets CANCELLED). Meanwhile
        calls get UNAVAILABLE "draining" from the data plane. So the GOAWAY goes out at
        the first moment no call has started for QUIET_BEFORE_STOP_SECONDS (clients that
        stop at UNAVAILABLE fall quiet at once), and at the latest GOAWAY_AFTER_SECONDS
        into the drain: clients that keep retrying on this connection only move on once
        they get it."""
        started = time.monotonic()
        quiet_since, seen = started, self.calls.started
        while (now := time.monotonic()) < deadline:
            if self.calls.started != seen:
                quiet_since, seen = now, self.calls.started
            if now - quiet_since >= QUIET_BEFORE_STOP_SECONDS:
                break
            if now - started >= GOAWAY_AFTER_SECONDS:
                log.info("drain: calls still arriving after %gs; GOAWAY now", now - started)
                break
            await asyncio.sleep(0.01)
        # GOAWAY, and the port closes; calls in progress go on until the grace ends.
        stopping = asyncio.ensure_future(self.server.stop(max(0.0, deadline - time.monotonic())))
        while not stopping.done() and self._working() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if not stopping.done():
            # What is left are open streams between messages (health Watch, idle
            # ModelStreamInfer or Stream calls): end them now (UNAVAILABLE), so the
            # process exits once the accepted work is done, not at the end of the grace.
            await self.server.stop(0)
        await stopping

    async def _settled(self, deadline: float) -> None:
        """Until the accepted inference work is done and no call has started for
        QUIET_BEFORE_STOP_SECONDS (or the deadline)."""
        quiet_since, seen = time.monotonic(), self.calls.started
        while time.monotonic() < deadline:
            now = time.monotonic()
            if self.calls.started != seen:
                quiet_since, seen = now, self.calls.started
            busy = self.registry.busy() or self.plane.inflight_requests
            if not busy and now - quiet_since >= QUIET_BEFORE_STOP_SECONDS:
                break
            await asyncio.sleep(0.01)

    async def _drain_native(self, deadline: float) -> None:
        """The native front end closes its port (GOAWAY) at once when asked, so it is
        asked after the accepted work is done; until then native calls get UNAVAILABLE
        "draining" from the data plane, and forwarded ones too."""
        await self._settled(deadline)
        assert self.native is not None
        await self.native.stop(max(0.0, deadline - time.monotonic()))

    async def _drain_http(self, deadline: float) -> None:
        """The REST port closes once the accepted work is done (requests meanwhile get
        503 from the data plane); requests still running get the grace left."""
        await self._settled(deadline)
        assert self.http is not None
        await self.http.stop(max(0.0, deadline - time.monotonic()))

    async def wait_for_termination(self) -> None:
        await self.server.wait_for_termination()


def write_ports_file(
    path: Path, grpc_port: int, metrics_port: int | None, http_port: int | None = None
) -> None:
    """The bound ports as JSON (NNSERVE_PORTS_FILE), replaced atomically: a reader sees
    the old file, no file, or the whole new one. A port that is off is null."""
    doc = {
        "grpc_port": grpc_port,
        "metrics_port": metrics_port,
        "http_port": http_port,
        "pid": os.getpid(),
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc) + "\n")
    os.replace(tmp, path)


def server_options(s: Settings) -> list[tuple[str, int]]:
    """gRPC channel arguments: message size, connection hygiene (docs/operations.md)."""

    def ms(seconds: float) -> int:
        return int(seconds * 1000)

    options = [
        # Compressed messages reach the interceptor as sent; it inflates them with a bound
        # (services/rpc/inflate.py). Core would inflate a bomb whole before any check.
        ("grpc.per_message_decompression", 0),
        ("grpc.max_receive_message_length", s.max_message_bytes),
        ("grpc.max_send_message_length", s.max_message_bytes),
        ("grpc.so_reuseport", 1 if s.workers > 1 else 0),
        ("grpc.keepalive_timeout_ms", ms(s.keepalive_timeout_seconds)),
        # Clients may ping idle connections (tritonclient and Envoy do) but not flood.
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.max_connection_age_grace_ms", ms(s.max_connection_age_grace_seconds)),
    ]
    if s.max_concurrent_streams > 0:
        options.append(("grpc.max_concurrent_streams", s.max_concurrent_streams))
    if s.keepalive_seconds > 0:
        options.append(("grpc.keepalive_time_ms", ms(s.keepalive_seconds)))
    if s.max_connection_idle_seconds > 0:
        options.append(("grpc.max_connection_idle_ms", ms(s.max_connection_idle_seconds)))
    if s.max_connection_age_seconds > 0:
        options.append(("grpc.max_connection_age_ms", ms(s.max_connection_age_seconds)))
    return options


def _tracing(settings: Settings, exporter: SpanExporter | None) -> Tracing | None:
    """Tracing is on with an OTLP endpoint, or with an exporter handed in (tests)."""
    name = f"nnserve-{settings.service}"
    if exporter is not None:
        return Tracing(name, exporter, batch=False)
    if settings.otlp_endpoint:
        return Tracing.otlp(name, settings.otlp_endpoint, settings.otlp_insecure)
    return None


def build_server(
    settings: Settings, metrics: Metrics | None = None, span_exporter: SpanExporter | None = None
) -> NNServeServer:
    """The production entry point, also used by tests (with grpc_port=0, metrics_port=0;
    an in-memory span exporter turns tracing on)."""
    return NNServeServer(settings, metrics, span_exporter)
