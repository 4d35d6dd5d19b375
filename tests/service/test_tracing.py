"""Where a request's time goes: OpenTelemetry spans (W3C traceparent from gRPC metadata,
stage child spans) with the SDK's in-memory exporter, the per-stage histograms, and
JSON logs that carry the request id and trace id."""

from __future__ import annotations

import io
import itertools
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from services.ops.logs import JsonFormatter
from services.ops.metrics import STAGES
from tests.support.inference import infer_request
from tests.support.metrics import read_metrics
from tests.support.models import golden_inputs
from tests.support.servers import RunningServer, make_settings, running_server

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


@pytest.fixture(scope="module")
def traced(model_repository: Path) -> Iterator[tuple[RunningServer, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    settings = make_settings(model_repository, service="classify", models=["mlp"])
    with running_server(settings, span_exporter=exporter) as server:
        yield server, exporter


def _spans(exporter: InMemorySpanExporter, trace_id: str) -> list:  # type: ignore[type-arg]
    return [
        s for s in exporter.get_finished_spans()
        if format(s.context.trace_id, "032x") == trace_id
    ]  # fmt: skip


def test_request_span_continues_the_callers_trace_with_stage_children(
    traced: tuple[RunningServer, InMemorySpanExporter], model_repository: Path
) -> None:
    server, exporter = traced
    stub = pb_grpc.GRPCInferenceServiceStub(server.channel())
    request = infer_request("mlp", golden_inputs(model_repository, "mlp"))
    metadata = (("traceparent", TRACEPARENT), ("x-request-id", "trace-test-1"))
    stub.ModelInfer(request, metadata=metadata, timeout=10)
    deadline = time.monotonic() + 5  # the call's span ends as the handler returns
    while len(_spans(exporter, TRACE_ID)) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    spans = _spans(exporter, TRACE_ID)
    (root,) = [s for s in spans if s.kind is SpanKind.SERVER]
    assert root.name == "inference.GRPCInferenceService/ModelInfer"
    assert root.parent is not None and format(root.parent.span_id, "016x") == PARENT_ID
    assert root.attributes["nnserve.request_id"] == "trace-test-1"
    assert root.attributes["rpc.grpc.status_code"] == "OK"
    stages = {s.name: s for s in spans if s.parent and s.parent.span_id == root.context.span_id}
    assert set(stages) == {"decode", "queue", "compute", "encode"}
    for span in stages.values():
        assert root.start_time <= span.start_time <= span.end_time <= root.end_time
        assert span.attributes["nnserve.model"] == "mlp"
    order = ["decode", "queue", "compute", "encode"]
    for first, second in itertools.pairwise(order):
        assert stages[first].end_time <= stages[second].start_time + 1000  # 1 us rounding


def test_untraced_callers_start_a_trace_and_failures_mark_the_span(
    traced: tuple[RunningServer, InMemorySpanExporter],
) -> None:
    server, exporter = traced
    exporter.clear()
    stub = pb_grpc.GRPCInferenceServiceStub(server.channel())
    with pytest.raises(grpc.RpcError):
        stub.ModelInfer(pb.ModelInferRequest(model_name="nope"), timeout=10)
    # The status reaches the client as the server aborts; the span ends right after.
    deadline = time.monotonic() + 5
    while not exporter.get_finished_spans() and time.monotonic() < deadline:
        time.sleep(0.01)
    (span,) = exporter.get_finished_spans()
    assert span.parent is None
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["rpc.grpc.status_code"] == "NOT_FOUND"


def test_tracing_is_off_by_default(classify_server: RunningServer) -> None:
    assert classify_server.server.tracing is None


def test_stage_histograms_sum_to_the_request(
    traced: tuple[RunningServer, InMemorySpanExporter], model_repository: Path
) -> None:
    server, _ = traced
    stub = pb_grpc.GRPCInferenceServiceStub(server.channel())
    request = infer_request("mlp", golden_inputs(model_repository, "mlp"))
    metrics = read_metrics(server)
    before = {s: metrics.total("nnserve_request_stage_seconds_count", stage=s) for s in STAGES}
    for _ in range(20):
        stub.ModelInfer(request, timeout=10)
    metrics = read_metrics(server)
    for stage in STAGES:
        count = metrics.total("nnserve_request_stage_seconds_count", model="mlp", stage=stage)
        assert count - before[stage] == 20, stage
    stage_sum = sum(
        metrics.total("nnserve_request_stage_seconds_sum", model="mlp", stage=s) for s in STAGES
    )
    request_sum = metrics.total("nnserve_request_duration_seconds_sum", model="mlp")
    # Every request so far succeeded, so the stages explain the requests' time (the rest
    # is model lookup and accounting, microseconds).
    assert 0.8 * request_sum <= stage_sum <= request_sum


def test_json_logs_carry_request_and_trace_ids(
    traced: tuple[RunningServer, InMemorySpanExporter],
) -> None:
    server, _ = traced
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("services.rpc.accounting")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        stub = pb_grpc.GRPCInferenceServiceStub(server.channel())
        metadata = (("traceparent", TRACEPARENT), ("x-request-id", "json-log-1"))
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(pb.ModelInferRequest(model_name="nope"), metadata=metadata)
        trailing = dict(err.value.trailing_metadata() or ())
        assert trailing.get("x-request-id") == "json-log-1"
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    (entry,) = [e for e in entries if e.get("request_id") == "json-log-1"]
    assert entry["trace_id"] == TRACE_ID
    assert entry["level"] == "INFO" and "NOT_FOUND" in entry["message"]
