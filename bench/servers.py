"""Start the nnserve services as subprocesses, wait for health SERVING, read metrics, stop.

Ports: with one worker the service binds port 0 and the port is read back from its
start-up log line; with several workers (which must share a fixed port via
SO_REUSEPORT) the port is held by an SO_REUSEPORT socket of ours, bound but never
listening, until the service is up, so nobody else can take it in between.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench import procstat
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SERVICE_MODELS = {"classify": ("perceptron", "mlp", "cnn"), "sequence": ("lstm", "transformer")}
_LISTENING = re.compile(r"gRPC (?:\(\w+\) )?on (\S+):(\d+), metrics on :(-?\d+)")


class ServiceError(RuntimeError):
    """A service did not start, or did not become healthy in time."""


@dataclass
class Service:
    name: str  # classify | sequence
    models: list[str]
    process: subprocess.Popen[bytes]
    log_path: Path
    host: str = "127.0.0.1"
    grpc_port: int = 0
    metrics_port: int = -1
    workers: int = 1
    _reserved: socket.socket | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def pids(self) -> list[int]:
        """The service process and its workers (and their helpers)."""
        return procstat.process_tree(self.process.pid)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def scrape(self) -> str:
        """The /metrics text, or "" when the service exposes no metrics port."""
        if self.metrics_port <= 0:
            return ""
        url = f"http://{self.host}:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    def stop(self, grace_s: float = 15.0) -> None:
        if self._reserved is not None:
            self._reserved.close()
            self._reserved = None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                for pid in reversed(self.pids()):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                self.process.wait(5)


def _reserve_port(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, 0))
    return sock


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def start_service(
    name: str,
    repository: Path,
    log_dir: Path,
    *,
    models: list[str] | None = None,
    workers: int = 1,
    host: str = "127.0.0.1",
    metrics: bool = True,
    extra_args: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> Service:
    """Launch `python -m services --service NAME ...`; returns once its port is known."""
    models = list(models if models is not None else SERVICE_MODELS[name])
    reserved = _reserve_port(host) if workers > 1 else None
    grpc_port = reserved.getsockname()[1] if reserved else 0
    # Several workers: only the parent serves metrics, on a fixed port (one free just now).
    metrics_port = (0 if workers == 1 else _free_port(host)) if metrics else -1
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    args = [
        sys.executable,
        "-m",
        "services",
        "--service",
        name,
        "--repository",
        str(repository),
        "--host",
        host,
        "--grpc-port",
        str(grpc_port),
        "--metrics-port",
        str(metrics_port),
        "--models",
        json.dumps(models),
        "--workers",
        str(workers),
        *(extra_args or []),
    ]
    child_env = {**os.environ, **(env or {})}
    child_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(PROJECT_ROOT), child_env.get("PYTHONPATH", "")) if p
    )
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT, env=child_env
        )
    service = Service(name, models, process, log_path, host, grpc_port, metrics_port, workers)
    service._reserved = reserved
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        match = _LISTENING.search(log_path.read_text(errors="replace"))
        if match:
            service.grpc_port = grpc_port or int(match.group(2))
            if workers == 1:
                service.metrics_port = int(match.group(3))
            return service
        if process.poll() is not None:
            raise ServiceError(
                f"{name} service exited with code {process.returncode}:\n{service.log_tail()}"
            )
        time.sleep(0.05)
    service.stop()
    raise ServiceError(f"{name} service did not report its port in 60 s:\n{service.log_tail()}")


def wait_serving(service: Service, timeout_s: float = 120.0) -> None:
    """Until health says SERVING overall and for every model; explains failures."""
    deadline = time.monotonic() + timeout_s
    pending = ["", *service.models]
    with grpc.insecure_channel(service.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while pending and time.monotonic() < deadline:
            if service.process.poll() is not None:
                raise ServiceError(f"{service.name} service exited:\n{service.log_tail()}")
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(service=pending[0]), timeout=2)
                if status.status == health_pb2.HealthCheckResponse.SERVING:
                    pending.pop(0)
                    continue
            except grpc.RpcError:
                pass
            time.sleep(0.1)
        if pending:
            reasons = ""
            try:
                index = pb_grpc.GRPCInferenceServiceStub(channel).RepositoryIndex(
                    pb.RepositoryIndexRequest(), timeout=5
                )
                reasons = "; ".join(
                    f"{m.name}/{m.version} {m.state} {m.reason}" for m in index.models
                )
            except grpc.RpcError as exc:
                reasons = f"RepositoryIndex failed: {exc.code().name}"
            raise ServiceError(
                f"{service.name} service: {pending[0] or 'server'} not SERVING after "
                f"{timeout_s:.0f} s ({reasons})\n{service.log_tail()}"
            )
    if service.workers > 1:
        _wait_all_workers(service, deadline)
    if service._reserved is not None:  # the workers hold the port now
        service._reserved.close()
        service._reserved = None


def _wait_all_workers(service: Service, deadline: float) -> None:
    """With SO_REUSEPORT each new connection lands on some worker: ask over many fresh
    connections until every one of them answers SERVING for every model."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    probes = 4 * service.workers
    while time.monotonic() < deadline:
        serving = 0
        for _ in range(probes):
            with grpc.insecure_channel(service.address, options=options) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                try:
                    ok = all(
                        stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=2).status
                        == health_pb2.HealthCheckResponse.SERVING
                        for name in ["", *service.models]
                    )
                except grpc.RpcError:
                    ok = False
                serving += ok
        if serving == probes:
            return
        time.sleep(0.2)
    raise ServiceError(
        f"{service.name} service: not every worker SERVING in time\n{service.log_tail()}"
    )


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}\s+(\S+)$")


def metric_sums(text: str, model: str) -> dict[str, float]:
    """`name -> value` for the model's series, summed over other labels (version, ...)."""
    out: dict[str, float] = {}
    needle = f'model="{model}"'
    for line in text.splitlines():
        if needle not in line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match:
            name = match.group(1)
            out[name] = out.get(name, 0.0) + float(match.group(3))
    return out


def metric_labels(text: str, name: str) -> list[dict[str, str]]:
    """Label sets of every sample of one metric (e.g. nnserve_model_info)."""
    found = []
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and match.group(1) == name:
            found.append(dict(re.findall(r'(\w+)="([^"]*)"', match.group(2))))
    return found
