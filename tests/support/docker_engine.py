"""A private Docker engine for the compose stack test, and the local base image.

    with DockerEngine.start_private() as engine:
        engine.ensure_base_image()              # nnserve-local/python:3.11
        engine.run(["docker", "images"])

- Uses the engine that DOCKER_HOST (or the default socket) points at when one answers;
  otherwise starts its own `dockerd` (Debian: apt-get install docker.io) with its data,
  state and socket in a temporary directory, lowered default ulimits (sandboxes that
  cannot raise process limits), and no iptables rules or default bridge. User-defined
  networks, as compose creates them, still work; builds use the host network, since
  containers on those networks have no route out without iptables.
- The base image is Debian bookworm's python3 made with `debootstrap` (apt-get install
  debootstrap), because no public image registry may be reachable. It carries this
  machine's CA bundle, so that pip and apt in image builds get through a TLS-inspecting
  proxy as the host does. The root filesystem is cached as a tarball under
  $XDG_CACHE_HOME/nnserve (default ~/.cache/nnserve): only the first run debootstraps.

The private dockerd is a ToolProcess (tests/support/process.py): started, waited for
until `docker info` answers, stopped by its pid, with its log tail in any failure. It
listens on a Unix socket in its working directory, never on a TCP port.

Needs root (dockerd, debootstrap). `unavailable_reason()` says why an engine cannot run
here; the test skips with that reason, loudly, and fails in CI (CI=true).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from tests.support.process import ToolProcess
from tests.support.tools import compose_binary

BASE_IMAGE = "nnserve-local/python:3.11"
DEBIAN_SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
HOST_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"  # Debian's, in the rootfs too
DAEMON_CONFIG = {
    "default-ulimits": {
        "nofile": {"Name": "nofile", "Soft": 20000, "Hard": 20000},
        "nproc": {"Name": "nproc", "Soft": 32768, "Hard": 32768},
    }
}


def cache_dir() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "nnserve"


def log(message: str) -> None:
    """Progress on stderr, shown even while pytest captures stdout."""
    print(f"[stack] {message}", file=sys.stderr, flush=True)


class PrivateDockerd(ToolProcess):
    """`dockerd` with its data, state and socket in its working directory."""

    name = "dockerd"
    stop_timeout = 60.0
    poll_interval = 0.5

    def __init__(self, startup_timeout: float = 60.0) -> None:
        super().__init__(startup_timeout)
        self.host = ""

    def command(self, workdir: Path) -> list[str]:
        (workdir / "daemon.json").write_text(json.dumps(DAEMON_CONFIG))
        self.host = f"unix://{workdir}/docker.sock"
        return [
            "dockerd",
            "--config-file",
            str(workdir / "daemon.json"),
            "--data-root",
            str(workdir / "data"),
            "--exec-root",
            str(workdir / "exec"),
            "--pidfile",
            str(workdir / "dockerd.pid"),
            "-H",
            self.host,
            "--iptables=false",
            "--bridge=none",
        ]

    def ready(self) -> bool:
        probe = subprocess.run(
            ["docker", "info"],
            env={**os.environ, "DOCKER_HOST": self.host},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
            check=False,
        )
        return probe.returncode == 0

    def remove_workdir(self, workdir: Path) -> None:
        # dockerd leaves its network namespace mount behind (exec-root/netns).
        for mount in _mounts_under(workdir):
            subprocess.run(["umount", "--lazy", mount], check=False)
        subprocess.run(["rm", "-rf", "--one-file-system", str(workdir)], check=False)


class DockerEngine:
    def __init__(self, host: str, daemon: PrivateDockerd | None = None) -> None:
        self.host = host
        self._daemon = daemon
        self.env = {**os.environ, "DOCKER_HOST": host}

    # ------------------------------------------------------------------ lifecycle

    @staticmethod
    def unavailable_reason() -> str | None:
        """Why no engine can be used or started here, or None."""
        if shutil.which("docker") is None:
            return "the docker client is not installed (Debian: apt-get install docker.io)"
        if compose_binary() is None:
            return "Docker Compose v2+ is not installed (pip install -e .[dev])"
        if _running_engine() is not None:
            return None
        if shutil.which("dockerd") is None:
            return (
                "no Docker engine answers and dockerd is not installed (apt-get install docker.io)"
            )
        if os.geteuid() != 0:
            return "no Docker engine answers, and starting dockerd needs root"
        return None

    @classmethod
    def start_private(cls, timeout: float = 60.0) -> DockerEngine:
        """The running engine if one answers, else a private dockerd started here."""
        running = _running_engine()
        if running is not None:
            log(f"using the running Docker engine at {running}")
            return cls(running)
        daemon = PrivateDockerd(timeout).start()
        assert daemon.proc is not None
        log(f"started dockerd (pid {daemon.proc.pid}) at {daemon.host}")
        return cls(daemon.host, daemon)

    def stop(self) -> None:
        """Stops the dockerd started here (never a running engine) and removes its data."""
        daemon, self._daemon = self._daemon, None
        if daemon is not None:
            pid = daemon.proc.pid if daemon.proc is not None else None
            daemon.stop()
            log(f"stopped dockerd (pid {pid})")

    def __enter__(self) -> DockerEngine:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def log_tail(self, lines: int = 30) -> str:
        return self._daemon.log_tail(lines) if self._daemon is not None else ""

    # ------------------------------------------------------------------ commands

    def run(
        self,
        args: Sequence[str],
        *,
        check: bool = True,
        quiet: bool = False,
        timeout: float = 900,
        cwd: Path | None = None,
        input_file: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Runs a command against this engine (DOCKER_HOST set); output captured."""
        stdin = input_file.open("rb") if input_file is not None else subprocess.DEVNULL
        try:
            result = subprocess.run(
                list(args),
                env=self.env,
                cwd=cwd,
                stdin=stdin,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        finally:
            if input_file is not None:
                stdin.close()  # type: ignore[union-attr]
        completed = subprocess.CompletedProcess(
            result.args,
            result.returncode,
            result.stdout.decode(errors="replace"),
            result.stderr.decode(errors="replace"),
        )
        if check and completed.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args)} exited {completed.returncode}\n"
                f"{completed.stdout[-4000:]}\n{completed.stderr[-4000:]}"
            )
        if not quiet and completed.returncode == 0:
            log(f"ok: {' '.join(args)[:160]}")
        return completed

    def has_image(self, name: str) -> bool:
        return (
            self.run(["docker", "image", "inspect", name], check=False, quiet=True).returncode == 0
        )

    def ensure_base_image(self) -> None:
        """nnserve-local/python:3.11 from the cached debootstrap tarball (made if missing)."""
        if self.has_image(BASE_IMAGE):
            return
        tarball = cache_dir() / f"{DEBIAN_SUITE}-python3-rootfs.tar"
        if not tarball.exists():
            build_base_tarball(tarball)
        started = time.monotonic()
        # pip (in builds on this base) uses its own CA list unless told otherwise.
        changes = [
            f"--change=ENV {name}={HOST_CA_BUNDLE}" for name in ("PIP_CERT", "SSL_CERT_FILE")
        ]
        self.run(["docker", "import", *changes, "-", BASE_IMAGE], input_file=tarball)
        log(f"imported {BASE_IMAGE} in {time.monotonic() - started:.1f}s")


def build_base_tarball(tarball: Path) -> None:
    """debootstrap a minimal Debian with python3 and pack it (apt caches dropped)."""
    if shutil.which("debootstrap") is None:
        raise RuntimeError("debootstrap is not installed (apt-get install debootstrap)")
    tarball.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="nnserve-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        log(f"debootstrap {DEBIAN_SUITE} (once; cached in {tarball})")
        result = subprocess.run(
            [
                "nice",
                "-n",
                "10",
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                DEBIAN_SUITE,
                str(rootfs),
            ],
            capture_output=True,
            text=True,
            timeout=1200,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"debootstrap failed\n{result.stdout[-3000:]}\n{result.stderr}")
        # Trust what this machine trusts (e.g. a TLS-inspecting proxy's CA), so that pip
        # and apt inside image builds reach the registries the host reaches.
        if Path(HOST_CA_BUNDLE).is_file():
            shutil.copyfile(HOST_CA_BUNDLE, rootfs / HOST_CA_BUNDLE.lstrip("/"))
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for item in (rootfs / cache).glob("*"):
                if item.is_file():
                    item.unlink()
        partial = tarball.with_suffix(".partial")
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(partial), "."], check=True)
        partial.rename(tarball)
    log(f"base root filesystem built in {time.monotonic() - started:.1f}s")


def _mounts_under(directory: Path) -> list[str]:
    """Mount points below `directory`, deepest first."""
    prefix = f"{directory}/"
    with open("/proc/mounts") as mounts:
        points = [line.split()[1] for line in mounts if line.split()[1].startswith(prefix)]
    return sorted(points, key=len, reverse=True)


def _running_engine() -> str | None:
    """The address of an engine that answers (DOCKER_HOST or the default), or None."""
    if shutil.which("docker") is None:
        return None
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if host.startswith("unix://") and not Path(host.removeprefix("unix://")).exists():
        return None
    probe = subprocess.run(
        ["docker", "info", "--format", "{{.ServerVersion}}"],
        env={**os.environ, "DOCKER_HOST": host},
        capture_output=True,
        timeout=20,
        check=False,
    )
    return host if probe.returncode == 0 else None
