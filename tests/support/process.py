"""Processes a test starts, with one lifecycle: start, wait until ready, stop by pid,
the tail of the log in every failure.

- `ServerProcess` / `server_process()`: a real nnserve server (`python -m services`) in a
  process of its own, for what needs one (signals, restarts, crashes, replicas behind
  Envoy). It binds port 0 and tells the test the ports it got through
  NNSERVE_PORTS_FILE (`--ports-file`), which it writes once they are bound.
- `ToolProcess`: the external tools (dockerd, Envoy, Prometheus). Each subclass says how
  to start the tool and when it is ready; the tool binds port 0 where it listens on a
  port, and the subclass reads the port back from what the tool reports (Envoy's admin
  address file and /listeners, Prometheus's log).

Only processes started here are ever signalled, by their own pid.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Self

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.paths import ROOT


def end_process(
    process: subprocess.Popen[str] | subprocess.Popen[bytes], timeout: float = 10.0
) -> None:
    """Stop a process the test started: SIGTERM, then SIGKILL if it lingers."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def tail(path: Path | None, lines: int = 40) -> str:
    """The last lines of a log file ("" when there is none)."""
    if path is None or not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class ToolError(RuntimeError):
    """An external tool did not start; the message ends with the tail of its log."""


class ToolProcess:
    """One external tool run by a test, as a context manager.

    start() makes a private working directory, runs `command()` there with stdout and
    stderr in a log file, and polls `ready()` until it holds; if the tool exits first, or
    is not ready within `startup_timeout`, start() stops it and raises ToolError with the
    tail of its log. stop() ends the process (SIGTERM, then SIGKILL after
    `stop_timeout`) and removes the working directory.
    """

    name = "tool"
    stop_timeout = 10.0
    poll_interval = 0.1

    def __init__(self, startup_timeout: float = 30.0) -> None:
        self.startup_timeout = startup_timeout
        self.workdir: Path | None = None
        self.log_path: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------ what a tool defines

    def command(self, workdir: Path) -> list[str]:
        """The command line; writes whatever the tool reads (its config) into `workdir`."""
        raise NotImplementedError

    def ready(self) -> bool:
        """Whether the started tool is ready (and its ports, if any, are known)."""
        raise NotImplementedError

    def remove_workdir(self, workdir: Path) -> None:
        """Deletes the working directory once the process has ended."""
        shutil.rmtree(workdir, ignore_errors=True)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Self:
        if self.proc is not None:
            raise ToolError(f"{self.name} is already running")
        self.workdir = Path(tempfile.mkdtemp(prefix=f"nnserve-{self.name}-"))
        try:
            argv = self.command(self.workdir)
            self.log_path = self.workdir / f"{self.name}.log"
            with self.log_path.open("wb") as log:
                self.proc = subprocess.Popen(
                    argv,
                    cwd=self.workdir,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            self.wait_ready()
            return self
        except BaseException:
            self.stop()
            raise

    def wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.startup_timeout
        while not self.ready():
            code = self.proc.poll()
            if code is not None:
                raise ToolError(f"{self.name} exited with {code} at start\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise ToolError(
                    f"{self.name} not ready after {self.startup_timeout:.0f}s\n{self.log_tail()}"
                )
            time.sleep(self.poll_interval)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """Ends the process started here (by its pid) and removes its working directory."""
        proc, self.proc = self.proc, None
        if proc is not None:
            end_process(proc, self.stop_timeout)
        workdir, self.workdir = self.workdir, None
        if workdir is not None:
            self.remove_workdir(workdir)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def log_text(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the tool's log, for failure messages."""
        return tail(self.log_path, lines)


# ------------------------------------------------------------------ nnserve servers


def wait_serving(
    address: str,
    timeout: float = 90.0,
    process: subprocess.Popen[str] | None = None,
    log_path: Path | None = None,
) -> None:
    """Until the server at `address` answers health SERVING (the process must not exit)."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise RuntimeError(
                    f"server exited with {process.returncode} before serving\n{tail(log_path)}"
                )
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise TimeoutError(f"{address} not SERVING after {timeout:.0f}s\n{tail(log_path)}")


def read_ports(
    path: Path, process: subprocess.Popen[str], timeout: float = 60.0, log_path: Path | None = None
) -> dict[str, int]:
    """The ports the process bound, from its ports file (written atomically once bound)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise RuntimeError(
                f"server exited with {process.returncode} before binding\n{tail(log_path)}"
            )
        if time.monotonic() > deadline:
            raise TimeoutError(f"no ports file after {timeout:.0f}s\n{tail(log_path)}")
        time.sleep(0.02)
    ports: dict[str, int] = json.loads(path.read_text())
    if ports["pid"] != process.pid:
        raise RuntimeError(f"ports file {path} was written by another process")
    return ports


class ServerProcess:
    """`python -m services --repository R --grpc-port 0 --metrics-port 0 *args` on a
    process of its own, its output in `<log_dir>/<name>.log`.

    The first start() binds port 0 and reads the ports from the ports file; a start()
    after the process ended binds the same ports again, so that its address stays what
    clients (or Envoy) were given. `env` adds to this process's environment;
    `clean_env` leaves out every NNSERVE_* variable of it first.
    """

    def __init__(
        self,
        repository: Path,
        log_dir: Path,
        *args: str,
        env: Mapping[str, str] | None = None,
        clean_env: bool = False,
        name: str | None = None,
    ) -> None:
        stem = name or f"server-{time.monotonic_ns()}"
        self.repository = repository
        self.args = args
        self.ports_file = log_dir / f"{stem}.ports.json"
        self.log_path = log_dir / f"{stem}.log"
        base = {k: v for k, v in os.environ.items() if not (clean_env and k.startswith("NNSERVE_"))}
        self.env = {**base, **(env or {})}
        self.grpc_port = 0
        self.metrics_port = 0
        self._process: subprocess.Popen[str] | None = None

    @property
    def process(self) -> subprocess.Popen[str]:
        assert self._process is not None, "not started"
        return self._process

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self, timeout: float = 90.0) -> Self:
        """Starts the server and returns once it answers health SERVING."""
        self.launch()
        self.wait_serving(timeout)
        return self

    def launch(self) -> None:
        """Starts the process (see wait_serving), so that several can start together."""
        if self._process is not None and self._process.poll() is None:
            raise RuntimeError("the server is already running")
        self.ports_file.unlink(missing_ok=True)  # the ports file of an earlier start
        command = [
            sys.executable, "-m", "services", "--repository", str(self.repository),
            "--grpc-port", str(self.grpc_port), "--metrics-port", str(self.metrics_port),
            "--ports-file", str(self.ports_file), *self.args,
        ]  # fmt: skip
        with self.log_path.open("a") as log:
            self._process = subprocess.Popen(
                command, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, text=True, env=self.env,
            )  # fmt: skip

    def wait_serving(self, timeout: float = 90.0) -> None:
        """Until the launched process has bound its ports and answers health SERVING."""
        ports = read_ports(self.ports_file, self.process, log_path=self.log_path)
        self.grpc_port, self.metrics_port = ports["grpc_port"], ports["metrics_port"]
        wait_serving(self.address, timeout, self.process, self.log_path)

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.address)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 30) -> str:
        return tail(self.log_path, lines)

    def terminate(self) -> None:
        """SIGTERM (the server drains and exits); does not wait."""
        self.process.send_signal(signal.SIGTERM)

    def drain(self, timeout: float = 20.0) -> int:
        """SIGTERM, then the exit code once the drain is over."""
        self.terminate()
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL if it still runs (only this process, by pid), and reap it."""
        if self._process is not None:
            if self._process.poll() is None:
                self._process.kill()
            self._process.wait(10)


@contextmanager
def server_process(
    repository: Path, log_dir: Path, *args: str, env: dict[str, str] | None = None
) -> Iterator[ServerProcess]:
    """A ServerProcess, SERVING, killed at the end whatever happened."""
    server = ServerProcess(repository, log_dir, *args, env=env)
    try:
        yield server.start()
    finally:
        server.kill()
