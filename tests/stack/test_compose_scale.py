"""The scale-out stack in containers (make stack-test): docker-compose.yml with
docker-compose.scale.yml, three classify and two sequence replicas behind Envoy,
Prometheus discovering every replica. tests/support/compose_stack.py says how the shipped files
are adapted to this machine; test_scaleout.py runs the same checks on plain processes.

- every replica becomes healthy, and so does Envoy; Prometheus finds all five replicas;
- calls over one client channel to Envoy spread across the classify replicas (each
  replica's own nnserve_requests_total, read inside its container);
- `docker stop` (SIGTERM) of one replica while 8 clients keep calling loses no request;
- `docker start` brings it back, and it answers requests again.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.compose_stack import (
    Stack,
    build_args,
    compose_up,
    published,
    seed_and_prometheus,
)
from tests.support.docker_engine import DockerEngine, log
from tests.support.inference import Outputs, call_many, decode_outputs, infer_request, matches
from tests.support.metrics import Metrics
from tests.support.models import golden_inputs, reference_outputs
from tests.support.scaleout import LOAD_CLIENTS, MODEL

pytestmark = pytest.mark.docker

REPLICAS = {"classify": 3, "sequence": 2}  # docker-compose.scale.yml
METRICS_PORT = {"classify": 9091, "sequence": 9092}


@pytest.fixture(scope="module")
def scaled(docker_engine: DockerEngine, model_repository: Path) -> Iterator[Stack]:
    ports = {
        "classify": ("envoy", 50051),
        "sequence": ("envoy", 50052),
        "prometheus": ("prometheus", 9090),
    }
    override = f"""
services:{seed_and_prometheus(model_repository)}
  classify:{build_args()}
  sequence:{build_args()}
  envoy:{build_args()}{published(50051, 50052)}
"""
    with compose_up(
        docker_engine,
        "scale",
        ["docker-compose.yml", "docker-compose.scale.yml"],
        override,
        ports,
        services=["classify", "sequence", "envoy", "prometheus"],
        build=["classify", "prometheus", "envoy"],
    ) as running:
        yield running


@pytest.fixture(scope="module")
def request_and_expected(model_repository: Path) -> tuple[pb.ModelInferRequest, Outputs]:
    inputs = golden_inputs(model_repository, MODEL)
    return infer_request(MODEL, inputs), reference_outputs(model_repository, MODEL, inputs)


def replicas(stack: Stack, service: str) -> list[dict[str, Any]]:
    found = [c for c in stack.containers() if c["Service"] == service]
    return sorted(found, key=lambda c: str(c["Name"]))


def answered(stack: Stack, container: str) -> float:
    """Successful MODEL requests, from the replica's own /metrics (read inside it)."""
    script = (
        "import urllib.request as u; print(u.urlopen("
        f"'http://127.0.0.1:{METRICS_PORT['classify']}/metrics', timeout=5).read().decode())"
    )
    text = stack.engine.run(["docker", "exec", container, "python", "-c", script], quiet=True)
    return Metrics.parse(text.stdout).total("nnserve_requests_total", model=MODEL, code="OK")


def per_replica(stack: Stack, names: list[str]) -> list[float]:
    return [answered(stack, name) for name in names]


def container_state(stack: Stack, name: str, template: str) -> str:
    result = stack.engine.run(["docker", "inspect", "-f", template, name], quiet=True)
    return str(result.stdout.strip())


def test_every_replica_and_envoy_are_healthy(scaled: Stack) -> None:
    for service, count in REPLICAS.items():
        found = replicas(scaled, service)
        assert len(found) == count, found
        assert all(c["Health"] == "healthy" for c in found), found
    [envoy] = replicas(scaled, "envoy")
    assert envoy["Health"] == "healthy"


def test_prometheus_discovers_every_replica(scaled: Stack) -> None:
    deadline = time.monotonic() + 90
    while True:
        targets = scaled.prometheus("targets", state="active")["activeTargets"]
        nnserve = [t for t in targets if t["labels"]["job"] == "nnserve"]
        services = Counter(t["labels"]["service"] for t in nnserve if t["health"] == "up")
        if services == Counter(REPLICAS):
            break
        assert time.monotonic() < deadline, [(t["scrapeUrl"], t["health"]) for t in nnserve]
        time.sleep(1)
    assert len({t["labels"]["instance"] for t in nnserve}) == sum(REPLICAS.values())


def test_one_channel_spreads_across_replicas(
    scaled: Stack, request_and_expected: tuple[pb.ModelInferRequest, Outputs]
) -> None:
    names = [c["Name"] for c in replicas(scaled, "classify")]
    calls = 300
    before = per_replica(scaled, names)
    call_many(scaled.address("classify"), *request_and_expected, count=calls)
    served = [a - b for a, b in zip(per_replica(scaled, names), before, strict=True)]
    log(f"{calls} calls over one channel to Envoy, answered per replica: {served}")
    assert sum(served) == calls
    assert all(count >= 0.15 * calls for count in served), served


def test_docker_stop_under_load_loses_no_request_and_start_rejoins(
    scaled: Stack, request_and_expected: tuple[pb.ModelInferRequest, Outputs]
) -> None:
    request, expected = request_and_expected
    names = [c["Name"] for c in replicas(scaled, "classify")]
    victim = names[0]
    stop = threading.Event()
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()

    def client() -> None:
        with grpc.insecure_channel(scaled.address("classify")) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            while not stop.is_set():
                try:
                    outputs = decode_outputs(stub.ModelInfer(request, timeout=10))
                    outcome = "ok" if matches(outputs, expected) else "wrong"
                except grpc.RpcError as err:
                    outcome = err.code().name
                with lock:
                    outcomes[outcome] += 1

    threads = [threading.Thread(target=client) for _ in range(LOAD_CLIENTS)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.0)
        started = time.monotonic()
        scaled.engine.run(["docker", "stop", "--time", "30", victim])  # SIGTERM, then waits
        stopped_in = time.monotonic() - started
        time.sleep(2.0)  # keep the load on with the replica gone
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    exit_code = container_state(scaled, victim, "{{.State.ExitCode}}")
    log(
        f"{LOAD_CLIENTS} clients through Envoy: {dict(outcomes)}; "
        f"docker stop took {stopped_in:.1f}s, exit code {exit_code}"
    )
    assert exit_code == "0"
    assert set(outcomes) == {"ok"}, f"lost requests: {dict(outcomes)}"
    assert outcomes["ok"] >= 50

    started = time.monotonic()
    scaled.engine.run(["docker", "start", victim])
    deadline = time.monotonic() + 90
    while container_state(scaled, victim, "{{.State.Health.Status}}") != "healthy":
        assert time.monotonic() < deadline, "the restarted replica did not become healthy"
        time.sleep(0.5)
    while answered(scaled, victim) == 0:  # Envoy's health check lets it back in
        assert time.monotonic() < deadline, "no request reached the restarted replica"
        call_many(scaled.address("classify"), request, expected, count=20)
    rejoined_in = time.monotonic() - started
    calls = 150
    before = per_replica(scaled, names)
    call_many(scaled.address("classify"), request, expected, count=calls)
    served = [a - b for a, b in zip(per_replica(scaled, names), before, strict=True)]
    log(f"restarted replica served again after {rejoined_in:.1f}s; {calls} calls: {served}")
    assert sum(served) == calls
    assert served[0] >= 0.15 * calls, served
