"""Start a real nnserve server process (`python -m services`) for fault tests: signals,
restarts and crashes need a process of their own, not a server on a test thread.

The process binds port 0 (no race for a "free" port) and tells the test the ports it
got through NNSERVE_PORTS_FILE (`--ports-file`), which it writes once they are bound.
"""

from __future__ import annotations

import json
import os
import signal
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


def end_process(process: subprocess.Popen[str] | subprocess.Popen[bytes]) -> None:
    """Stop a process the test started: SIGTERM, then SIGKILL if it lingers."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@dataclass
class ServerProcess:
    process: subprocess.Popen[str]
    grpc_port: int
    metrics_port: int
    log_path: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.address)

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


def read_ports(path: Path, process: subprocess.Popen[str], timeout: float = 60.0) -> dict[str, int]:
    """The ports the process bound, from its ports file (written atomically once bound)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before binding")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no ports file after {timeout:.0f}s")
        time.sleep(0.02)
    ports: dict[str, int] = json.loads(path.read_text())
    if ports["pid"] != process.pid:
        raise RuntimeError(f"ports file {path} was written by another process")
    return ports


@contextmanager
def server_process(
    repository: Path, log_dir: Path, *args: str, env: dict[str, str] | None = None
) -> Iterator[ServerProcess]:
    """`python -m services --repository R --grpc-port 0 --metrics-port 0 *args`, SERVING."""
    ports_file = log_dir / f"ports-{time.monotonic_ns()}.json"
    log_path = ports_file.with_suffix(".log")
    command = [
        sys.executable, "-m", "services", "--repository", str(repository),
        "--grpc-port", "0", "--metrics-port", "0", "--ports-file", str(ports_file), *args,
    ]  # fmt: skip
    with log_path.open("w") as log:
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, **(env or {})},
        )  # fmt: skip
    try:
        ports = read_ports(ports_file, process)
        running = ServerProcess(process, ports["grpc_port"], ports["metrics_port"], log_path)
        wait_serving(running.address, process=process)
        yield running
    finally:
        if process.poll() is None:
            process.kill()  # only our own process, by pid
        process.wait(10)
