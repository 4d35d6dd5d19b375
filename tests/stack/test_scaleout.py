"""Scale-out without containers: three classify replicas (`python -m services`, each on
its own loopback ports) behind a real Envoy running deploy/envoy/envoy.yaml.

- Calls over ONE client channel spread across the replicas (each replica's own
  nnserve_requests_total says how many it answered), with correct outputs.
- SIGTERM to one replica while 8 clients keep calling loses no request: the replica
  drains (NOT_SERVING, finishes in-flight work, refuses new requests with UNAVAILABLE,
  exits 0) and Envoy retries what it refused on another replica.
- The replica, restarted on the same ports, rejoins: Envoy's health check finds it
  SERVING and it answers requests again.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.envoy_proxy import ENVOY_CONFIG, EnvoyProxy, local_config
from tests.support.inference import Outputs, call_many, decode_outputs, infer_request, matches
from tests.support.metrics import read_metrics
from tests.support.models import golden_inputs, reference_outputs
from tests.support.process import ServerProcess
from tests.support.scaleout import LOAD_CLIENTS, MODEL
from tests.support.tools import envoy_binary

REPLICAS = 3


def replica(repository: Path, log_dir: Path, index: int) -> ServerProcess:
    """One `python -m services --service classify` process on loopback: port 0 at its
    first start, the same ports again when it restarts (Envoy knows it by address)."""
    return ServerProcess(
        repository, log_dir, "--service", "classify", "--models", MODEL,
        "--host", "127.0.0.1", "--drain-grace-seconds", "5", "--log-level", "WARNING",
        clean_env=True, name=f"replica-{index}",
    )  # fmt: skip


def answered_by(process: ServerProcess) -> float:
    """Successful inference requests for MODEL, from this replica's own /metrics."""
    return read_metrics(process).total("nnserve_requests_total", model=MODEL, code="OK")


@pytest.fixture(scope="module")
def replicas(
    model_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[ServerProcess]]:
    envoy_binary()  # skip (or fail in CI) before starting anything
    log_dir = tmp_path_factory.mktemp("replicas")
    started = [replica(model_repository, log_dir, i) for i in range(REPLICAS)]
    try:
        began = time.monotonic()
        for process in started:
            process.launch()
        for process in started:
            process.wait_serving()
        print(f"\n{REPLICAS} replicas SERVING in {time.monotonic() - began:.1f}s")
        yield started
    finally:
        for process in started:
            process.kill()


@pytest.fixture(scope="module")
def envoy(replicas: list[ServerProcess]) -> Iterator[EnvoyProxy]:
    config = local_config([r.address for r in replicas])
    with EnvoyProxy(config) as proxy:
        proxy.wait_for_hosts("classify", healthy={r.address for r in replicas})
        yield proxy


@pytest.fixture(scope="module")
def request_and_expected(model_repository: Path) -> tuple[pb.ModelInferRequest, Outputs]:
    inputs = golden_inputs(model_repository, MODEL)
    return infer_request(MODEL, inputs), reference_outputs(model_repository, MODEL, inputs)


def answered(replicas: list[ServerProcess]) -> list[float]:
    return [answered_by(r) for r in replicas]


def test_shipped_envoy_config_validates() -> None:
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(ENVOY_CONFIG), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # What the scale-out guarantees rest on (docs/deployment.md).
    for cluster in yaml.safe_load(ENVOY_CONFIG.read_text())["static_resources"]["clusters"]:
        [check] = cluster["health_checks"]
        assert "grpc_health_check" in check, cluster["name"]
        assert cluster["outlier_detection"]["max_ejection_percent"] <= 50


def test_one_channel_spreads_across_replicas(
    replicas: list[ServerProcess],
    envoy: EnvoyProxy,
    request_and_expected: tuple[pb.ModelInferRequest, Outputs],
) -> None:
    calls = 300
    before = answered(replicas)
    call_many(envoy.address, *request_and_expected, count=calls)
    served = [after - b for after, b in zip(answered(replicas), before, strict=True)]
    print(f"\n{calls} calls over one channel, answered per replica: {served}")
    assert sum(served) == calls
    for count in served:
        assert count >= 0.15 * calls, f"a replica got too few requests: {served}"


def test_sigterm_under_load_loses_no_request(
    replicas: list[ServerProcess],
    envoy: EnvoyProxy,
    request_and_expected: tuple[pb.ModelInferRequest, Outputs],
) -> None:
    request, expected = request_and_expected
    victim, survivors = replicas[0], replicas[1:]
    stop = threading.Event()
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()

    def client() -> None:
        with grpc.insecure_channel(envoy.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            while not stop.is_set():
                try:
                    outputs = decode_outputs(stub.ModelInfer(request, timeout=10))
                    outcome = "ok" if matches(outputs, expected) else "wrong"
                except grpc.RpcError as err:
                    outcome = err.code().name
                with lock:
                    outcomes[outcome] += 1

    retries_before = envoy.stats("cluster.classify.upstream_rq_retry")
    survivors_before = answered(survivors)
    threads = [threading.Thread(target=client) for _ in range(LOAD_CLIENTS)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.0)
        with lock:
            before_sigterm = sum(outcomes.values())
        started = time.monotonic()
        exit_code = victim.drain()
        drained_in = time.monotonic() - started
        envoy.wait_for_hosts(
            "classify", healthy={r.address for r in survivors}, unhealthy={victim.address}
        )
        time.sleep(1.0)  # keep the load on with the replica gone
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    survivors_served = [
        after - b for after, b in zip(answered(survivors), survivors_before, strict=True)
    ]
    retries = {
        k: v - retries_before.get(k, 0)
        for k, v in envoy.stats("cluster.classify.upstream_rq_retry").items()
    }
    print(
        f"\n{LOAD_CLIENTS} clients: {dict(outcomes)}; {before_sigterm} before SIGTERM; "
        f"victim exited {exit_code} after {drained_in:.2f}s; survivors answered "
        f"{survivors_served}; Envoy retries {retries}"
    )
    assert exit_code == 0, victim.log_tail()
    failed = "\n".join(envoy.failed_requests())
    assert set(outcomes) == {"ok"}, f"lost requests: {dict(outcomes)}\n{failed}"
    assert outcomes["ok"] >= 50, "too little load to mean anything"
    assert before_sigterm > 0


def test_restarted_replica_rejoins(
    replicas: list[ServerProcess],
    envoy: EnvoyProxy,
    request_and_expected: tuple[pb.ModelInferRequest, Outputs],
) -> None:
    victim = replicas[0]
    if victim.process.poll() is None:
        victim.drain()
    started = time.monotonic()
    victim.start()  # on the ports it had
    envoy.wait_for_hosts("classify", healthy={r.address for r in replicas}, timeout=60)
    healthy_in = time.monotonic() - started
    # Envoy's workers pick up the host a moment after its health check passes.
    deadline = time.monotonic() + 20
    while answered_by(victim) == 0:
        assert time.monotonic() < deadline, (
            f"no request reached the restarted replica: {envoy.host_health('classify')}"
        )
        call_many(envoy.address, *request_and_expected, count=10)
    first_request_in = time.monotonic() - started
    calls = 150
    before = answered(replicas)
    call_many(envoy.address, *request_and_expected, count=calls)
    served = [after - b for after, b in zip(answered(replicas), before, strict=True)]
    print(
        f"\nrestarted replica healthy in Envoy after {healthy_in:.2f}s, first request after "
        f"{first_request_in:.2f}s; {calls} calls, answered per replica: {served}"
    )
    assert sum(served) == calls
    assert served[0] >= 0.15 * calls, f"the restarted replica got too few: {served}"
