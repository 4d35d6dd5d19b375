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
It listens on 127.0.0.1 port 0 and the port it got is read from its log ("Listening
on"); it keeps its TSDB in a temporary directory and is always stopped on exit.

Needs the `prometheus` binary on PATH (Debian: `apt-get install prometheus`, which also
brings `promtool`; `make test` installs it where it can). A missing binary fails the
test, or skips it with NNSERVE_TEST_ALLOW_MISSING_TOOLS=1 (tests/support/tools.py).
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.support.paths import ROOT
from tests.support.process import ToolProcess
from tests.support.tools import require_binary

PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
STACK_RULE_FILES: tuple[Path, ...] = (
    PROMETHEUS_DIR / "rules" / "recording.yml",
    PROMETHEUS_DIR / "rules" / "alerts.yml",
)
# Its web server's log line once bound: msg="Listening on" address=127.0.0.1:43631
LISTENING = re.compile(r'msg="Listening on" address=127\.0\.0\.1:([0-9]+)')

# A target is "host:port", or ("host:port", {extra label: value}).
Target = str | tuple[str, Mapping[str, str]]


class PrometheusError(RuntimeError):
    """The server failed to start, or an API call failed."""


class PrometheusQueryError(PrometheusError):
    """Prometheus rejected a query (bad PromQL, evaluation error)."""

    def __init__(self, expr: str, error_type: str, error: str) -> None:
        super().__init__(f"{error_type}: {error}\n  query: {expr}")
        self.expr = expr
        self.error_type = error_type
        self.error = error


class PrometheusServer(ToolProcess):
    """`prometheus` on 127.0.0.1 with a generated config; a context manager."""

    name = "prometheus"

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
        super().__init__(startup_timeout)
        self.targets = [(t, {}) if isinstance(t, str) else (t[0], dict(t[1])) for t in targets]
        self.job = job
        self.scrape_interval = scrape_interval
        self.evaluation_interval = evaluation_interval
        self.rule_files = [Path(p).resolve() for p in rule_files]
        self.binary = binary or require_binary("prometheus")
        self.port: int | None = None

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

    def command(self, workdir: Path) -> list[str]:
        self.port = None
        config_path = workdir / "prometheus.yml"
        # JSON is YAML: no YAML library needed to write the config.
        config_path.write_text(json.dumps(self.config(), indent=2))
        return [
            self.binary,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={workdir / 'data'}",
            "--web.listen-address=127.0.0.1:0",
            "--web.enable-lifecycle",
            "--log.level=info",
        ]

    def ready(self) -> bool:
        """The port it bound is in its log, and /-/ready answers 200."""
        if self.port is None:
            bound = LISTENING.search(self.log_text())
            if bound is None:
                return False
            self.port = int(bound.group(1))
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def stop(self) -> None:
        """Stops the process (SIGTERM, then SIGKILL) and removes its data."""
        super().stop()
        self.port = None

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
