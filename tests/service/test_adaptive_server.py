"""Closed-loop batching on a real server: one that backs off under a target it cannot meet.
(The AIMD controller on its own and its knobs in the batcher: tests/unit/test_adaptive.py.)"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from services.batching.adaptive import WINDOW
from tests.support.inference import infer_request
from tests.support.metrics import read_metrics
from tests.support.models import golden_inputs
from tests.support.servers import make_settings, running_server


def test_a_server_under_an_unmeetable_target_shrinks_its_batches(
    scratch_repository: Path,
) -> None:
    settings = make_settings(
        scratch_repository, service="classify", models=["mlp"], latency_target_ms=0.000001,
    )  # fmt: skip
    with running_server(settings) as server:
        stub = pb_grpc.GRPCInferenceServiceStub(server.channel())
        config = stub.ModelConfig(pb.ModelConfigRequest(name="mlp")).config
        assert config.parameters["latency_target_ms"].string_value == "1e-06"
        request = infer_request("mlp", golden_inputs(scratch_repository, "mlp"))
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda _: stub.ModelInfer(request, timeout=30), range(3 * WINDOW)))
        caps = read_metrics(server).values("nnserve_batch_cap", model="mlp")
        assert caps and caps[0] < 64  # every window missed the target: backed off
        config = stub.ModelConfig(pb.ModelConfigRequest(name="mlp")).config
        assert int(config.parameters["adaptive_batch_cap"].string_value) == caps[0]
