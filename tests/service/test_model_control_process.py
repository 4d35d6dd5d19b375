"""Model lifecycle faults against real server processes (`python -m services`, port 0,
ports read from NNSERVE_PORTS_FILE; tests/support/process.py): a corrupt repository at
start, and model transitions under concurrent traffic in poll and explicit mode, with
every request counted."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.inference import index_of, infer_request
from tests.support.metrics import read_metrics
from tests.support.models import golden_inputs
from tests.support.process import ServerProcess, server_process
from tests.support.repository import break_goldens, stage_version

Code = grpc.StatusCode
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class Traffic:
    """Threads sending ModelInfer (no version) in a loop; every outcome is recorded."""

    server: ServerProcess
    request: pb.ModelInferRequest
    threads: int
    outcomes: list[tuple[float, grpc.StatusCode, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Traffic:
        channel = self.server.channel()
        for _ in range(self.threads):
            worker = threading.Thread(target=self._send, args=(channel,), daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def _send(self, channel: grpc.Channel) -> None:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                version = stub.ModelInfer(self.request, timeout=30).model_version
                self.outcomes.append((started, Code.OK, version))
            except grpc.RpcError as exc:
                self.outcomes.append((started, exc.code(), exc.details() or ""))

    def stop(self) -> Traffic:
        self._stop.set()
        for worker in self._workers:
            worker.join(60)
            assert not worker.is_alive(), "a request hung"
        return self

    def codes(self, since: float = 0.0) -> Counter[grpc.StatusCode]:
        return Counter(code for started, code, _ in self.outcomes if started >= since)

    def versions(self, since: float = 0.0) -> Counter[str]:
        return Counter(
            v for started, code, v in self.outcomes if started >= since and code == Code.OK
        )


def test_corrupt_repository_at_start_serves_healthy_models_and_reports_broken_ones(
    model_repository: Path, tmp_path: Path
) -> None:
    repository = tmp_path / "repository"
    shutil.copytree(model_repository, repository)
    onnx = repository / "perceptron" / "1" / "model.onnx"
    onnx.write_bytes(onnx.read_bytes()[: onnx.stat().st_size // 2])  # truncated
    spec = repository / "mlp" / "1" / "model.json"
    spec.write_text(spec.read_text()[:200])  # invalid JSON
    (repository / "cnn" / "1" / "model.onnx").unlink()  # missing file
    spec = repository / "lstm" / "1" / "model.json"
    doc = json.loads(spec.read_text())
    break_goldens(doc)
    spec.write_text(json.dumps(doc))
    (repository / "transformer" / "²").mkdir()  # an odd empty version folder
    broken = {
        "perceptron": "sha256",
        "mlp": "cannot read model.json",
        "cnn": "model.onnx is missing",
        "lstm": "golden",
    }

    with server_process(repository, tmp_path, "--models", '["*"]') as server:
        # server_process waited for health SERVING: one healthy model is enough.
        stub = pb_grpc.GRPCInferenceServiceStub(server.channel())
        health = health_pb2_grpc.HealthStub(server.channel())
        request = infer_request("transformer", golden_inputs(repository, "transformer"))
        assert stub.ModelInfer(request).model_version == "1"
        assert stub.ModelReady(pb.ModelReadyRequest(name="transformer")).ready
        assert health.Check(health_pb2.HealthCheckRequest(service="transformer")).status == (
            SERVING
        )
        assert not stub.ServerReady(pb.ServerReadyRequest()).ready  # strict: not all ready
        index = index_of(stub)
        metrics = read_metrics(server)
        log = server.log()
        for name, reason in broken.items():
            assert not stub.ModelReady(pb.ModelReadyRequest(name=name)).ready
            assert index[(name, "1")].state == "UNAVAILABLE"
            assert reason in index[(name, "1")].reason
            status = health.Check(health_pb2.HealthCheckRequest(service=name)).status
            assert status == NOT_SERVING, name
            assert metrics.value("nnserve_model_ready", model=name, version="1") == 0
            assert metrics.value("nnserve_model_load_failures_total", model=name) == 1
            assert f"model {name}/1 failed to load: " in log
            line = next(x for x in log.splitlines() if f"model {name}/1 failed to load" in x)
            assert reason in line
            with_inputs = infer_request(name, golden_inputs(model_repository, name))
            try:
                stub.ModelInfer(with_inputs)
                raise AssertionError(f"{name} answered")
            except grpc.RpcError as exc:
                assert exc.code() == Code.UNAVAILABLE and reason in (exc.details() or "")
        assert metrics.value("nnserve_model_ready", model="transformer", version="1") == 1
        assert "skipping" in log and "²" in log
        assert "Traceback" not in log


def test_poll_mode_new_version_under_load_loses_no_request(
    model_repository: Path, tmp_path: Path
) -> None:
    """8 clients send ModelInfer without a version while version 2 is copied into the
    repository (staged under a '.' name, then renamed): no request fails, later ones are
    answered by version 2, and version 1 is retired after it drained."""
    repository = tmp_path / "repository"
    shutil.copytree(model_repository / "mlp", repository / "mlp")
    args = ("--models", '["mlp"]', "--model-control", "poll", "--poll-seconds", "0.2")
    with server_process(repository, tmp_path, *args) as server:
        stub = pb_grpc.GRPCInferenceServiceStub(server.channel())
        traffic = Traffic(server, infer_request("mlp", golden_inputs(repository, "mlp")), 8)
        traffic.start()
        time.sleep(1.0)
        stage_version(repository, "mlp", 2)
        deadline = time.monotonic() + 20
        while not traffic.versions()["2"]:
            assert time.monotonic() < deadline, "version 2 never served"
            time.sleep(0.02)
        switched = time.monotonic()
        time.sleep(1.0)
        traffic.stop()

        sent = len(traffic.outcomes)
        assert traffic.codes() == Counter({Code.OK: sent}), traffic.codes()
        assert traffic.versions()["1"] > 0 and traffic.versions()["2"] > 0
        assert set(traffic.versions(since=switched + 0.1)) == {"2"}
        assert set(index_of(stub)) == {("mlp", "2")}  # version 1 retired
        metrics = read_metrics(server)
        ok = sum(
            metrics.total(
                "nnserve_requests_total", code="OK", method="ModelInfer", model="mlp", version=v
            )
            for v in ("1", "2")
        )
        assert ok == sent
        log = server.log()
        assert "model mlp/2 ready" in log and "model mlp/1 retired" in log


def test_explicit_mode_transitions_under_load(model_repository: Path, tmp_path: Path) -> None:
    """Explicit mode, each transition with traffic running.

    What "no failed request" can mean here: traffic to models that are not being
    unloaded (mlp throughout, while perceptron is loaded, mlp reloaded with a new
    version, perceptron unloaded and loaded again) and traffic to a model from the
    moment its Load returns must all succeed, counted exactly. Traffic to a model while
    it is unloaded fails by definition: those requests are accepted and finished (OK),
    or answered UNAVAILABLE (draining) or NOT_FOUND (gone), nothing else, and every
    one sent after Unload returned is NOT_FOUND.
    """
    repository = tmp_path / "repository"
    for name in ("mlp", "perceptron"):
        shutil.copytree(model_repository / name, repository / name)
    args = ("--models", '["mlp"]', "--model-control", "explicit")
    with server_process(repository, tmp_path, *args) as server:
        stub = pb_grpc.GRPCInferenceServiceStub(server.channel())
        load = stub.RepositoryModelLoad
        mlp = Traffic(server, infer_request("mlp", golden_inputs(repository, "mlp")), 4)
        perceptron_request = infer_request("perceptron", golden_inputs(repository, "perceptron"))
        mlp.start()
        time.sleep(0.5)

        load(pb.RepositoryModelLoadRequest(model_name="perceptron"))
        perceptron = Traffic(server, perceptron_request, 4).start()
        time.sleep(0.5)

        stage_version(repository, "mlp", 2)
        load(pb.RepositoryModelLoadRequest(model_name="mlp"))
        reloaded = time.monotonic()
        time.sleep(0.5)

        stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="perceptron"))
        unloaded = time.monotonic()
        time.sleep(0.3)
        perceptron.stop()

        load(pb.RepositoryModelLoadRequest(model_name="perceptron"))
        again = Traffic(server, perceptron_request, 4).start()
        time.sleep(0.5)
        again.stop()
        mlp.stop()

        sent = len(mlp.outcomes)
        assert mlp.codes() == Counter({Code.OK: sent}), mlp.codes()
        assert mlp.versions()["1"] > 0
        assert set(mlp.versions(since=reloaded + 0.1)) == {"2"}
        before_unload = [o for o in perceptron.outcomes if o[0] < unloaded]
        assert before_unload and {o[1] for o in before_unload} <= {
            Code.OK, Code.UNAVAILABLE, Code.NOT_FOUND,
        }  # fmt: skip
        ok_before = sum(1 for o in before_unload if o[1] == Code.OK)
        assert ok_before > 0
        after_unload = perceptron.codes(since=unloaded + 1e-3)
        assert after_unload and set(after_unload) == {Code.NOT_FOUND}
        assert again.codes() == Counter({Code.OK: len(again.outcomes)}) and again.outcomes
        print(
            f"explicit transitions: mlp {sent} sent / {sent} OK; perceptron before unload "
            f"{len(before_unload)} sent, {ok_before} OK; after unload "
            f"{sum(after_unload.values())} NOT_FOUND; reloaded {len(again.outcomes)} OK"
        )
