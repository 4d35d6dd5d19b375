"""What is particular to the native front end (NNSERVE_FRONTEND=native): calls received
together are queued before a batch forms, a call whose deadline passes while queued is
never run, every other method reaches grpc.aio behind it on the same port, and settings
the native front cannot honour run the aio front end (said in the log and a metric).

The protocol and behaviour tests run against both front ends (tests/conftest.py)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.metrics import read_metrics
from tests.support.models import golden_inputs
from tests.support.servers import (
    RunningServer,
    hold_inference_thread,
    make_settings,
    running_server,
)

# What is particular to the native front end.
pytestmark = pytest.mark.frontends("native")


def metric(server: RunningServer, name: str, **labels: str) -> float:
    return read_metrics(server).total(name, **labels)


def mlp_request(repository: Path) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="mlp")
    for name, array in golden_inputs(repository, "mlp").items():
        row = np.ascontiguousarray(array[:1], dtype=np.float32)
        request.inputs.add(name=name, datatype="FP32", shape=list(row.shape))
        request.raw_input_contents.append(row.tobytes())
    return request


@pytest.fixture
def native_mlp(model_repository: Path) -> Iterator[RunningServer]:
    settings = make_settings(
        model_repository, service="classify", models=["mlp"], frontend="native",
        inference_threads=1,
    )  # fmt: skip
    with running_server(settings) as server:
        yield server


def test_native_front_batches_calls_and_forwards_every_other_method(
    native_mlp: RunningServer, model_repository: Path
) -> None:
    server = native_mlp
    assert server.server.native is not None
    assert metric(server, "nnserve_frontend_info", frontend="native") == 1
    channel = server.channel()
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    request = mlp_request(model_repository)
    alone = stub.ModelInfer(request, timeout=10)
    batches_before = metric(server, "nnserve_batch_size_count", model="mlp")
    rows_before = metric(server, "nnserve_batch_size_sum", model="mlp")
    with hold_inference_thread(server, timeout=20):
        futures = [stub.ModelInfer.future(request, timeout=20) for _ in range(40)]
        deadline = time.monotonic() + 10  # every call received and queued
        while server.server.plane.inflight_requests < 40 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.server.plane.inflight_requests == 40
    answers = [f.result() for f in futures]
    assert all(a.raw_output_contents == alone.raw_output_contents for a in answers)
    batches = metric(server, "nnserve_batch_size_count", model="mlp") - batches_before
    rows = metric(server, "nnserve_batch_size_sum", model="mlp") - rows_before
    assert rows == 40
    assert batches < 40  # queued together, run together (max_batch_size allows 64 rows)
    # Methods the native front does not serve itself, on the same port.
    assert stub.ModelMetadata(pb.ModelMetadataRequest(name="mlp")).name == "mlp"
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    streamed = list(stub.ModelStreamInfer(iter([request, request]), timeout=10))
    assert [s.error_message for s in streamed] == ["", ""]
    assert (
        metric(server, "grpc_server_handled_total", grpc_method="ModelInfer", grpc_code="OK") == 41
    )


def test_a_native_call_whose_deadline_passes_in_the_queue_is_never_run(
    native_mlp: RunningServer, model_repository: Path
) -> None:
    server = native_mlp
    stub = pb_grpc.GRPCInferenceServiceStub(server.channel())
    request = mlp_request(model_repository)
    stub.ModelInfer(request, timeout=10)
    batches_before = metric(server, "nnserve_batch_size_count", model="mlp")
    with hold_inference_thread(server, timeout=20):
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(request, timeout=0.3)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        deadline = time.monotonic() + 5  # the front's cancel reached the data plane
        while server.server.plane.inflight_requests and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.server.plane.inflight_requests == 0
    stub.ModelInfer(request, timeout=10)  # served again; the expired call never ran
    assert metric(server, "nnserve_batch_size_count", model="mlp") - batches_before == 1
    assert metric(server, "nnserve_requests_total", model="mlp", code="DEADLINE_EXCEEDED") == 1


def test_settings_the_native_front_cannot_honour_run_aio_and_say_why(
    model_repository: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(
        model_repository, service="classify", models=["mlp"], frontend="native",
        max_connection_age_seconds=60,
    )  # fmt: skip
    with (
        caplog.at_level(logging.INFO, logger="services.rpc.server"),
        running_server(settings) as server,
    ):
        assert server.server.native is None
        assert metric(server, "nnserve_frontend_info", frontend="aio") == 1
        assert metric(server, "nnserve_frontend_info", frontend="native") == 0
        stub = pb_grpc.GRPCInferenceServiceStub(server.channel())
        assert stub.ModelInfer(mlp_request(model_repository), timeout=10).outputs
    assert any(
        "aio instead of native" in r.getMessage() and "connection age" in r.getMessage()
        for r in caplog.records
    )


def test_an_oversized_native_message_is_refused_with_resource_exhausted(
    model_repository: Path,
) -> None:
    settings = make_settings(
        model_repository, service="classify", models=["mlp"], frontend="native",
        max_message_bytes=4096,
    )  # fmt: skip
    with running_server(settings) as server:
        stub = pb_grpc.GRPCInferenceServiceStub(server.channel())
        request = mlp_request(model_repository)
        request.raw_input_contents.append(b"\0" * 8192)
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(request, timeout=10)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_message_bytes" in (err.value.details() or "")
        assert stub.ModelInfer(mlp_request(model_repository), timeout=10).outputs
