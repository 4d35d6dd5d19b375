"""Start a real nnserve server process (`python -m services`) for fault tests: signals,
restarts and crashes need a process of their own, not a server on a test thread."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    process: subprocess.Popen[str]
    grpc_port: int
    metrics_port: int
    log_path: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)


def wait_serving(
    address: str, timeout: float = 90.0, process: subprocess.Popen[str] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode} before serving")
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise TimeoutError(f"{address} not SERVING after {timeout:.0f}s")


@contextmanager
def server_process(
    repository: Path, log_dir: Path, *args: str, env: dict[str, str] | None = None
) -> Iterator[ServerProcess]:
    """`python -m services --repository R --grpc-port P --metrics-port M *args`, SERVING."""
    grpc_port, metrics_port = free_port(), free_port()
    log_path = log_dir / f"server-{grpc_port}.log"
    command = [
        sys.executable, "-m", "services", "--repository", str(repository),
        "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port), *args,
    ]  # fmt: skip
    with log_path.open("w") as log:
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, **(env or {})},
        )  # fmt: skip
    running = ServerProcess(process, grpc_port, metrics_port, log_path)
    try:
        wait_serving(running.address, process=process)
        yield running
    finally:
        if process.poll() is None:
            process.kill()  # only our own process, by pid
        process.wait(10)
