"""The third-party peers, MLServer and Triton: each in its own virtualenv, made on first
use, and started on 127.0.0.1 through the harness's launcher.

MLServer and nvidia-pytriton pin protobuf and grpcio versions that clash with nnserve's,
so each lives under bench/.cache/peers/<name>/ (git-ignored), rebuilt when the stamp of
its requirements and Python does not match. Triton is prepared the way pytriton does it:
the wheel's tritonserver folder with the Python-backend stub of this Python, the wheel's
libraries on LD_LIBRARY_PATH. A peer that cannot be installed or started raises
PeerUnavailable with the reason.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.harness import HOST, Server, ServerError, launch, wait_ready
from bench.peers import configs
from bench.workload import ModelInfo

log = logging.getLogger("bench")

CACHE = Path(__file__).resolve().parents[1] / ".cache" / "peers"
START_TIMEOUT_S = 180.0
ONNXRUNTIME = "onnxruntime==1.31.1"  # the build nnserve serves with (pyproject extra `cpu`)
REQUIREMENTS = {
    # uvloop 0.22+ raises from asyncio.get_event_loop() outside a running loop, which
    # MLServer 1.7.1's inference-pool workers call at start (they die in a restart loop).
    "mlserver": ("mlserver==1.7.1", ONNXRUNTIME, "uvloop==0.21.0"),
    # The wheel bundles tritonserver, its libraries and the Python-backend stubs.
    "triton": ("nvidia-pytriton==0.7.0", ONNXRUNTIME),
}
IMPORTS = {"mlserver": "import mlserver, onnxruntime", "triton": "import pytriton, onnxruntime"}
_PROGRESS = re.compile(r"^(Collecting|Downloading|Installing|Successfully|ERROR)")
_NO_WHEEL = re.compile(r"No matching distribution found for (\S+)")


class PeerUnavailable(RuntimeError):
    """A peer cannot be installed or started here; the message says exactly why."""


@dataclass(frozen=True)
class PeerEnv:
    name: str
    root: Path

    def bin(self, name: str) -> Path:
        return self.root / "bin" / name

    def site_packages(self) -> Path:
        found = sorted(self.root.glob("lib/python3*/site-packages"))
        if not found:
            raise PeerUnavailable(f"{self.name} environment has no site-packages in {self.root}")
        return found[0]


def pip_failure(name: str, code: int, tail: list[str]) -> str:
    """What went wrong, from the last lines pip printed: the missing wheel when that is it."""
    missing = _NO_WHEEL.search("\n".join(tail))
    if missing:
        return (
            f"{name}: no installable wheel for {missing.group(1)} for Python "
            f"{sys.version_info.major}.{sys.version_info.minor} on this platform "
            "(pip: No matching distribution found)"
        )
    return f"{name}: pip install failed (exit {code}): {' | '.join(t for t in tail[-3:] if t)}"


def ensure_env(name: str, cache: Path = CACHE) -> PeerEnv:
    """The peer's environment, created (minutes, once) or reused when its stamp matches."""
    env = PeerEnv(name, cache / name)
    stamp_file = env.root / ".nnserve-peer-env"
    stamp = hashlib.sha256("\n".join([sys.version, *REQUIREMENTS[name]]).encode()).hexdigest()[:16]
    if stamp_file.exists() and stamp_file.read_text().strip() == stamp:
        return env
    shutil.rmtree(env.root, ignore_errors=True)  # stale or half made
    log.info("[%s env] creating %s (first use: a few minutes)", name, env.root)
    # The base interpreter, not this virtualenv: the peer must not see nnserve's packages.
    base = getattr(sys, "_base_executable", sys.executable)
    done = subprocess.run([base, "-m", "venv", str(env.root)], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    if done.returncode != 0:
        raise PeerUnavailable(f"{name}: python -m venv failed: {done.stderr.strip()[-300:]}")
    cmd = [str(env.bin("python")), "-m", "pip", "install", "--progress-bar", "off",
           "--disable-pip-version-check", *REQUIREMENTS[name]]  # fmt: skip
    tail: list[str] = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as pip:
        assert pip.stdout is not None
        for line in pip.stdout:
            tail = [*tail[-19:], line.rstrip()]
            if _PROGRESS.match(line):
                log.info("[%s env] %s", name, line.rstrip()[:160])
    if pip.returncode != 0:
        raise PeerUnavailable(pip_failure(name, pip.returncode, tail))
    check = [str(env.bin("python")), "-c", IMPORTS[name]]
    done = subprocess.run(check, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        raise PeerUnavailable(f"{name}: installed but `{IMPORTS[name]}` fails: {last}")
    stamp_file.write_text(stamp + "\n")
    return env


def _free_port() -> int:
    # MLServer and Triton take their ports on the command line and report none back.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _started(server: Server) -> Server:
    try:
        wait_ready(server, START_TIMEOUT_S)
    except ServerError as exc:
        raise PeerUnavailable(str(exc)) from None
    return server


def start_mlserver(infos: list[ModelInfo], work: Path, queue_delay_ms: float | None) -> Server:
    """`mlserver start <folder>` with our runtime class and adaptive batching."""
    env = ensure_env("mlserver")
    grpc_port = _free_port()
    folder = configs.write_mlserver_folder(
        work / "mlserver", infos, HOST, grpc_port, _free_port(), _free_port(), queue_delay_ms
    )
    # MLServer imports the runtime module from the folder it serves.
    cmd = [str(env.bin("mlserver")), "start", str(folder)]
    return _started(launch("mlserver", cmd, work, cwd=folder, address=f"{HOST}:{grpc_port}",
                           models=[i.name for i in infos]))  # fmt: skip


def triton_layout(env: PeerEnv, target: Path) -> tuple[Path, Path, Path]:
    """The wheel's tritonserver folder copied to `target` with this Python's backend stub
    in backends/python (as pytriton does); returns (binary, backends, libs)."""
    site = env.site_packages()
    dist, libs = site / "pytriton" / "tritonserver", site / "nvidia_pytriton.libs"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not (dist / "bin" / "tritonserver").exists():
        raise PeerUnavailable(f"nvidia-pytriton has no tritonserver binary in {dist}")
    if not stub.exists():
        raise PeerUnavailable(f"nvidia-pytriton has no Python-backend stub for Python {version}")
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(dist, target, ignore=shutil.ignore_patterns("python_backend_stubs"))
    shutil.copy(stub, target / "backends" / "python" / "triton_python_backend_stub")
    # The stub embeds the system's libpython of the same minor version.
    ldd = subprocess.run(["ldd", str(stub)], env={**os.environ, "LD_LIBRARY_PATH": str(libs)},
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    missing = [ln.split()[0] for ln in ldd.stdout.splitlines() if "not found" in ln]
    if missing:
        needs = ", ".join(missing)
        raise PeerUnavailable(f"Triton's Python-backend stub needs {needs}, missing here "
                              f"(Debian: apt-get install libpython{version})")  # fmt: skip
    return target / "bin" / "tritonserver", target / "backends", libs


def start_triton(infos: list[ModelInfo], work: Path, queue_delay_ms: float | None) -> Server:
    """tritonserver, gRPC only, serving model.onnx from a Python-backend model.py with
    dynamic batching."""
    env = ensure_env("triton")
    binary, backends, libs = triton_layout(env, work / "tritonserver")
    repo = work / "triton-repository"
    for info in infos:
        configs.write_triton_repository(repo, info, configs.Batching.of(info, queue_delay_ms))
    grpc_port = _free_port()
    cmd = [str(binary), "--model-repository", str(repo), "--backend-directory", str(backends),
           "--grpc-address", HOST, "--grpc-port", str(grpc_port), "--allow-http", "false",
           "--allow-metrics", "false", "--allow-gpu-metrics", "false", "--log-verbose", "0",
           "--strict-readiness", "true"]  # fmt: skip
    # The stub runs the system libpython: the environment's packages come in on PYTHONPATH.
    libraries = os.pathsep.join(p for p in (str(libs), os.environ.get("LD_LIBRARY_PATH")) if p)
    child_env = {**os.environ, "LD_LIBRARY_PATH": libraries, "PYTHONPATH": str(env.site_packages()),
                 "PATH": f"{env.root / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}  # fmt: skip
    return _started(launch("triton", cmd, work, env=child_env, address=f"{HOST}:{grpc_port}",
                           models=[i.name for i in infos]))  # fmt: skip
