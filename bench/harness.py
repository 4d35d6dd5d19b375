"""The one harness every benchmark here uses: start a server and read back the ports it
bound, wait until it is ready, and measure one closed-loop point with the CPU of the
server and of the client over the measured window.

Servers of this project (the services, the no-op servers) bind port 0 and write the
bound ports to a file (NNSERVE_PORTS_FILE) once listening; the launcher waits for that
file. Several service workers must share a fixed port (SO_REUSEPORT): that port is held
by a socket of ours, bound but never listening, until the workers are up.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psutil

from bench.loadgen import LoadGenerator
from bench.workload import Workload
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc

PROJECT_ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
SERVICE_OF_TASK = {"classify": "classify", "sequence": "sequence"}


class ServerError(RuntimeError):
    """A server did not start, or was not ready in time; the message has its log tail."""


# ---------------------------------------------------------------------- processes


def process_tree(root: int) -> list[psutil.Process]:
    """root and its live descendants (workers, Triton's Python stubs, ...)."""
    try:
        parent = psutil.Process(root)
        return [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def cpu_seconds(procs: Iterable[psutil.Process]) -> float:
    """User + system CPU seconds of these processes so far (all threads; gone ones: 0)."""
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent outside idle and iowait, all cores."""
    t = psutil.cpu_times()._asdict()
    # Guest time is already inside user and nice.
    idle = ("idle", "iowait", "guest", "guest_nice")
    return sum(v for k, v in t.items() if k not in idle)


def memory(pids: Iterable[int]) -> dict[str, Any]:
    """RSS and PSS (shared pages split between sharers) summed over the processes."""
    rss = pss = count = 0
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            info = psutil.Process(pid).memory_full_info()
            rss, pss, count = rss + info.rss, pss + getattr(info, "pss", 0), count + 1
    return {"rss_mib": round(rss / 2**20, 1), "pss_mib": round(pss / 2**20, 1), "processes": count}


def pin(pids: Iterable[int], cpus: set[int]) -> None:
    """Every thread of these processes onto `cpus` (threads made later inherit it)."""
    for pid in pids:
        try:
            threads = psutil.Process(pid).threads()
        except psutil.NoSuchProcess:
            continue
        for thread in threads:
            with contextlib.suppress(OSError):  # the thread ended meanwhile
                os.sched_setaffinity(thread.id, cpus)


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def cpu_split() -> tuple[set[int], set[int]] | None:
    """(client CPUs, server CPUs): the first allowed CPU for the client side, the rest
    for the servers; None with fewer than two CPUs."""
    allowed = sorted(psutil.Process().cpu_affinity() or [])
    return ({allowed[0]}, set(allowed[1:])) if len(allowed) >= 2 else None


# ---------------------------------------------------------------------- servers


@dataclass(eq=False)  # identity: one server may serve several models
class Server:
    """A started server: where it listens, its models and the process tree to measure."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    address: str = ""
    models: tuple[str, ...] = ()
    metrics_port: int = -1
    workers: int = 1
    reserved: socket.socket | None = field(default=None, repr=False)

    def pids(self) -> list[int]:
        return [p.pid for p in process_tree(self.process.pid)]

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    def scrape(self) -> str:
        """The /metrics text, or "" when the server exposes none."""
        if self.metrics_port <= 0:
            return ""
        url = f"http://{HOST}:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    def stop(self, grace_s: float = 15.0) -> None:
        if self.reserved is not None:
            self.reserved.close()
            self.reserved = None
        if self.process.poll() is None:
            tree = process_tree(self.process.pid)
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(grace_s)
            for p in reversed(tree):  # workers and stubs that outlived their parent
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(5)


def python_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment, with the project first on PYTHONPATH (a worktree's code wins)."""
    env = {**os.environ, **(extra or {})}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p)
    return env


def launch(name: str, cmd: list[str], log_dir: Path, *, env: dict[str, str] | None = None,
           cwd: Path = PROJECT_ROOT, address: str | None = None, models: Iterable[str] = (),
           timeout_s: float = 60.0) -> Server:  # fmt: skip
    """Start `cmd` with its output in log_dir/<name>.log. Without `address` the server
    binds port 0 and the address comes from the ports file it writes once bound."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    ports_path = log_dir / f"{name}.ports.json"
    ports_path.unlink(missing_ok=True)  # a stale file from an earlier run is not ours
    child_env = dict(env if env is not None else os.environ)
    if address is None:
        child_env["NNSERVE_PORTS_FILE"] = str(ports_path)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=child_env
        )
    server = Server(name, process, log_path, address or "", tuple(models))
    deadline = time.monotonic() + timeout_s
    while not server.address:
        if ports_path.is_file():  # written whole (renamed into place) once bound
            ports = json.loads(ports_path.read_text())
            server.address = f"{HOST}:{ports['grpc_port']}"
            server.metrics_port = int(ports.get("metrics_port") or -1)
        elif process.poll() is not None:
            raise ServerError(f"{name} exited with code {process.returncode}:\n{server.log_tail()}")
        elif time.monotonic() > deadline:
            server.stop()
            raise ServerError(
                f"{name} wrote no ports file in {timeout_s:.0f} s:\n{server.log_tail()}"
            )
        else:
            time.sleep(0.05)
    return server


def start_service(service: str, repository: Path, log_dir: Path, models: list[str], *,
                  workers: int = 1, frontend: str | None = None, label: str | None = None,
                  extra_args: list[str] | None = None) -> Server:  # fmt: skip
    """`python -m services --service SERVICE` for these models; `frontend` (native | aio)
    goes in as NNSERVE_FRONTEND, None leaves the service's default. Not yet ready: see
    wait_ready."""
    reserved = None
    grpc_port = 0
    if workers > 1:  # workers share a fixed port: hold one until they listen on it
        reserved = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        reserved.bind((HOST, 0))
        grpc_port = reserved.getsockname()[1]
    cmd = [sys.executable, "-m", "services", "--service", service, "--host", HOST,
           "--repository", str(repository.resolve()), "--grpc-port", str(grpc_port),
           "--metrics-port", "0", "--models", json.dumps(models), "--workers", str(workers),
           *(extra_args or [])]  # fmt: skip
    env = python_env({"NNSERVE_FRONTEND": frontend} if frontend else None)
    try:
        server = launch(label or service, cmd, log_dir, env=env, models=models)
    except BaseException:
        if reserved is not None:
            reserved.close()
        raise
    server.workers, server.reserved = workers, reserved
    return server


def start_noop(repository: Path, model: str, log_dir: Path, front: str = "aio") -> Server:
    """The no-op KServe v2 server (bench.nullserver) for one model, on grpc.aio or on
    pygrpc-native's NativeGrpcFront."""
    cmd = [sys.executable, "-m", "bench.nullserver", "--repository", str(repository.resolve()),
           "--model", model, "--front", front]  # fmt: skip
    return launch(f"noop-{front}-{model}", cmd, log_dir, env=python_env(), models=[model])


def wait_ready(server: Server, timeout_s: float = 120.0) -> None:
    """Until KServe v2 ServerReady and ModelReady for every model. With several workers
    behind one port each new connection lands on some worker, so 4 per worker must all
    say ready."""
    deadline = time.monotonic() + timeout_s
    options = [("grpc.use_local_subchannel_pool", 1)]
    probes = 1 if server.workers == 1 else 4 * server.workers

    def ready() -> bool:
        with grpc.insecure_channel(server.address, options=options) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            try:
                return bool(stub.ServerReady(pb.ServerReadyRequest(), timeout=2).ready) and all(
                    stub.ModelReady(pb.ModelReadyRequest(name=m), timeout=2).ready
                    for m in server.models
                )
            except grpc.RpcError:
                return False

    while not all(ready() for _ in range(probes)):
        if server.process.poll() is not None:
            code, tail = server.process.returncode, server.log_tail()
            raise ServerError(f"{server.name} exited with code {code} while starting:\n{tail}")
        if time.monotonic() > deadline:
            server.stop()
            raise ServerError(f"{server.name} not ready in {timeout_s:.0f} s:\n{server.log_tail()}")
        time.sleep(0.1)
    if server.reserved is not None:  # the workers hold the port now
        server.reserved.close()
        server.reserved = None


# ---------------------------------------------------------------------- metrics


def metric_samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of every sample in a Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    return [
        (s.name, dict(s.labels), float(s.value))
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


# Figures from the difference of two scrapes: (key, numerator, denominator, scale).
RATIOS = (
    ("mean_batch_size", "nnserve_batch_size_sum", "nnserve_batch_size_count", 1),
    ("mean_compute_ms", "nnserve_compute_seconds_sum", "nnserve_batch_size_count", 1e3),
    ("mean_queue_wait_ms", "nnserve_queue_wait_seconds_sum",
     "nnserve_queue_wait_seconds_count", 1e3),
    ("server_mean_request_ms", "nnserve_request_duration_seconds_sum",
     "nnserve_request_duration_seconds_count", 1e3),
)  # fmt: skip


def front_end(server: Server) -> str:
    """The front end a service runs (nnserve_frontend_info), or "" when it says none."""
    samples = metric_samples(server.scrape()) if server.metrics_port > 0 else []
    return next((la["frontend"] for n, la, _ in samples if n == "nnserve_frontend_info"), "")


def model_counters(text: str, model: str) -> dict[str, float]:
    """The model's counters that RATIOS uses, summed over versions (and other labels), and
    its batches per provider ('batches:<provider>')."""
    wanted = {name for _, *names, _ in RATIOS for name in names}
    out: dict[str, float] = {}
    for name, labels, value in metric_samples(text):
        if labels.get("model") == model and name in wanted:
            out[name] = out.get(name, 0.0) + value
        elif labels.get("model") == model and name == "nnserve_compute_seconds_count":
            key = f"batches:{labels.get('provider', '?')}"
            out[key] = out.get(key, 0.0) + value
    return out


def server_figures(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """Batches, mean batch size, compute, queue wait and request time over a window."""
    delta = {k: v - before.get(k, 0.0) for k, v in after.items()}
    out: dict[str, Any] = {"batches": int(delta.get("nnserve_batch_size_count", 0))}
    for key, numerator, denominator, scale in RATIOS:
        if delta.get(denominator, 0) > 0:
            out[key] = round(delta.get(numerator, 0.0) / delta[denominator] * scale, 3)
    out["batches_by_provider"] = {k[8:]: int(v) for k, v in delta.items() if k[:8] == "batches:"}
    return out


# ---------------------------------------------------------------------- one point


def measure_point(gen: LoadGenerator, address: str, workload: Workload, concurrency: int, *,
                  server: Server | None = None, server_pids: list[int] | None = None,
                  metrics: bool = True, warmup_s: float = 1.0, duration_s: float = 5.0,
                  channels: int = 1, timeout_s: float = 30.0) -> dict[str, Any]:  # fmt: skip
    """One closed-loop point: the load generator's figures, then the CPU of the server
    (`server`'s process tree, or `server_pids`), of the load processes and of the rest of
    the machine over the measured window, and (`metrics`) the server's batching from its
    /metrics. Raises RuntimeError when load generation fails (no connection, a process
    died)."""
    servers = [psutil.Process(p) for p in (server.pids() if server else server_pids or [])]
    clients = [psutil.Process(p) for p in gen.pids()]
    scrape = metrics and server is not None and server.metrics_port > 0
    edges: list[tuple[float, float, float, float, dict[str, float] | None]] = []

    def read() -> None:  # at the window's edges, in this process
        counters = None
        if scrape:
            assert server is not None
            with contextlib.suppress(OSError):
                counters = model_counters(server.scrape(), workload.model)
        now, busy = time.monotonic(), machine_busy_seconds()
        edges.append((now, cpu_seconds(servers), cpu_seconds(clients), busy, counters))

    window = {"warmup_s": warmup_s, "duration_s": duration_s, "timeout_s": timeout_s}
    result = gen.run(address, workload, concurrency, channels=channels, at_start=read,
                     at_end=read, **window)  # fmt: skip
    (t0, srv0, cli0, busy0, m0), (t1, srv1, cli1, busy1, m1) = edges
    wall, n = t1 - t0, result["requests"]
    server_cpu, client_cpu, machine = srv1 - srv0, cli1 - cli0, busy1 - busy0
    point: dict[str, Any] = {
        "model": workload.model, "api": workload.api, **result,
        "server_cores": round(server_cpu / wall, 3) if servers else None,
        "client_cores": round(client_cpu / wall, 3),
        "other_cores": round(max(0.0, machine - server_cpu - client_cpu) / wall, 3),
        "server_cpu_us_per_request": round(server_cpu * 1e6 / n, 1) if n and servers else None,
        "client_cpu_us_per_request": round(client_cpu * 1e6 / n, 1) if n else None,
        "loadavg": loadavg(),
        # One load process is single-threaded Python: near one core busy, it is the limit.
        "loadgen_saturated": client_cpu / wall >= 0.85 * result["client_processes"],
    }  # fmt: skip
    if workload.streams(concurrency):
        point["streams"] = workload.streams(concurrency)
    if m0 is not None and m1 is not None:
        point.update(server_figures(m0, m1))
    return point


def median_of(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Median per numeric field over the rounds that produced a result; errors summed."""
    ok = [r for r in rounds if "error" not in r]
    out: dict[str, Any] = {"rounds": len(ok)}
    if not ok:
        out["error"] = rounds[0]["error"] if rounds else "not measured"
        return out
    for key in ("inferences_per_s", "p50_ms", "p99_ms", "server_cores", "client_cores",
                "server_cpu_us_per_request", "other_cores"):  # fmt: skip
        values = [r[key] for r in ok if r.get(key) is not None]
        if values:
            out[key] = round(statistics.median(values), 3)
    ips = [r["inferences_per_s"] for r in ok]
    out["inferences_per_s_range"] = [min(ips), max(ips)]
    out["error_count"] = sum(r.get("error_count", 0) for r in ok)
    checks = {r.get("response_check", "ok") for r in ok} - {"ok"}
    if checks:
        out["response_check"] = sorted(checks)[0]
    return out


# ---------------------------------------------------------------------- context


def _git(*args: str) -> str:
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5,
                              cwd=PROJECT_ROOT)  # fmt: skip
        return done.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def cpu_model() -> str:
    """The CPU's model name (psutil has none): /proc/cpuinfo on Linux."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine_context() -> dict[str, Any]:
    """What was measured and where: versions, cores, load, and the code's commit."""
    import numpy
    import onnxruntime

    return {
        "cpus": os.cpu_count(), "cpu_model": cpu_model(), "python": platform.python_version(),
        "grpcio": grpc.__version__, "onnxruntime": onnxruntime.__version__,
        "numpy": numpy.__version__, "kernel": platform.release(), "loadavg_start": loadavg(),
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "services_commit": _git("log", "-1", "--format=%h %s", "--", "services"),
        "services_uncommitted": bool(_git("status", "--porcelain", "--", "services")),
    }  # fmt: skip
