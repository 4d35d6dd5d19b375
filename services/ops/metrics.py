"""Prometheus metrics, declared once (names and labels: docs/metrics.md).

Each server owns a CollectorRegistry so several servers can live in one process (tests).
With several worker processes, prometheus_client's multiprocess mode aggregates the
workers' values (PROMETHEUS_MULTIPROC_DIR); the parent then serves /metrics.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Summary,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.multiprocess import MultiProcessCollector

LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
# Scores are probabilities: differences from rounding noise (1e-6) to a flipped class (1).
SCORE_DIFFERENCE_BUCKETS = (1e-6, 1e-5, 1e-4, 1e-3, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0)
# A request's stages, in order; handoff is the time between the event loop and an
# inference thread (both ways), what is left of the batcher's share after the others.
STAGES = ("decode", "queue", "merge", "compute", "split", "handoff", "encode")

# *_created series double the exposition size and no dashboard or rule uses them.
disable_created_metrics()


def multiprocess_enabled() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class Metrics:
    """All nnserve and gRPC server metrics of one server."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        live: Literal["livesum", "all"] = "livesum" if multiprocess_enabled() else "all"
        self.requests = Counter(
            "nnserve_requests", "Inference requests by outcome.",
            ["model", "version", "method", "code"], registry=r,
        )  # fmt: skip
        self.request_duration = Histogram(
            "nnserve_request_duration_seconds", "Whole inference request, decode to encode.",
            ["model", "version", "method"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_wait = Histogram(
            "nnserve_queue_wait_seconds", "Time from enqueue to batch start.",
            ["model", "version"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.compute = Histogram(
            "nnserve_compute_seconds", "ONNX Runtime run time per batch.",
            ["model", "version", "provider"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            "nnserve_batch_size", "Rows per executed batch.",
            ["model", "version"], buckets=BATCH_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "nnserve_queue_depth", "Requests waiting in the batcher queue.",
            ["model", "version"], registry=r, multiprocess_mode=live,
        )  # fmt: skip
        self.inflight = Gauge(
            "nnserve_inflight_requests", "Requests accepted and not yet answered.",
            ["model", "version"], registry=r, multiprocess_mode=live,
        )  # fmt: skip
        self.model_ready = Gauge(
            "nnserve_model_ready", "1 when the model version is loaded, checked and serving.",
            ["model", "version"], registry=r, multiprocess_mode="livemin",
        )  # fmt: skip
        self.model_load_failures = Counter(
            "nnserve_model_load_failures",
            "Model version loads that failed (file, checksum, session, goldens, policy).",
            ["model"], registry=r,
        )  # fmt: skip
        self.model_load_seconds = Gauge(
            "nnserve_model_load_seconds", "Load, golden check and warm-up time.",
            ["model", "version", "provider"], registry=r, multiprocess_mode="livemax",
        )  # fmt: skip
        self.frontend_info = Gauge(
            "nnserve_frontend_info", "Always 1; names the front end receiving gRPC calls.",
            ["frontend"], registry=r, multiprocess_mode="livemax",
        )  # fmt: skip
        self.model_info = Gauge(
            "nnserve_model_info", "Always 1; joins the provider in use to each model.",
            ["model", "version", "family", "task", "provider"], registry=r,
            multiprocess_mode="livemax",
        )  # fmt: skip
        self.provider_fallback = Gauge(
            "nnserve_provider_fallback",
            "1 when a model version whose policy allows CUDA runs on the CPU; reason label: "
            "cuda_not_in_build, no_gpu or cuda_failed_to_load.",
            ["model", "version", "reason"], registry=r, multiprocess_mode="livemax",
        )  # fmt: skip
        self.placement = Gauge(
            "nnserve_placement_seconds",
            "Median run time measured at load per provider and batch size (measure policy).",
            ["model", "version", "provider", "batch_size"], registry=r,
            multiprocess_mode="livemax",
        )  # fmt: skip
        # A summary (count and sum, no buckets): the stage split is read as means, and
        # seven bucketed observations per request cost more than the rest of the metrics.
        self.request_stage = Summary(
            "nnserve_request_stage_seconds",
            "Where a successful inference request's time went, per stage (they sum to the "
            "request): decode, queue, merge, compute, split, handoff, encode.",
            ["model", "version", "stage"], registry=r,
        )  # fmt: skip
        self.batch_cap = Gauge(
            "nnserve_batch_cap", "Largest batch the batcher forms now (max_batch_size, or "
            "the closed-loop controller's current cap).",
            ["model", "version"], registry=r, multiprocess_mode="livemax",
        )  # fmt: skip
        self.queue_delay = Gauge(
            "nnserve_queue_delay_seconds", "Longest a partial batch may wait for company now "
            "(max_queue_delay, or the closed-loop controller's current delay).",
            ["model", "version"], registry=r, multiprocess_mode="livemax",
        )  # fmt: skip
        self.input_drift = Gauge(
            "nnserve_input_drift",
            "Population stability index of live inputs (the last drift_window rows) against "
            "the training inputs, per feature: < 0.1 stable, 0.1-0.25 moderate, > 0.25 "
            "significant.",
            ["model", "version", "feature"], registry=r, multiprocess_mode="livemax",
        )  # fmt: skip
        shadow = ["model", "version", "shadow_version"]
        self.shadow_requests = Counter(
            "nnserve_shadow_requests",
            "Requests the serving version answered, by what became of their copy on the "
            "shadow version: compared, dropped (shadow queue full or draining), failed.",
            [*shadow, "outcome"], registry=r,
        )  # fmt: skip
        self.shadow_rows = Counter(
            "nnserve_shadow_rows", "Rows both the serving and the shadow version answered.",
            shadow, registry=r,
        )  # fmt: skip
        self.shadow_agreeing_rows = Counter(
            "nnserve_shadow_agreeing_rows",
            "Compared rows with the same top class (classify) or verdict (sequence) on both.",
            shadow, registry=r,
        )  # fmt: skip
        self.shadow_score_difference = Histogram(
            "nnserve_shadow_score_difference",
            "Per compared row, the largest absolute difference of the two versions' scores.",
            shadow, buckets=SCORE_DIFFERENCE_BUCKETS, registry=r,
        )  # fmt: skip
        self.shadow_min_agreement = Gauge(
            "nnserve_shadow_min_agreement",
            "The agreement a shadow version should keep (shadow_min_agreement); the alert "
            "NnserveShadowDisagreement compares the measured agreement with it.",
            shadow, registry=r, multiprocess_mode="livemax",
        )  # fmt: skip
        self.grpc_started = Counter(
            "grpc_server_started", "RPCs started on the server.",
            ["grpc_type", "grpc_service", "grpc_method"], registry=r,
        )  # fmt: skip
        self.grpc_handled = Counter(
            "grpc_server_handled", "RPCs completed on the server, by status code.",
            ["grpc_type", "grpc_service", "grpc_method", "grpc_code"], registry=r,
        )  # fmt: skip
        self.grpc_handling = Histogram(
            "grpc_server_handling_seconds", "RPC latency until the handler finished.",
            ["grpc_type", "grpc_service", "grpc_method"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip

        # Streaming sessions (services/core/sessions.py) and their step batches (stepping.py).
        self.sessions_open = Gauge(
            "nnserve_sessions_open", "Streaming sessions held (attached to a call or idle).",
            ["model", "version"], registry=r, multiprocess_mode=live,
        )  # fmt: skip
        self.sessions_expired = Counter(
            "nnserve_sessions_expired", "Streaming sessions dropped after the session TTL idle.",
            ["model", "version"], registry=r,
        )  # fmt: skip
        self.session_events = Counter(
            "nnserve_session_events", "Events scored in streaming sessions.",
            ["model", "version"], registry=r,
        )  # fmt: skip
        self.step_batch_size = Histogram(
            "nnserve_step_batch_size", "Session events per step-model run (one per session).",
            ["model", "version"], buckets=BATCH_BUCKETS, registry=r,
        )  # fmt: skip
        self.step_compute = Histogram(
            "nnserve_step_compute_seconds", "ONNX Runtime run time per step batch.",
            ["model", "version", "provider"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.step_queue_wait = Histogram(
            "nnserve_step_queue_wait_seconds", "Time an event waits for its step batch.",
            ["model", "version"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.step_queue_depth = Gauge(
            "nnserve_step_queue_depth", "Session events waiting for a step batch.",
            ["model", "version"], registry=r, multiprocess_mode=live,
        )  # fmt: skip
        self.step_inflight = Gauge(
            "nnserve_step_inflight_events", "Session events accepted and not yet scored.",
            ["model", "version"], registry=r, multiprocess_mode=live,
        )  # fmt: skip

        self.refusals = Counter(
            "nnserve_refusals",
            "Calls refused or dropped before their method ran, by reason (docs/metrics.md).",
            ["reason"], registry=r,
        )  # fmt: skip
        self.session_refusals = Counter(
            "nnserve_session_refusals",
            "Stream calls refused a session, or ended for idling, by the limit that did it.",
            ["reason"], registry=r,
        )  # fmt: skip

        # The KServe v2 REST port (services/http/): every request, by route template
        # ("unmatched" for paths no route serves) and HTTP status, so labels stay bounded.
        self.http_requests = Counter(
            "nnserve_http_requests", "REST requests answered, by route and HTTP status.",
            ["route", "status"], registry=r,
        )  # fmt: skip
        self.http_request_duration = Histogram(
            "nnserve_http_request_duration_seconds",
            "REST request time, headers received to response sent, by route.",
            ["route"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip

        self.auth_failures = Counter(
            "nnserve_auth_failures", "Calls refused by token authentication or authorisation.",
            ["reason"], registry=r,
        )  # fmt: skip

    def for_model(self, model: str, version: int, providers: tuple[str, ...]) -> ModelMetrics:
        v = str(version)
        return ModelMetrics(
            queue_wait=self.queue_wait.labels(model, v),
            compute={p: self.compute.labels(model, v, p) for p in providers},
            batch_size=self.batch_size.labels(model, v),
            queue_depth=self.queue_depth.labels(model, v),
            inflight=self.inflight.labels(model, v),
            stages=tuple(self.request_stage.labels(model, v, stage) for stage in STAGES),
            batch_cap=self.batch_cap.labels(model, v),
            queue_delay=self.queue_delay.labels(model, v),
        )

    def for_step(self, model: str, version: int, providers: tuple[str, ...]) -> ModelMetrics:
        """Children for a model's step batcher (streaming sessions): its own series, so
        step batches never mix with the full model's request batches."""
        v = str(version)
        return ModelMetrics(
            queue_wait=self.step_queue_wait.labels(model, v),
            compute={p: self.step_compute.labels(model, v, p) for p in providers},
            batch_size=self.step_batch_size.labels(model, v),
            queue_depth=self.step_queue_depth.labels(model, v),
            inflight=self.step_inflight.labels(model, v),
            stages=(),
            batch_cap=self.batch_cap.labels(model, v),
            queue_delay=self.queue_delay.labels(model, v),
        )


@dataclass(frozen=True)
class ModelMetrics:
    """Label-bound children for one model version, bound once at load (hot path)."""

    queue_wait: Histogram
    compute: dict[str, Histogram]  # by provider: batches may be routed per size
    batch_size: Histogram
    queue_depth: Gauge
    inflight: Gauge
    stages: tuple[Summary, ...]  # in STAGES order
    batch_cap: Gauge
    queue_delay: Gauge


def exposition_registry(metrics: Metrics) -> CollectorRegistry:
    """What /metrics serves: this process's registry, or all workers' aggregated."""
    if not multiprocess_enabled():
        return metrics.registry
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    return registry


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> tuple[object, int]:
    """Start the /metrics HTTP server in a daemon thread; returns (server, bound port)."""
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server, server.server_address[1]
