"""A real Prometheus server for tests, on loopback, with the stack's rule files.

    with PrometheusServer(["127.0.0.1:9091"]) as prom:
        prom.wait_for_targets_up()
        prom.wait_for('nnserve:requests:rate1m{model="mlp"} > 0')
        print(prom.values("nnserve:request_duration_seconds:p99_1m"))

The server scrapes the given targets as job "nnserve" (the job the alert rules expect)
every second and evaluates the recording and alert rules of deploy/prometheus/rules
every second, so the 1m recording rules have values a few seconds after traffic starts
(Prometheus 2.x waits about 5 seconds before its first scrape; rates read low until a
whole minute has been scraped, while ratios and quantiles are right from the start).
It keeps its TSDB in a temporary directory and is always stopped on exit.

Needs the `prometheus` binary on PATH (Debian: `apt-get install prometheus`, which also
brings `promtool`; `make test` installs it where it can). `require_binary()` fails a
test where a tool is missing, naming how to install it; with the explicit opt-out
NNSERVE_TEST_ALLOW_MISSING_TOOLS=1 it skips the test instead, and pytest lists every
skip with its reason (-rs in pyproject.toml).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn

import pytest

from tests.process_harness import end_process

REPO_ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = REPO_ROOT / "deploy" / "prometheus"
STACK_RULE_FILES: tuple[Path, ...] = (
    PROMETHEUS_DIR / "rules" / "recording.yml",
    PROMETHEUS_DIR / "rules" / "alerts.yml",
)

# A target is "host:port", or ("host:port", {extra label: value}).
Target = str | tuple[str, Mapping[str, str]]


ALLOW_MISSING_TOOLS = "NNSERVE_TEST_ALLOW_MISSING_TOOLS"
PROMETHEUS_HINT = "Debian/Ubuntu: apt-get install prometheus"


def missing_tool(what: str, hint: str) -> NoReturn:
    """A tool a test needs is missing: fail, unless the run opted out of the tool."""
    reason = f"{what} is missing ({hint})"
    if os.environ.get(ALLOW_MISSING_TOOLS, "").strip() == "1":
        pytest.skip(f"{reason}; skipped because {ALLOW_MISSING_TOOLS}=1")
    pytest.fail(f"{reason}; or set {ALLOW_MISSING_TOOLS}=1 to skip such tests", pytrace=False)


def require_binary(name: str, hint: str = PROMETHEUS_HINT) -> str:
    """Path of a tool on PATH, or fail the calling test (see missing_tool)."""
    path = shutil.which(name)
    if path is None:
        missing_tool(f"`{name}`", hint)
    return path


class PrometheusError(RuntimeError):
    """The server failed to start, or an API call failed."""


class PrometheusQueryError(PrometheusError):
    """Prometheus rejected a query (bad PromQL, evaluation error)."""

    def __init__(self, expr: str, error_type: str, error: str) -> None:
        super().__init__(f"{error_type}: {error}\n  query: {expr}")
        self.expr = expr
        self.error_type = error_type
        self.error = error


class PrometheusServer:
    """Starts `prometheus` on 127.0.0.1 with a generated config; a context manager."""

    def __init__(
        self,
        targets: Iterable[Target] = (),
        *,
        job: str = "nnserve",
        scrape_interval: str = "1s",
        evaluation_interval: str = "1s",
        rule_files: Sequence[Path] = STACK_RULE_FILES,
        binary: str | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        self.targets = [(t, {}) if isinstance(t, str) else (t[0], dict(t[1])) for t in targets]
        self.job = job
        self.scrape_interval = scrape_interval
        self.evaluation_interval = evaluation_interval
        self.rule_files = [Path(p).resolve() for p in rule_files]
        self.binary = binary or require_binary("prometheus")
        self.startup_timeout = startup_timeout
        self.port: int | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path: Path | None = None

    # ----------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        if self.port is None:
            raise PrometheusError("Prometheus is not running")
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict[str, Any]:
        """The Prometheus configuration this server runs with."""
        return {
            "global": {
                "scrape_interval": self.scrape_interval,
                "scrape_timeout": self.scrape_interval,
                "evaluation_interval": self.evaluation_interval,
            },
            "rule_files": [str(p) for p in self.rule_files],
            "scrape_configs": [
                {
                    "job_name": self.job,
                    "static_configs": [
                        {"targets": [target], "labels": labels} for target, labels in self.targets
                    ],
                }
            ],
        }

    def start(self) -> PrometheusServer:
        if self._proc is not None:
            raise PrometheusError("Prometheus is already running")
        self._tmp = tempfile.TemporaryDirectory(prefix="nnserve-prometheus-")
        tmp = Path(self._tmp.name)
        config_path = tmp / "prometheus.yml"
        # JSON is YAML: no YAML library needed to write the config.
        config_path.write_text(json.dumps(self.config(), indent=2))
        try:
            # Prometheus cannot report the port it got for :0, so pick a free one and
            # start again on another if something took it in the meantime.
            for attempt in range(5):
                self.port = _free_loopback_port()
                self._log_path = tmp / f"prometheus-{attempt}.log"
                if self._launch(config_path, tmp / "data"):
                    return self
            raise PrometheusError(f"no free port for Prometheus after 5 tries\n{self.log_tail()}")
        except BaseException:
            self.stop()
            raise

    def _launch(self, config_path: Path, data_dir: Path) -> bool:
        """Starts the process; True once ready, False if its port was taken."""
        assert self._log_path is not None
        with self._log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={data_dir}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--web.enable-lifecycle",
                    "--log.level=info",
                ],
                cwd=config_path.parent,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                log_text = self.log_tail()
                self._proc = None
                if "address already in use" in log_text:
                    return False
                raise PrometheusError(f"Prometheus exited at start\n{log_text}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                    if response.status == 200 and self._proc.poll() is None:
                        return True
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        raise PrometheusError(
            f"Prometheus not ready after {self.startup_timeout}s\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """Stops the process (SIGTERM, then SIGKILL) and removes its data."""
        proc, self._proc = self._proc, None
        if proc is not None:
            end_process(proc)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        self.port = None

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server's log, for failure messages."""
        if self._log_path is None or not self._log_path.exists():
            return ""
        text = self._log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    # ----------------------------------------------------------------- HTTP API

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; returns `data`, raises PrometheusError on failure."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as err:
            # 400 / 422 / 503 carry a JSON error body.
            try:
                body = json.load(err)
            except ValueError:
                raise PrometheusError(f"GET {url}: HTTP {err.code}") from err
        if body.get("status") != "success":
            raise PrometheusQueryError(
                params.get("query", path), body.get("errorType", "?"), body.get("error", "?")
            )
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> Any:
        """Instant query; returns `result` (a list of samples for a vector)."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        return self.api("query", **params)["result"]

    def values(self, expr: str, by: str = "model") -> dict[str, float]:
        """Instant vector query as {value of label `by`: sample value}."""
        return {s["metric"].get(by, ""): float(s["value"][1]) for s in self.query(expr)}

    def wait_for(
        self,
        expr: str,
        predicate: Callable[[Any], bool] = bool,
        timeout: float = 30.0,
        interval: float = 0.5,
    ) -> Any:
        """Polls `expr` until predicate(result) holds (default: any sample); returns it."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if predicate(result):
                return result
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{expr!r} did not match within {timeout}s; last: {result}")
            time.sleep(interval)

    def active_targets(self) -> list[dict[str, Any]]:
        return list(self.api("targets", state="active")["activeTargets"])

    def wait_for_targets_up(self, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Waits until every configured target has been scraped successfully."""
        deadline = time.monotonic() + timeout
        while True:
            targets = self.active_targets()
            if len(targets) == len(self.targets) and all(t["health"] == "up" for t in targets):
                return targets
            if time.monotonic() >= deadline:
                states = [(t["scrapeUrl"], t["health"], t.get("lastError")) for t in targets]
                raise TimeoutError(f"targets not up within {timeout}s: {states}")
            time.sleep(0.25)

    def rule_groups(self) -> list[dict[str, Any]]:
        return list(self.api("rules")["groups"])

    def alerts(self) -> list[dict[str, Any]]:
        """Active (pending or firing) alerts."""
        return list(self.api("alerts")["alerts"])


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
