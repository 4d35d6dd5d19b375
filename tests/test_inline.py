"""The inline fast path: a model whose one-row compute measured tiny at load runs its
requests on the event loop (no inference-thread hand-off) when it is idle: nothing
queued or running for it, and none of its requests finished within the idle gap; other
requests batch on the inference threads as before.
The choice shows in ModelConfig parameters and metrics; answers are the same either way."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import numpy as np

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import golden_inputs, reference_outputs
from tests.server_harness import RunningServer, make_settings, running_server
from tests.test_kserve_api import decode_outputs, infer_request


def _metric(server: RunningServer, name: str) -> float:
    text = urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(name + "{") and 'model="mlp"' in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not exposed")


def _config(server: RunningServer) -> dict[str, str]:
    stub = pb_grpc.GRPCInferenceServiceStub(server.channel())
    config = stub.ModelConfig(pb.ModelConfigRequest(name="mlp")).config
    return {k: v.string_value for k, v in config.parameters.items()}


def test_inline_runs_lone_requests_and_batches_under_concurrency(
    scratch_repository: Path,
) -> None:
    settings = make_settings(
        scratch_repository, service="classify", models=["mlp"], inference_threads=1,
        inline_max_compute_us=1e6,  # always tiny enough: the switch, not the measurement
        inline_idle_gap_us=0,  # idle as soon as nothing is queued or running
    )  # fmt: skip
    with running_server(settings) as server:
        params = _config(server)
        assert params["inline_fast_path"] == "on"
        assert float(params["single_row_compute_us"]) > 0
        assert _metric(server, "nnserve_inline_fast_path") == 1.0
        stub = pb_grpc.GRPCInferenceServiceStub(server.channel())
        inputs = golden_inputs(scratch_repository, "mlp")
        request = infer_request("mlp", inputs)
        expected = reference_outputs(scratch_repository, "mlp", inputs)
        before = _metric(server, "nnserve_inline_runs_total")
        for _ in range(10):  # one at a time: each runs inline
            outputs = decode_outputs(stub.ModelInfer(request, timeout=10))
            for key, value in outputs.items():
                np.testing.assert_allclose(value, expected[key], rtol=1e-5, atol=1e-6)
        assert _metric(server, "nnserve_inline_runs_total") - before == 10

        # A concurrent burst: a handler runs from decode to the end of an inline run
        # without yielding the loop, so requests never overlap and each runs inline,
        # alone, while the inference threads stay free.
        before = _metric(server, "nnserve_inline_runs_total")
        futures = [stub.ModelInfer.future(request, timeout=30) for _ in range(16)]
        for future in futures:
            outputs = decode_outputs(future.result())
            for key, value in outputs.items():
                np.testing.assert_allclose(value, expected[key], rtol=1e-5, atol=1e-6)
        assert _metric(server, "nnserve_inline_runs_total") - before == 16

        # On a stream, inline requests are answered in order, with per-request errors.
        requests = []
        for i in range(20):
            item = infer_request("mlp", inputs)
            item.id = f"r{i}"
            if i == 7:
                item.model_version = "9"  # no such version: an error for this one only
            requests.append(item)
        answers = list(stub.ModelStreamInfer(iter(requests), timeout=30))
        assert [a.infer_response.id for a in answers] == [f"r{i}" for i in range(20)]
        assert [bool(a.error_message) for a in answers] == [i == 7 for i in range(20)]
        assert answers[7].error_message.startswith("NOT_FOUND")


def test_inline_off_keeps_every_request_on_the_inference_threads(
    scratch_repository: Path,
) -> None:
    settings = make_settings(
        scratch_repository, service="classify", models=["mlp"], inline_max_compute_us=0
    )
    with running_server(settings) as server:
        assert _config(server)["inline_fast_path"] == "off"
        assert _metric(server, "nnserve_inline_fast_path") == 0.0
        stub = pb_grpc.GRPCInferenceServiceStub(server.channel())
        request = infer_request("mlp", golden_inputs(scratch_repository, "mlp"))
        for _ in range(5):
            stub.ModelInfer(request, timeout=10)
        assert _metric(server, "nnserve_inline_runs_total") == 0.0


def test_requests_that_follow_each_other_within_the_idle_gap_batch(
    scratch_repository: Path,
) -> None:
    """With an idle gap of 60 s, only the first request (the model never ran) runs inline;
    the next ones arrive within the gap of the previous one's end and go to the threads."""
    settings = make_settings(
        scratch_repository, service="classify", models=["mlp"], inline_max_compute_us=1e6,
        inline_idle_gap_us=60e6,
    )  # fmt: skip
    with running_server(settings) as server:
        assert _config(server)["inline_fast_path"] == "on"
        stub = pb_grpc.GRPCInferenceServiceStub(server.channel())
        inputs = golden_inputs(scratch_repository, "mlp")
        expected = reference_outputs(scratch_repository, "mlp", inputs)
        for _ in range(5):
            outputs = decode_outputs(stub.ModelInfer(infer_request("mlp", inputs), timeout=10))
            for key, value in outputs.items():
                np.testing.assert_allclose(value, expected[key], rtol=1e-5, atol=1e-6)
        assert _metric(server, "nnserve_inline_runs_total") == 1.0
