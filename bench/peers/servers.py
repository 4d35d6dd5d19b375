"""Start each server of the comparison as a subprocess on 127.0.0.1, wait until every
model is ready (KServe v2 ServerReady + ModelReady), and stop it.

Servers: the no-op grpc.aio servicer (bench.nullserver), nnserve (bench.servers), MLServer
(`mlserver start` in its own environment) and Triton (the `tritonserver` binary from the
nvidia-pytriton wheel, prepared the way pytriton prepares it: the Python-backend stub for
this Python copied into the backend folder, the wheel's libraries on LD_LIBRARY_PATH).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from bench import procstat
from bench.peers import configs
from bench.peers.envs import PeerEnv, PeerUnavailable
from bench.servers import PROJECT_ROOT, start_service, wait_serving
from bench.workload import ModelInfo
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc

HOST = "127.0.0.1"
START_TIMEOUT_S = 180.0


@dataclass(eq=False)  # identity: one server may serve several models
class Running:
    """One started server: where it listens and the process tree to measure."""

    name: str
    address: str
    process: subprocess.Popen[bytes]
    log_path: Path
    stop_hook: Callable[[], None] | None = None

    def pids(self) -> list[int]:
        return procstat.process_tree(self.process.pid)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, grace_s: float = 15.0) -> None:
        if self.stop_hook is not None:
            self.stop_hook()
            return
        if self.process.poll() is None:
            tree = self.pids()
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(grace_s)
            for pid in reversed(tree):  # workers and stubs that outlived their parent
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(5)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_ready(server: Running, models: list[str], timeout_s: float = START_TIMEOUT_S) -> None:
    """Until ServerReady and ModelReady for every model; raises with the log tail."""
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise PeerUnavailable(
                    f"{server.name} exited with code {server.process.returncode} while "
                    f"starting:\n{server.log_tail()}"
                )
            try:
                if stub.ServerReady(pb.ServerReadyRequest(), timeout=2).ready and all(
                    stub.ModelReady(pb.ModelReadyRequest(name=m), timeout=2).ready for m in models
                ):
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    server.stop()
    raise PeerUnavailable(f"{server.name} not ready within {timeout_s:.0f} s:\n{server.log_tail()}")


def _popen(cmd: list[str], log_path: Path, **kwargs: object) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, **kwargs)  # type: ignore[call-overload,no-any-return]


_NOOP_PORT = re.compile(r"no-op KServe v2 server for \S+ on \S+:(\d+)")


def start_noop(repository: Path, info: ModelInfo, work: Path) -> Running:
    """The floor: `python -m bench.nullserver` for one model (fixed response bytes)."""
    log_path = work / f"noop-{info.name}.log"
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    cmd = [sys.executable, "-m", "bench.nullserver", "--repository", str(repository),
           "--model", info.name, "--host", HOST, "--port", "0"]  # fmt: skip
    process = _popen(cmd, log_path, cwd=PROJECT_ROOT, env=env)
    server = Running(f"no-op/{info.name}", "", process, log_path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        match = _NOOP_PORT.search(log_path.read_text(errors="replace"))
        if match:
            server.address = f"{HOST}:{match.group(1)}"
            wait_ready(server, [info.name], 30)
            return server
        if process.poll() is not None:
            break
        time.sleep(0.05)
    server.stop()
    raise PeerUnavailable(f"no-op server did not start:\n{server.log_tail()}")


def start_nnserve(repository: Path, infos: list[ModelInfo], work: Path, task: str) -> Running:
    """`python -m services --service <task>` for these models, one worker, as `make bench`."""
    service = start_service(task, repository.resolve(), work, models=[i.name for i in infos])
    try:
        wait_serving(service)
    except BaseException:
        service.stop()
        raise
    return Running("nnserve", service.address, service.process, service.log_path,
                   stop_hook=service.stop)  # fmt: skip


def start_mlserver(
    env: PeerEnv, infos: list[ModelInfo], work: Path, queue_delay_ms: float | None
) -> Running:
    """`mlserver start <folder>` with our runtime class and adaptive batching."""
    grpc_port = free_port()
    folder = configs.write_mlserver_folder(
        work / "mlserver", infos, HOST, grpc_port, free_port(), free_port(), queue_delay_ms
    )
    # MLServer imports the runtime module from the folder it serves.
    process = _popen([str(env.bin("mlserver")), "start", str(folder)], work / "mlserver.log",
                     cwd=folder)  # fmt: skip
    server = Running("mlserver", f"{HOST}:{grpc_port}", process, work / "mlserver.log")
    wait_ready(server, [i.name for i in infos])
    return server


def triton_layout(env: PeerEnv, target: Path) -> tuple[Path, Path, Path]:
    """Copy the wheel's tritonserver folder to `target` with the Python-backend stub for
    this Python in backends/python (as pytriton does); returns (binary, backends, libs)."""
    site = env.site_packages()
    dist = site / "pytriton" / "tritonserver"
    libs = site / "nvidia_pytriton.libs"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not (dist / "bin" / "tritonserver").exists():
        raise PeerUnavailable(f"nvidia-pytriton has no tritonserver binary in {dist}")
    if not stub.exists():
        raise PeerUnavailable(f"nvidia-pytriton has no Python-backend stub for Python {version}")
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(dist, target, ignore=shutil.ignore_patterns("python_backend_stubs"))
    shutil.copy(stub, target / "backends" / "python" / "triton_python_backend_stub")
    # The stub embeds the system's libpython of the same minor version.
    ldd = subprocess.run(["ldd", str(stub)], env={**os.environ, "LD_LIBRARY_PATH": str(libs)},
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    missing = [ln.split()[0] for ln in ldd.stdout.splitlines() if "not found" in ln]
    if missing:
        raise PeerUnavailable(
            f"Triton's Python-backend stub needs {', '.join(missing)}, missing here "
            f"(Debian: apt-get install libpython{version})"
        )
    return target / "bin" / "tritonserver", target / "backends", libs


def start_triton(
    env: PeerEnv, infos: list[ModelInfo], work: Path, queue_delay_ms: float | None
) -> Running:
    """tritonserver, gRPC only, serving model.onnx from a Python-backend model.py with
    dynamic batching."""
    binary, backends, libs = triton_layout(env, work / "tritonserver")
    repo = work / "triton-repository"
    for info in infos:
        configs.write_triton_repository(repo, info, configs.Batching.of(info, queue_delay_ms))
    grpc_port = free_port()
    cmd = [str(binary), "--model-repository", str(repo), "--backend-directory", str(backends),
           "--grpc-address", HOST, "--grpc-port", str(grpc_port), "--allow-http", "false",
           "--allow-metrics", "false", "--allow-gpu-metrics", "false", "--log-verbose", "0",
           "--strict-readiness", "true"]  # fmt: skip
    # The stub runs the system libpython: the environment's packages come in on PYTHONPATH.
    child_env = {
        **os.environ,
        "LD_LIBRARY_PATH": os.pathsep.join(
            p for p in (str(libs), os.environ.get("LD_LIBRARY_PATH", "")) if p
        ),
        "PYTHONPATH": str(env.site_packages()),
        "PATH": f"{env.root / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    process = _popen(cmd, work / "triton.log", env=child_env)
    server = Running("triton", f"{HOST}:{grpc_port}", process, work / "triton.log")
    wait_ready(server, [i.name for i in infos])
    return server
