"""Health transitions, graceful drain, reflection, device policy, batching under load,
and the metrics exposition."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.inference import decode_outputs, full_length_request, infer_request
from tests.support.metrics import read_metrics, scrape
from tests.support.models import golden_inputs, reference_outputs
from tests.support.servers import RunningServer, make_settings, running_server
from tests.support.tools import require_binary

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def health_status(server: RunningServer, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(server.channel())
    return stub.Check(health_pb2.HealthCheckRequest(service=service)).status


def test_health_not_serving_until_model_loads_then_serving_then_draining(
    model_repository: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "repo"
    empty.mkdir()
    settings = make_settings(empty, service="classify", models=["mlp"], model_control="explicit")
    with running_server(settings) as server:
        assert health_status(server) == NOT_SERVING
        assert health_status(server, "mlp") == NOT_SERVING
        assert (
            not pb_grpc.GRPCInferenceServiceStub(server.channel())
            .ServerReady(pb.ServerReadyRequest())
            .ready
        )

        shutil.copytree(model_repository / "mlp", empty / "mlp")
        stub = pb_grpc.GRPCInferenceServiceStub(server.channel())
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="mlp"))
        # Load answers after its health updates are applied: no sleep needed.
        assert health_status(server) == SERVING
        assert health_status(server, "mlp") == SERVING
        assert health_status(server, "inference.GRPCInferenceService") == SERVING
        assert health_status(server, "nnserve.v1.Predictor") == SERVING

        watch = health_pb2_grpc.HealthStub(server.channel()).Watch(
            health_pb2.HealthCheckRequest(service="")
        )
        seen = [next(watch).status]

        # A watcher reads as updates come (a client's unread messages may be dropped
        # when the server ends the stream, so the test reads as a real watcher does).
        def read_until_the_stream_ends() -> None:
            with contextlib.suppress(grpc.RpcError):  # the stream ends with the server
                seen.extend(update.status for update in watch)

        reader = threading.Thread(target=read_until_the_stream_ends)
        reader.start()
        server.call(server.server.stop(grace=2.0))
        reader.join(timeout=10)
        assert not reader.is_alive()
        assert seen == [SERVING, NOT_SERVING]


def test_in_flight_requests_complete_during_drain(
    scratch_repository: Path, model_repository: Path
) -> None:
    settings = make_settings(
        scratch_repository, service="sequence", models=["transformer"], inference_threads=1,
        max_batch_size=256,
    )  # fmt: skip
    with running_server(settings) as server:
        # A full batch each: every request runs alone for tens of milliseconds.
        request = full_length_request(model_repository, "transformer", 256)
        stub = pb_grpc.GRPCInferenceServiceStub(server.channel())
        results: list[str] = []

        def send() -> None:
            try:
                stub.ModelInfer(request, timeout=30)
                results.append("OK")
            except grpc.RpcError as exc:
                results.append(exc.code().name)

        threads = [threading.Thread(target=send) for _ in range(8)]
        for t in threads:
            t.start()
        # Each request is a full batch and one runs at a time: wait until one runs and
        # seven queue, so all eight are in the server when the drain starts.
        deadline = time.monotonic() + 5
        while server.server.registry.resolve("transformer").batcher.queue_depth < 7:
            assert time.monotonic() < deadline, "requests never queued"
            time.sleep(0.001)
        server.call(server.server.stop(grace=20.0))
        for t in threads:
            t.join()
        assert results == ["OK"] * 8

    # After the drain the port is closed: new connections fail fast.
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(request, timeout=2)
    assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_requests_during_drain_are_unavailable(scratch_repository: Path) -> None:
    settings = make_settings(scratch_repository, service="classify", models=["mlp"])
    with running_server(settings) as server:
        server.server.state.draining = True  # the first step of stop(), held open
        inputs = golden_inputs(scratch_repository, "mlp")
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.GRPCInferenceServiceStub(server.channel()).ModelInfer(
                infer_request("mlp", inputs)
            )
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "draining" in err.value.details()


def test_reflection_lists_services(classify_server: RunningServer) -> None:
    database = ProtoReflectionDescriptorDatabase(classify_server.channel())
    services = set(database.get_services())
    assert {
        "inference.GRPCInferenceService",
        "nnserve.v1.Predictor",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= services
    file = database.FindFileContainingSymbol("nnserve.v1.Predictor")
    assert file.package == "nnserve.v1"
    assert "Classify" in {m.name for m in file.service[0].method}


def test_require_gpu_on_cpu_machine_leaves_model_unready_others_serve(
    scratch_repository: Path,
) -> None:
    settings = make_settings(
        scratch_repository, service="classify", model_policies={"cnn": "require_gpu"}
    )
    with running_server(settings) as server:
        stub = pb_grpc.GRPCInferenceServiceStub(server.channel())
        index = {m.name: m for m in stub.RepositoryIndex(pb.RepositoryIndexRequest()).models}
        assert index["cnn"].state == "UNAVAILABLE"
        assert "require_gpu" in index["cnn"].reason
        assert "CUDAExecutionProvider" in index["cnn"].reason
        assert index["mlp"].state == "READY" and index["perceptron"].state == "READY"
        assert not stub.ModelReady(pb.ModelReadyRequest(name="cnn")).ready
        assert health_status(server, "cnn") == NOT_SERVING
        assert health_status(server, "mlp") == SERVING
        assert health_status(server) == SERVING
        inputs = golden_inputs(scratch_repository, "cnn")
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(infer_request("cnn", inputs))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "require_gpu" in err.value.details()
        assert stub.ModelInfer(infer_request("mlp", golden_inputs(scratch_repository, "mlp")))
        ready = read_metrics(server).value("nnserve_model_ready", model="cnn", version="1")
        assert ready == 0.0


def test_failed_golden_check_keeps_model_unready(scratch_repository: Path) -> None:
    import json

    path = scratch_repository / "mlp" / "1" / "model.json"
    doc = json.loads(path.read_text())
    case = doc["goldens"]["cases"][0]
    output = next(iter(case["outputs"].values()))
    output["data"][0] = float(output["data"][0]) + 0.5
    path.write_text(json.dumps(doc))
    with running_server(make_settings(scratch_repository, service="classify")) as server:
        stub = pb_grpc.GRPCInferenceServiceStub(server.channel())
        index = {m.name: m for m in stub.RepositoryIndex(pb.RepositoryIndexRequest()).models}
        assert index["mlp"].state == "UNAVAILABLE"
        assert "golden" in index["mlp"].reason and "differs" in index["mlp"].reason
        assert index["cnn"].state == "READY"


def test_corrupt_onnx_file_is_refused_by_checksum(scratch_repository: Path) -> None:
    onnx_file = scratch_repository / "perceptron" / "1" / "model.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes()[:-10])
    with running_server(make_settings(scratch_repository, service="classify")) as server:
        stub = pb_grpc.GRPCInferenceServiceStub(server.channel())
        index = {m.name: m for m in stub.RepositoryIndex(pb.RepositoryIndexRequest()).models}
        assert index["perceptron"].state == "UNAVAILABLE"
        assert "sha256" in index["perceptron"].reason


def test_batches_form_under_concurrency_and_results_stay_per_request(
    classify_server: RunningServer, sequence_server: RunningServer, model_repository: Path
) -> None:
    # Classify: many concurrent single-row requests -> batches bigger than 1 (on the
    # inference threads: the inline fast path, which runs requests alone, is off here).
    settings = make_settings(model_repository, service="classify", models=["mlp"])
    with running_server(settings) as batching:
        stub = pb_grpc.GRPCInferenceServiceStub(batching.channel())
        rows = golden_inputs(model_repository, "mlp")["features"]
        expected = reference_outputs(model_repository, "mlp", {"features": rows})["probabilities"]
        futures = [
            (
                i % len(rows),
                stub.ModelInfer.future(
                    infer_request("mlp", {"features": rows[i % len(rows)][None]})
                ),
            )
            for i in range(300)
        ]
        for i, future in futures:
            got = decode_outputs(future.result(timeout=30))["probabilities"]
            np.testing.assert_allclose(got[0], expected[i], rtol=1e-5, atol=1e-6)
        metrics = read_metrics(batching)
    count = metrics.total("nnserve_batch_size_count", model="mlp")
    bucket_le1 = metrics.total("nnserve_batch_size_bucket", model="mlp", le="1.0")
    assert count > bucket_le1, "no batch larger than one request formed"

    # Sequence: different lengths padded into shared batches, each answer as if alone.
    seq_stub = pb_grpc.GRPCInferenceServiceStub(sequence_server.channel())
    golden = golden_inputs(model_repository, "lstm")
    calls = []
    for i in range(120):
        length = 1 + (i * 7) % min(24, golden["tokens"].shape[1])
        tokens = golden["tokens"][i % len(golden["tokens"]), :length][None]
        tokens = np.where(tokens == 0, 2, tokens)  # keep the prefix free of padding ids
        inputs = {"tokens": tokens, "lengths": np.asarray([length], np.int64)}
        calls.append((inputs, seq_stub.ModelInfer.future(infer_request("lstm", inputs))))
    for inputs, future in calls:
        got = decode_outputs(future.result(timeout=30))
        alone = reference_outputs(model_repository, "lstm", inputs)
        np.testing.assert_allclose(
            got["sequence_probabilities"], alone["sequence_probabilities"], rtol=1e-4, atol=1e-5
        )
        np.testing.assert_allclose(
            got["position_scores"], alone["position_scores"], rtol=1e-4, atol=1e-5
        )


def test_metrics_exposition_is_valid_and_complete(
    classify_server: RunningServer, model_repository: Path
) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(classify_server.channel())
    stub.ModelInfer(infer_request("mlp", golden_inputs(model_repository, "mlp")))
    text = scrape(classify_server)
    for name in (
        "nnserve_requests_total",
        "nnserve_request_duration_seconds_bucket",
        "nnserve_queue_wait_seconds_bucket",
        "nnserve_compute_seconds_bucket",
        "nnserve_batch_size_bucket",
        "nnserve_queue_depth",
        "nnserve_inflight_requests",
        "nnserve_model_ready",
        "nnserve_model_load_seconds",
        "nnserve_model_info",
        "grpc_server_started_total",
        "grpc_server_handled_total",
        "grpc_server_handling_seconds_bucket",
    ):
        assert f"\n{name}" in text, name
    assert 'provider="CPUExecutionProvider"' in text
    promtool = require_binary("promtool")
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_measure_policy_times_providers_and_reports_placement(scratch_repository: Path) -> None:
    settings = make_settings(
        scratch_repository, service="classify", models=["mlp"], device_policy="measure"
    )
    with running_server(settings) as server:
        stub = pb_grpc.GRPCInferenceServiceStub(server.channel())
        config = stub.ModelConfig(pb.ModelConfigRequest(name="mlp")).config
        placement = config.parameters["placement_CPUExecutionProvider"].string_value
        # On this CPU-only machine only the CPU is timed, at batch 1, 8 and the max batch.
        assert "batch 1:" in placement and "batch 8:" in placement and "batch 64:" in placement
        timed = read_metrics(server).values("nnserve_placement_seconds", model="mlp")
        assert len(timed) == 3 and all(value > 0 for value in timed)
        response = stub.ModelInfer(infer_request("mlp", golden_inputs(scratch_repository, "mlp")))
        assert response.outputs
