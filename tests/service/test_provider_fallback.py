"""A model whose policy allows CUDA but runs on the CPU says so, and why: in the log, in
ModelConfig (parameter execution_provider_fallback) and in nnserve_provider_fallback.

One real server, one policy per model: mlp the default (allow_cpu_fallback), cnn
`measure`, perceptron `cpu_only` (never asks for CUDA, so never falls back). With the CPU
build of ONNX Runtime (this machine, CI) the first two report `cuda_not_in_build` (at
INFO where there is no GPU); with the GPU build they run on CUDA where there is a GPU
and report nothing, and report `no_gpu` (a WARNING) where there is none.
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnxruntime as ort
import pytest

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from protos import nnserve_pb2 as npb
from protos import nnserve_pb2_grpc as npb_grpc
from tests.support.metrics import read_metrics
from tests.support.servers import make_settings, running_server
from tests.support.tools import gpu_listed

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def test_fallback_reported_in_log_model_config_and_metric(
    scratch_repository: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="services.core.runtime")
    settings = make_settings(
        scratch_repository,
        service="classify",
        model_policies={"cnn": "measure", "perceptron": "cpu_only"},
    )
    gpu = gpu_listed()
    if CUDA not in ort.get_available_providers():
        reason = "cuda_not_in_build"
    else:  # the GPU build: CUDA where there is a GPU, else the driver's answer
        reason = "" if gpu else "no_gpu"
    with running_server(settings) as server:
        v2 = pb_grpc.GRPCInferenceServiceStub(server.channel())
        domain = npb_grpc.PredictorStub(server.channel())
        fallbacks = read_metrics(server).select("nnserve_provider_fallback")
        for model, may_fall_back in (("mlp", True), ("cnn", True), ("perceptron", False)):
            config = v2.ModelConfig(pb.ModelConfigRequest(name=model)).config
            described = domain.DescribeModel(npb.DescribeModelRequest(model_name=model))
            reported = config.parameters["execution_provider_fallback"].string_value
            series = [s for s in fallbacks if s.labels.get("model") == model]
            if may_fall_back and reason:
                assert described.provider == CPU
                assert reported == reason
                assert len(series) == 1
                assert series[0].labels["reason"] == reason and series[0].labels["version"] == "1"
                assert series[0].value == 1.0
            else:  # cpu_only asked for the CPU; with a GPU the others got CUDA
                assert described.provider == (CPU if model == "perceptron" else CUDA)
                assert reported == ""
                assert series == []
    records = [r for r in caplog.records if "falls back to" in r.getMessage()]
    fell = sorted(r.getMessage().split()[1] for r in records)
    if reason:
        assert fell == ["cnn/1", "mlp/1"]
        assert all(f": {reason}: " in r.getMessage() for r in records)
        # Only the CPU build on a machine without a GPU (chosen for it) is not a warning.
        quiet = reason == "cuda_not_in_build" and not gpu
        assert {r.levelno for r in records} == {logging.INFO if quiet else logging.WARNING}
    else:
        assert fell == []
