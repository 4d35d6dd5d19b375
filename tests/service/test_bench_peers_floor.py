"""Both no-op floor servers of the peers benchmark (grpc.aio and native) answering for real:
started by the harness, ModelInfer answered and ids echoed (the peers benchmark's other
pieces: tests/unit/test_bench_peers.py; the measured run: tests/service/test_bench.py)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from bench.harness import start_noop, wait_ready
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.bench import peer_repository

# The peers run starts its own servers with explicit front ends.
pytestmark = pytest.mark.frontends("native")


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    """A repository with model.json and a stand-in model.onnx (the configs only copy it)."""
    return peer_repository(tmp_path)


@pytest.mark.parametrize("front", ["aio", "native"])
def test_noop_servers_answer_fixed_bytes_and_echo_ids(
    repository: Path, tmp_path: Path, front: str
) -> None:
    """Started by the harness (port 0, ports file), ready, ModelInfer answered with
    nnserve's response shape and the request id echoed for perf_analyzer."""
    server = start_noop(repository, "mlp", tmp_path, front)
    try:
        wait_ready(server, timeout_s=30)
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            request = pb.ModelInferRequest(model_name="mlp", id="req-7")
            response = stub.ModelInfer(request, timeout=5)
            assert response.id == "req-7"
            assert [o.name for o in response.outputs] == ["probabilities", "logits"]
            assert len(response.raw_output_contents[0]) == 8  # 1 x 2 FP32
            assert not stub.ModelInfer(pb.ModelInferRequest(model_name="mlp"), timeout=5).id
            config = stub.ModelConfig(pb.ModelConfigRequest(name="mlp"), timeout=5).config
            assert config.max_batch_size == 48 and list(config.input[0].dims) == [4]
    finally:
        server.stop()
    assert server.process.poll() is not None
