"""One settings object per process, from environment (NNSERVE_*) and command line."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from contract.model import ServingDefaults, is_model_name
from services.ops.tls import TLSFiles, is_loopback


class DevicePolicy(StrEnum):
    """Where a model may run."""

    ALLOW_CPU_FALLBACK = "allow_cpu_fallback"  # CUDA when it loads, else CPU
    REQUIRE_GPU = "require_gpu"  # CUDA or the model never becomes ready
    CPU_ONLY = "cpu_only"  # never ask for CUDA
    MEASURE = "measure"  # time each available provider at load; route batch sizes to the faster


class ModelControlMode(StrEnum):
    """Who changes the set of served models after start (Triton's model control modes)."""

    NONE = "none"  # fixed at start; RepositoryModelLoad/Unload answer FAILED_PRECONDITION
    EXPLICIT = "explicit"  # RepositoryModelLoad/Unload load and unload models
    POLL = "poll"  # the repository is watched; Load/Unload answer FAILED_PRECONDITION


class Frontend(StrEnum):
    """What receives gRPC calls (services/rpc/native.py, services/rpc/server.py)."""

    NATIVE = "native"  # pygrpc-native: unary inference in batches, the rest via grpc.aio
    AIO = "aio"  # grpc.aio for every method


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions of a model serve: all found, or the `latest` N highest that load.

    A version that fails to load or its goldens never counts toward N, so a broken new
    version never displaces a good older one; it stays listed, not ready, with its reason.
    """

    latest: int | None = None  # None: every version in the repository

    @classmethod
    def parse(cls, text: str) -> VersionPolicy:
        kind, _, count = text.strip().lower().partition(":")
        if kind == "all" and not count:
            return cls()
        if kind == "latest" and (not count or (count.isascii() and count.isdigit())):
            n = int(count or 1)
            if 1 <= n <= 1000:
                return cls(latest=n)
        raise ValueError(f"version policy {text[:40]!r}: expected all, latest or latest:N")

    def __str__(self) -> str:
        return "all" if self.latest is None else f"latest:{self.latest}"


# Which models each service process serves unless NNSERVE_MODELS says otherwise.
SERVICE_MODELS: dict[str, tuple[str, ...]] = {
    "classify": ("perceptron", "mlp", "cnn"),
    "sequence": ("lstm", "transformer"),
}
SERVICE_PORTS: dict[str, tuple[int, int]] = {"classify": (50051, 9091), "sequence": (50052, 9092)}
# The KServe v2 REST port of each service (services/http/), clear of the ports above.
SERVICE_HTTP_PORTS: dict[str, int] = {"classify": 8081, "sequence": 8082}


class Settings(BaseSettings):
    """nnserve service settings. Every field is also an env var: NNSERVE_<FIELD>."""

    model_config = SettingsConfigDict(
        env_prefix="NNSERVE_",
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_prog_name="python -m services",
    )

    service: Literal["classify", "sequence"] = "classify"
    """Which service this process is: picks default models and ports."""

    models: list[str] | None = None
    """Model names to serve; default: the service's models. ["*"] serves all in the repository."""

    repository: Path = Path("model_repository")
    """Model repository root: <name>/<version>/model.onnx + model.json."""

    host: str = "127.0.0.1"
    """Address to bind gRPC and metrics on (0.0.0.0 in containers)."""

    grpc_port: int | None = None
    """gRPC port; default 50051 (classify) / 50052 (sequence); 0 picks a free port."""

    metrics_port: int | None = None
    """Prometheus /metrics HTTP port; default 9091 / 9092; 0 picks a free port; -1 disables."""

    http_port: int | None = None
    """KServe v2 REST (HTTP/1.1) port; 0 picks a free port; -1 disables. Unset, it follows
    grpc_port: 8081 / 8082 while grpc_port is the service's default, 0 when grpc_port is 0
    (launchers read every port from the ports file), off when grpc_port is another port
    (several servers on one host: give each its http_port too)."""

    frontend: Frontend = Frontend.NATIVE
    """What receives gRPC calls. `native`: pygrpc-native (HTTP/2 and gRPC in Rust, outside
    the GIL) serves ModelInfer, Classify and Sequence, handing the server whole batches of
    calls; every other method reaches grpc.aio behind it. `aio`: grpc.aio serves every
    method. With TLS or a connection age or idle limit, which the native front does not
    implement, the server runs `aio` and its start-up log says why."""

    native_io_threads: int = Field(default=1, ge=1, le=64)
    """Threads of the native front end's HTTP/2 runtime (tokio); one suits a server pinned
    to few cores, more help only where cores are spare."""

    workers: int = 1
    """Server processes sharing the gRPC port (SO_REUSEPORT); metrics are aggregated."""

    device_policy: DevicePolicy = DevicePolicy.ALLOW_CPU_FALLBACK
    """Default device policy; model.json and model_policies may override per model."""

    model_policies: dict[str, DevicePolicy] = Field(default_factory=dict)
    """Per-model device policy, e.g. NNSERVE_MODEL_POLICIES='{"cnn": "require_gpu"}'."""

    intra_op_threads: int = 1
    """ONNX Runtime threads inside one run; 1 suits small models on few cores."""

    inference_threads: int = 2
    """Threads running batches off the event loop (batches in flight across models)."""

    max_batch_size: int | None = None
    """Override every model's max batch size (model.json serving.max_batch_size otherwise)."""

    max_queue_delay_ms: float | None = None
    """Override the time a partial batch may wait for company while another batch runs."""

    max_queue_size: int = 1024
    """Requests waiting per model before new ones get RESOURCE_EXHAUSTED."""

    max_message_bytes: int = 16 * 1024 * 1024
    """Largest gRPC message accepted or sent; bigger ones get RESOURCE_EXHAUSTED. Also the
    largest REST request body (413 before the body is read)."""

    max_concurrent_streams: int = 0
    """Concurrent calls per client connection (HTTP/2 streams; 0: gRPC's default, no limit).
    Streams a client opens beyond it are refused (REFUSED_STREAM), so set it only with
    clients that respect the limit; max_concurrent_rpcs bounds the total either way."""

    max_concurrent_rpcs: int = 8192
    """Calls running at once on the server, all connections; more get RESOURCE_EXHAUSTED."""

    keepalive_seconds: float = 60.0
    """Ping an idle connection this often to find dead peers (0 disables)."""

    keepalive_timeout_seconds: float = 20.0
    """Close a connection whose keepalive ping is not answered within this time."""

    max_connection_idle_seconds: float = 0.0
    """Close connections idle for this long (0: never)."""

    max_connection_age_seconds: float = 0.0
    """Ask clients to reconnect after this long (0: never); spreads load after scale-out."""

    max_connection_age_grace_seconds: float = 30.0
    """Time calls on an aged connection get to finish before it is closed."""

    latency_target_ms: float | None = None
    """Closed-loop batching: adjust each model's batch cap and queue delay under load to
    hold this p99 (time in the batcher) while batching as much as it allows; off if unset."""

    max_inflight_requests: int = 4096
    """Inference requests accepted at once, all models; more get RESOURCE_EXHAUSTED."""

    max_stream_inflight: int = Field(default=128, ge=1)
    """Requests one ModelStreamInfer call may have read and not yet answered (running or
    waiting to be written); the call reads no further until one is answered, so a client
    that sends without reading is held by flow control, not by the server's memory."""

    max_inflight_bytes: int = 256 * 1024 * 1024
    """Decoded input tensor bytes accepted at once, all models; more get RESOURCE_EXHAUSTED."""

    drain_grace_seconds: float = 10.0
    """On SIGTERM: NOT_SERVING, then this long for in-flight requests to finish."""

    session_ttl_seconds: float = Field(default=300.0, gt=0)
    """A streaming session not attached to a call is dropped after this long idle; resume
    by id works within it (docs/operations.md "Streaming sessions")."""

    max_sessions: int = Field(default=10_000, ge=1)
    """Streaming sessions held at once, all models; opening more gets RESOURCE_EXHAUSTED."""

    max_sessions_per_client: int = Field(default=1000, ge=1)
    """Streaming sessions one client may hold at once: per token name with tokens_file,
    else per IP address (behind the native front end, without tokens, calls cannot be
    told apart and only max_sessions applies); more get RESOURCE_EXHAUSTED."""

    session_idle_seconds: float = Field(default=300.0, gt=0)
    """A Stream call that sends no message for this long ends with DEADLINE_EXCEEDED;
    its session stays resumable for session_ttl_seconds (send an empty message to keep
    a quiet session attached)."""

    max_stream_events: int = Field(default=256, ge=1)
    """Events one Stream message may carry; more get INVALID_ARGUMENT."""

    drift_window: int = Field(default=2000, ge=0, le=1_000_000)
    """Input drift: rows (a tabular row, an image, a sequence) of each model version's
    sliding window of live inputs, scored against its training inputs as
    nnserve_input_drift (docs/metrics.md, "Input drift"); 0 turns it off. Memory: bin
    counts only, 8 x (bins of all features) int64 per version, whatever the window."""

    drift_interval_seconds: float = Field(default=5.0, ge=0.05, le=3600)
    """Input drift: seconds between recomputing nnserve_input_drift from the windows."""

    shadows: dict[str, int] = Field(default_factory=dict)
    """Shadow versions at start, model -> version, e.g. NNSERVE_SHADOWS='{"mlp": 2}': the
    version gets a copy of every request the serving version (then the highest other
    ready version) answers, and the outputs are compared (docs/operations.md "Shadow
    versions"). The version policy must keep both versions loaded."""

    shadow_queue_bytes: int = Field(default=16 * 1024 * 1024, ge=0)
    """Shadow versions: input bytes of answered requests waiting for their shadow run, per
    model; a request beyond it is not mirrored (counted as dropped), never queued."""

    shadow_min_agreement: float = Field(default=0.95, ge=0.0, le=1.0)
    """Shadow versions: the top-class or verdict agreement below which the alert
    NnserveShadowDisagreement fires (published as nnserve_shadow_min_agreement)."""

    verify_goldens: bool = True
    """Re-check model.json goldens at load; a model that fails never becomes ready."""

    model_control: ModelControlMode = ModelControlMode.NONE
    """none: models fixed at start; explicit: RepositoryModelLoad/Unload; poll: watch the
    repository and roll new versions out (docs/operations.md)."""

    poll_seconds: float = Field(default=5.0, ge=0.05, le=3600)
    """poll mode: seconds between repository scans."""

    version_policy: str | None = None
    """all, latest or latest:N (the N highest versions that load and pass their goldens);
    default latest:1 in poll mode, all otherwise."""

    ports_file: Path | None = None
    """Write {"grpc_port", "metrics_port", "http_port", "pid"} as JSON here once the ports
    are bound (useful with port 0); replaced atomically, so a reader never sees half a file."""

    log_level: str = "INFO"

    event_loop: Literal["asyncio", "uvloop"] = "uvloop"
    """The event loop the gRPC server runs on: uvloop (libuv) or asyncio's own."""

    log_format: Literal["text", "json"] = "text"
    """json: one JSON object per line with the request id and trace id of the call."""

    otlp_endpoint: str | None = None
    """OpenTelemetry traces to this OTLP/gRPC collector (e.g. 127.0.0.1:4317); off when unset."""

    otlp_insecure: bool = True
    """Plaintext OTLP (a collector on the same host or network); false uses TLS."""

    stage_metrics: bool = True
    """Per-request stage histograms (nnserve_request_stage_seconds): decode to encode."""

    # ---- security (docs/operations.md "Security"): TLS, mutual TLS, bearer tokens
    tls_cert: Path | None = None
    """PEM server certificate (chain); with tls_key turns TLS on. Re-read when it changes."""

    tls_key: Path | None = None
    """PEM private key of tls_cert."""

    tls_client_ca: Path | None = None
    """PEM CA bundle: when set, clients must present a certificate it signed (mutual TLS)."""

    plaintext: bool = False
    """Serve gRPC and REST without TLS on a non-loopback host (e.g. behind a TLS-terminating
    proxy). Loopback hosts (127.0.0.1, ::1, localhost) are plaintext unless TLS is set."""

    tokens_file: Path | None = None
    """JSON file of hashed bearer tokens and their roles; set: every RPC needs a token."""

    auth_health: bool = False
    """With tokens_file: also require a token for grpc.health.v1 and reflection."""

    @model_validator(mode="after")
    def _transport(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("NNSERVE_TLS_CERT and NNSERVE_TLS_KEY must be set together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("NNSERVE_TLS_CLIENT_CA needs NNSERVE_TLS_CERT and NNSERVE_TLS_KEY")
        if self.plaintext and self.tls_cert is not None:
            raise ValueError("NNSERVE_PLAINTEXT=true contradicts NNSERVE_TLS_CERT: choose one")
        if self.tls_cert is None and not self.plaintext and not is_loopback(self.host):
            raise ValueError(
                f"refusing plaintext gRPC on non-loopback host {self.host!r}: set "
                "NNSERVE_TLS_CERT and NNSERVE_TLS_KEY, or NNSERVE_PLAINTEXT=true to choose "
                "plaintext explicitly (e.g. behind a TLS-terminating proxy)"
            )
        if self.auth_health and self.tokens_file is None:
            raise ValueError("NNSERVE_AUTH_HEALTH=true needs NNSERVE_TOKENS_FILE")
        return self

    @property
    def frontend_in_use(self) -> tuple[Frontend, str]:
        """The front end the server runs, and why when it is not the one asked for."""
        if self.frontend is Frontend.NATIVE:
            if self.tls is not None:
                return Frontend.AIO, "TLS (the native front serves plaintext only)"
            if self.max_connection_age_seconds > 0 or self.max_connection_idle_seconds > 0:
                return Frontend.AIO, "a connection age or idle limit (the native front has none)"
        return self.frontend, ""

    @property
    def tls(self) -> TLSFiles | None:
        if self.tls_cert is None or self.tls_key is None:
            return None
        return TLSFiles(self.tls_cert, self.tls_key, self.tls_client_ca)

    @model_validator(mode="after")
    def _service_defaults(self) -> Settings:
        grpc_port, metrics_port = SERVICE_PORTS[self.service]
        if self.http_port is None:
            # A fixed REST port beside a port chosen for gRPC would collide between the
            # servers of one host (replicas, benchmarks, tests): follow grpc_port instead.
            if self.grpc_port in (None, grpc_port):
                self.http_port = SERVICE_HTTP_PORTS[self.service]
            else:
                self.http_port = 0 if self.grpc_port == 0 else -1
        if self.grpc_port is None:
            self.grpc_port = grpc_port
        if self.metrics_port is None:
            self.metrics_port = metrics_port
        if not -1 <= self.http_port <= 65535:
            raise ValueError(f"http_port {self.http_port}: expected 0..65535, or -1 (off)")
        if self.models is None:
            self.models = list(SERVICE_MODELS[self.service])
        for name in self.models:
            if name != "*" and not is_model_name(name):
                raise ValueError(f"models: {name[:40]!r} is not a valid model name")
        for name, version in self.shadows.items():
            if not is_model_name(name) or version < 1:
                raise ValueError(f"shadows: {name[:40]!r}: expected a model name and version >= 1")
        _ = self.versions  # a bad policy fails at start, not at the first load
        if self.model_control is ModelControlMode.EXPLICIT and self.workers > 1:
            # Each worker has its own models; a Load would reach only one of them.
            raise ValueError(
                "model_control explicit needs workers 1 (a Load reaches one worker); "
                "use model_control poll with several workers"
            )
        return self

    @property
    def versions(self) -> VersionPolicy:
        """The version policy in force (the setting, or the mode's default)."""
        default = "latest:1" if self.model_control is ModelControlMode.POLL else "all"
        return VersionPolicy.parse(self.version_policy or default)

    def serving_config(self, model: str, declared: ServingDefaults) -> ServingConfig:
        """A model's serving configuration: these settings over what model.json declares.

        Resolved once at load; the registry, the batcher and ModelConfig all read it.
        """
        if model in self.model_policies:
            policy = self.model_policies[model]
        elif "device_policy" not in self.model_fields_set and declared.device_policy:
            policy = DevicePolicy(declared.device_policy)
        else:
            policy = self.device_policy
        delay_ms = (
            declared.max_queue_delay_ms
            if self.max_queue_delay_ms is None
            else self.max_queue_delay_ms
        )
        return ServingConfig(
            device_policy=policy,
            max_batch_size=max(1, self.max_batch_size or declared.max_batch_size),
            max_queue_delay_s=max(0.0, delay_ms / 1000.0),
            max_queue_size=max(1, self.max_queue_size),
            version_policy=self.versions,
        )


@dataclass(frozen=True)
class ServingConfig:
    """One model's resolved serving configuration."""

    device_policy: DevicePolicy
    max_batch_size: int
    max_queue_delay_s: float
    max_queue_size: int
    version_policy: VersionPolicy = VersionPolicy()  # reported in ModelConfig
