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

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from nnserve_client import NNServeClient, NNServeError, ServingStatus
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import golden_inputs, reference_outputs
from tests.envoy_proxy import ENVOY_CONFIG, EnvoyProxy, envoy_binary, free_port, local_config
from tests.test_kserve_api import decode_outputs, infer_request

ROOT = Path(__file__).resolve().parent.parent
MODEL = "mlp"
REPLICAS = 3
LOAD_CLIENTS = 8
Outputs = dict[str, np.ndarray]


class Replica:
    """One `python -m services --service classify` process on fixed loopback ports."""

    def __init__(self, repository: Path, log_dir: Path, index: int) -> None:
        self.repository = repository
        self.log_path = log_dir / f"replica-{index}.log"
        self.grpc_port = free_port()
        self.metrics_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("NNSERVE_")}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "services",
                    "--service",
                    "classify",
                    "--models",
                    MODEL,
                    "--host",
                    "127.0.0.1",
                    "--grpc-port",
                    str(self.grpc_port),
                    "--metrics-port",
                    str(self.metrics_port),
                    "--repository",
                    str(self.repository),
                    "--drain-grace-seconds",
                    "5",
                    "--log-level",
                    "WARNING",
                ],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_serving(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        with NNServeClient(self.address, timeout=1.0) as client:
            while True:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise RuntimeError(f"replica exited at start:\n{self.log_tail()}")
                try:
                    if client.health() == ServingStatus.SERVING:
                        return
                except NNServeError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"replica not SERVING in {timeout}s:\n{self.log_tail()}")
                time.sleep(0.1)

    def answered(self) -> float:
        """Successful inference requests for MODEL, from this replica's own /metrics."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            if family.name == "nnserve_requests"
            for sample in family.samples
            if sample.name == "nnserve_requests_total"
            and sample.labels.get("model") == MODEL
            and sample.labels.get("code") == "OK"
        )

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM, then the exit code once the drain is over."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="module")
def replicas(model_repository: Path) -> Iterator[list[Replica]]:
    envoy_binary()  # skip (or fail in CI) before starting anything
    with tempfile.TemporaryDirectory(prefix="nnserve-replicas-") as log_dir:
        started = [Replica(model_repository, Path(log_dir), i) for i in range(REPLICAS)]
        try:
            began = time.monotonic()
            for replica in started:
                replica.start()
            for replica in started:
                replica.wait_serving()
            print(f"\n{REPLICAS} replicas SERVING in {time.monotonic() - began:.1f}s")
            yield started
        finally:
            for replica in started:
                replica.kill()


@pytest.fixture(scope="module")
def envoy(replicas: list[Replica]) -> Iterator[EnvoyProxy]:
    config = local_config([r.address for r in replicas], free_port(), free_port())
    with EnvoyProxy(config) as proxy:
        proxy.wait_for_hosts("classify", healthy={r.address for r in replicas})
        yield proxy


@pytest.fixture(scope="module")
def request_and_expected(model_repository: Path) -> tuple[pb.ModelInferRequest, Outputs]:
    inputs = golden_inputs(model_repository, MODEL)
    return infer_request(MODEL, inputs), reference_outputs(model_repository, MODEL, inputs)


def matches(outputs: Outputs, expected: Outputs) -> bool:
    return outputs.keys() == expected.keys() and all(
        np.allclose(outputs[name], value, rtol=1e-5, atol=1e-6) for name, value in expected.items()
    )


def call_many(address: str, request: pb.ModelInferRequest, expected: Outputs, count: int) -> None:
    """`count` calls over one channel; every answer must be the model's."""
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(count):
            assert matches(decode_outputs(stub.ModelInfer(request, timeout=10)), expected)


def answered(replicas: list[Replica]) -> list[float]:
    return [r.answered() for r in replicas]


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
    replicas: list[Replica],
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
    replicas: list[Replica],
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
        exit_code = victim.terminate()
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
    replicas: list[Replica],
    envoy: EnvoyProxy,
    request_and_expected: tuple[pb.ModelInferRequest, Outputs],
) -> None:
    victim = replicas[0]
    if victim.proc is not None and victim.proc.poll() is None:
        victim.terminate()
    started = time.monotonic()
    victim.start()
    victim.wait_serving()
    envoy.wait_for_hosts("classify", healthy={r.address for r in replicas}, timeout=60)
    healthy_in = time.monotonic() - started
    # Envoy's workers pick up the host a moment after its health check passes.
    deadline = time.monotonic() + 20
    while victim.answered() == 0:
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
