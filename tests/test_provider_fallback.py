"""A model whose policy allows CUDA but runs on the CPU says so, and why: in the log, in
ModelConfig (parameter execution_provider_fallback) and in nnserve_provider_fallback.

One real server, one policy per model: mlp the default (allow_cpu_fallback), cnn
`measure`, perceptron `cpu_only` (never asks for CUDA, so never falls back). With the CPU
build of ONNX Runtime (this machine, CI) the first two report `cuda_not_in_build`; with
the GPU build on a GPU machine they run on CUDA and report nothing.
"""

from __future__ import annotations

import logging
import subprocess
import urllib.request
from pathlib import Path

import onnxruntime as ort
import pytest

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from protos import nnserve_pb2 as npb
from protos import nnserve_pb2_grpc as npb_grpc
from tests.server_harness import make_settings, running_server

ROOT = Path(__file__).resolve().parents[1]
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def _gpu_listed() -> bool:
    """Whether nvidia-smi lists a GPU here: the same rule as the Makefile's ORT=auto."""
    decided = subprocess.run(
        ["sh", "bench/ort_build.sh", "auto"], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    return decided.stdout.strip() == "gpu"


def test_fallback_reported_in_log_model_config_and_metric(
    scratch_repository: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="services.runtime")
    settings = make_settings(
        scratch_repository,
        service="classify",
        model_policies={"cnn": "measure", "perceptron": "cpu_only"},
    )
    cpu_build = CUDA not in ort.get_available_providers()
    with running_server(settings) as server:
        v2 = pb_grpc.GRPCInferenceServiceStub(server.channel())
        domain = npb_grpc.PredictorStub(server.channel())
        metrics = urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()
        fallback_lines = [
            line for line in metrics.splitlines() if line.startswith("nnserve_provider_fallback{")
        ]
        for model, may_fall_back in (("mlp", True), ("cnn", True), ("perceptron", False)):
            config = v2.ModelConfig(pb.ModelConfigRequest(name=model)).config
            described = domain.DescribeModel(npb.DescribeModelRequest(model_name=model))
            reported = config.parameters["execution_provider_fallback"].string_value
            series = [line for line in fallback_lines if f'model="{model}"' in line]
            if may_fall_back and cpu_build:
                assert described.provider == CPU
                assert reported == "cuda_not_in_build"
                assert len(series) == 1
                assert 'reason="cuda_not_in_build"' in series[0] and 'version="1"' in series[0]
                assert float(series[0].split()[-1]) == 1.0
            else:  # cpu_only asked for the CPU; on a GPU build the others got CUDA
                assert described.provider == (CPU if model == "perceptron" else CUDA)
                assert reported == ""
                assert series == []
    records = [r for r in caplog.records if "falls back to" in r.getMessage()]
    fell = sorted(r.getMessage().split()[1] for r in records)
    if cpu_build:
        assert fell == ["cnn/1", "mlp/1"]
        # The CPU build on a machine without a GPU was chosen for it: INFO, not WARNING.
        level = logging.WARNING if _gpu_listed() else logging.INFO
        assert {r.levelno for r in records} == {level}
        assert all("cuda_not_in_build" in r.getMessage() for r in records)
    else:
        assert fell == []
