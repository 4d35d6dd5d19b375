"""The compose stack for real (make stack-test): docker-compose.yml built and brought up
with `docker compose up --wait`, checked from outside, taken down with `down -v`.
tests/support/compose_stack.py says how the shipped files are adapted to this machine.

- classify and sequence become healthy through their compose healthchecks;
- the client CLI, run from the host, answers for all five models exactly as it does
  against in-process servers on the same model repository;
- Prometheus (Debian's, in a container) scrapes both services and answers a p99 latency
  query for every model.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nnserve_client import NNServeClient
from tests.support.compose_stack import (
    Stack,
    build_args,
    compose_up,
    published,
    seed_and_prometheus,
)
from tests.support.docker_engine import DockerEngine, log
from tests.support.models import ALL_MODELS, CLASSIFY_MODELS
from tests.support.paths import ROOT
from tests.support.servers import RunningServer

pytestmark = pytest.mark.docker

# The README's examples, one per model.
README_FEATURES = (
    "age=35",
    "years_experience=8",
    "monthly_income=4200",
    "debt_ratio=0.3",
    "credit_score=720",
    "loan_amount=15000",
    "loan_term_months=36",
    "dependents=1",
)
CLI_CALLS: dict[str, list[str]] = {
    **{
        name: [
            "loan",
            name,
            *[f"--feature={f}" for f in README_FEATURES],
        ]
        for name in ("perceptron", "mlp")
    },
    "cnn": ["digit", "cnn", "--sample", "7"],
    **{
        name: ["logs", name, "--events", "http.request.received,auth.token.validated"]
        for name in ("lstm", "transformer")
    },
}


@pytest.fixture(scope="module")
def stack(docker_engine: DockerEngine, model_repository: Path) -> Iterator[Stack]:
    ports = {
        "classify": ("classify", 50051),
        "classify-metrics": ("classify", 9091),
        "sequence": ("sequence", 50052),
        "sequence-metrics": ("sequence", 9092),
        "prometheus": ("prometheus", 9090),
    }
    override = f"""
services:{seed_and_prometheus(model_repository)}
  classify:{build_args()}{published(50051, 9091)}
  sequence:{build_args()}{published(50052, 9092)}
"""
    with compose_up(
        docker_engine,
        "stack",
        ["docker-compose.yml"],
        override,
        ports,
        services=["classify", "sequence", "prometheus"],
        build=["classify", "prometheus"],  # sequence runs the same image
    ) as running:
        yield running


def test_services_are_healthy(stack: Stack) -> None:
    containers = {c["Service"]: c for c in stack.containers()}
    for service in ("classify", "sequence"):
        assert containers[service]["State"] == "running", containers[service]
        assert containers[service]["Health"] == "healthy", containers[service]
    assert containers["trainer"]["ExitCode"] == 0
    for service in ("classify", "sequence"):
        with NNServeClient(stack.address(service)) as client:
            assert client.health() == "SERVING"


def run_cli(address: str, args: list[str]) -> Any:
    result = subprocess.run(
        [sys.executable, "-m", "nnserve_client", "--address", address, "--json", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def assert_same(got: Any, want: Any, where: str = "") -> None:
    """Equal JSON, floats to 1e-5 (same model, same ONNX Runtime build)."""
    if isinstance(want, float):
        assert math.isclose(got, want, rel_tol=1e-5, abs_tol=1e-6), where
    elif isinstance(want, dict):
        assert got.keys() == want.keys(), where
        for key in want:
            assert_same(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_same(g, w, f"{where}[{i}]")
    else:
        assert got == want, where


@pytest.mark.parametrize("model", ALL_MODELS)
def test_cli_answers_from_the_containers(
    stack: Stack, model: str, classify_server: RunningServer, sequence_server: RunningServer
) -> None:
    service, reference = (
        ("classify", classify_server) if model in CLASSIFY_MODELS else ("sequence", sequence_server)
    )
    got = run_cli(stack.address(service), CLI_CALLS[model])
    want = run_cli(reference.address, CLI_CALLS[model])
    assert got["model"] == model
    assert_same(got, want, model)


def test_prometheus_scrapes_both_services_and_answers_p99(stack: Stack) -> None:
    deadline = time.monotonic() + 90
    while True:
        targets = stack.prometheus("targets", state="active")["activeTargets"]
        nnserve = {
            t["labels"]["service"]: t["health"] for t in targets if t["labels"]["job"] == "nnserve"
        }
        if nnserve == {"classify": "up", "sequence": "up"}:
            break
        assert time.monotonic() < deadline, f"targets not up: {nnserve}"
        time.sleep(1)

    # Traffic for every model, spread over two scrapes so that rate() has two samples.
    query = (
        "histogram_quantile(0.99, sum by (le, model) "
        '(rate(nnserve_request_duration_seconds_bucket{job="nnserve"}[1m])))'
    )
    deadline = time.monotonic() + 120
    while True:
        for model in ALL_MODELS:
            service = "classify" if model in CLASSIFY_MODELS else "sequence"
            run_cli(stack.address(service), CLI_CALLS[model])
        p99 = {
            s["metric"]["model"]: float(s["value"][1])
            for s in stack.prometheus("query", query=query)["result"]
        }
        if set(p99) == set(ALL_MODELS) and all(0 < v < 10 for v in p99.values()):
            break
        assert time.monotonic() < deadline, f"no p99 for every model: {p99}"
        time.sleep(5)
    log(f"p99 request latency by model (Prometheus, 1m): {p99}")
