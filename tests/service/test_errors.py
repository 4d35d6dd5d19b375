"""The error model (README, "Errors"), triggered for real: status code and message for each case,
and the server keeps answering good requests afterwards."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from protos import nnserve_pb2 as npb
from protos import nnserve_pb2_grpc as npb_grpc
from tests.support.inference import full_length_request, infer_request
from tests.support.metrics import read_metrics
from tests.support.models import golden_inputs, model_json
from tests.support.servers import (
    RunningServer,
    hold_inference_thread,
    make_settings,
    running_server,
)

Code = grpc.StatusCode


def expect_error(call, request, code: grpc.StatusCode, *fragments: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as err:
        call(request)
    assert err.value.code() == code, err.value.details()
    for fragment in fragments:
        assert fragment in err.value.details(), err.value.details()


def v2(server: RunningServer) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(server.channel())


def features(n: int = 1, width: int = 8) -> np.ndarray:
    return np.zeros((n, width), dtype=np.float32)


def test_unknown_model_and_version(
    servers: dict[str, RunningServer], model_repository: Path
) -> None:
    stub = v2(servers["mlp"])
    inputs = golden_inputs(model_repository, "mlp")
    expect_error(stub.ModelInfer, infer_request("nope", inputs), Code.NOT_FOUND, "unknown model")
    request = infer_request("mlp", inputs)
    request.model_version = "7"
    expect_error(stub.ModelInfer, request, Code.NOT_FOUND, "no version '7'")
    expect_error(
        npb_grpc.PredictorStub(servers["mlp"].channel()).Classify,
        npb.ClassifyRequest(model_name="lstm"),
        Code.NOT_FOUND,
        "unknown model 'lstm'",
    )


def test_wrong_shape_dtype_and_size(
    servers: dict[str, RunningServer], model_repository: Path
) -> None:
    stub = v2(servers["mlp"])
    width = len(model_json(model_repository, "mlp")["classify"]["features"])

    wrong_width = infer_request("mlp", {"features": features(2, width + 1)})
    expect_error(
        stub.ModelInfer, wrong_width, Code.INVALID_ARGUMENT, "'features'", f"must be {width}"
    )

    wrong_rank = infer_request("mlp", {"features": np.zeros((2, width, 1), np.float32)})
    expect_error(stub.ModelInfer, wrong_rank, Code.INVALID_ARGUMENT, "rank 2")

    wrong_dtype = infer_request("mlp", {"features": np.zeros((2, width), np.float64)})
    expect_error(stub.ModelInfer, wrong_dtype, Code.INVALID_ARGUMENT, "FP64", "expects FP32")

    short = infer_request("mlp", {"features": features(2, width)})
    short.raw_input_contents[0] = short.raw_input_contents[0][:-4]
    expect_error(stub.ModelInfer, short, Code.INVALID_ARGUMENT, "bytes")

    unknown_input = infer_request("mlp", {"pixels": features(1, width)})
    expect_error(stub.ModelInfer, unknown_input, Code.INVALID_ARGUMENT, "no input 'pixels'")

    missing = pb.ModelInferRequest(model_name="mlp")
    expect_error(stub.ModelInfer, missing, Code.INVALID_ARGUMENT, "missing")


def test_nan_inf_and_empty_batch(servers: dict[str, RunningServer], model_repository: Path) -> None:
    stub = v2(servers["mlp"])
    width = len(model_json(model_repository, "mlp")["classify"]["features"])
    for bad in (np.nan, np.inf):
        x = features(3, width)
        x[1, 2] = bad
        expect_error(
            stub.ModelInfer, infer_request("mlp", {"features": x}), Code.INVALID_ARGUMENT, "NaN"
        )
    empty = infer_request("mlp", {"features": features(0, width)})
    expect_error(stub.ModelInfer, empty, Code.INVALID_ARGUMENT, "empty batch")

    domain = npb_grpc.PredictorStub(servers["mlp"].channel())
    expect_error(
        domain.Classify, npb.ClassifyRequest(model_name="mlp"), Code.INVALID_ARGUMENT, "empty"
    )
    row = npb.ClassifyRequest(model_name="mlp")
    row.rows.add(values=[float("nan")] * width)
    expect_error(domain.Classify, row, Code.INVALID_ARGUMENT, "NaN")
    row = npb.ClassifyRequest(model_name="mlp")
    row.rows.add(named={"no_such_feature": 1.0})
    expect_error(domain.Classify, row, Code.INVALID_ARGUMENT, "unknown feature")


def test_sequence_errors(servers: dict[str, RunningServer], model_repository: Path) -> None:
    doc = model_json(model_repository, "lstm")
    max_length = doc["sequence"]["max_length"]
    vocab = len(doc["sequence"]["vocabulary"])
    domain = npb_grpc.PredictorStub(servers["lstm"].channel())

    too_long = npb.SequenceRequest(model_name="lstm")
    too_long.sequences.add(token_ids=npb.TokenIds(ids=[2] * (max_length + 1)))
    expect_error(domain.Sequence, too_long, Code.INVALID_ARGUMENT, "max length")

    unknown = npb.SequenceRequest(model_name="lstm")
    unknown.sequences.add(tokens=npb.TokenStrings(tokens=["definitely.not.an.event"]))
    expect_error(domain.Sequence, unknown, Code.INVALID_ARGUMENT, "unknown token")

    out_of_range = npb.SequenceRequest(model_name="lstm")
    out_of_range.sequences.add(token_ids=npb.TokenIds(ids=[2, vocab + 5]))
    expect_error(domain.Sequence, out_of_range, Code.INVALID_ARGUMENT, "outside the vocabulary")

    empty = npb.SequenceRequest(model_name="lstm")
    empty.sequences.add(token_ids=npb.TokenIds(ids=[]))
    expect_error(domain.Sequence, empty, Code.INVALID_ARGUMENT, "empty")

    stub = v2(servers["lstm"])
    tokens = np.full((1, max_length + 3), 2, dtype=np.int64)
    lengths = np.asarray([max_length + 3], dtype=np.int64)
    request = infer_request("lstm", {"tokens": tokens, "lengths": lengths})
    expect_error(stub.ModelInfer, request, Code.INVALID_ARGUMENT, "max length")
    bad_lengths = infer_request(
        "lstm", {"tokens": np.full((1, 4), 2, np.int64), "lengths": np.asarray([9], np.int64)}
    )
    expect_error(stub.ModelInfer, bad_lengths, Code.INVALID_ARGUMENT, "'lengths'")

    wrong_task = npb.ClassifyRequest(model_name="lstm")
    wrong_task.rows.add(values=[1.0])
    expect_error(domain.Classify, wrong_task, Code.INVALID_ARGUMENT, "use Sequence")


def test_message_too_large(scratch_repository: Path, model_repository: Path) -> None:
    settings = make_settings(
        scratch_repository, service="classify", models=["mlp"], max_message_bytes=64 * 1024
    )
    with running_server(settings) as server:
        width = len(model_json(model_repository, "mlp")["classify"]["features"])
        big = infer_request("mlp", {"features": features(4096, width)})  # 128 KiB
        expect_error(v2(server).ModelInfer, big, Code.RESOURCE_EXHAUSTED)
        ok = infer_request("mlp", {"features": features(2, width)})
        assert v2(server).ModelInfer(ok).outputs


def test_queue_full(scratch_repository: Path, model_repository: Path) -> None:
    """A tiny queue and a slow model: concurrent requests overflow it; the others succeed."""
    settings = make_settings(
        scratch_repository,
        service="sequence",
        models=["transformer"],
        max_queue_size=2,
        max_batch_size=64,
        inference_threads=1,
    )
    with running_server(settings) as server:
        heavy = full_length_request(model_repository, "transformer", 64)
        stub = v2(server)
        codes: list[grpc.StatusCode] = []
        lock = threading.Lock()

        def send() -> None:
            try:
                stub.ModelInfer(heavy, timeout=60)
                code = Code.OK
            except grpc.RpcError as exc:
                code = exc.code()
                if code == Code.RESOURCE_EXHAUSTED:
                    assert "queue is full" in exc.details()
            with lock:
                codes.append(code)

        threads = [threading.Thread(target=send) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert codes.count(Code.RESOURCE_EXHAUSTED) >= 1, codes
        assert codes.count(Code.OK) >= 2, codes
        assert set(codes) <= {Code.OK, Code.RESOURCE_EXHAUSTED}

        # The server still serves normally afterwards.
        assert stub.ModelInfer(heavy, timeout=60).outputs


def test_deadline_exceeded_while_queued(scratch_repository: Path, model_repository: Path) -> None:
    settings = make_settings(
        scratch_repository, service="sequence", models=["transformer"], max_batch_size=256,
        inference_threads=1,
    )  # fmt: skip
    with running_server(settings) as server:
        # A request of max_batch_size rows runs alone: 256 rows is tens of ms.
        heavy = full_length_request(model_repository, "transformer", 256)
        stub = v2(server)
        # Six heavy requests run one at a time: far more than 30 ms of queued work.
        blockers = [
            threading.Thread(target=lambda: stub.ModelInfer(heavy, timeout=60)) for _ in range(6)
        ]
        for t in blockers:
            t.start()
        time.sleep(0.01)
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(heavy, timeout=0.03)
        assert err.value.code() == Code.DEADLINE_EXCEEDED
        for t in blockers:
            t.join()
        assert stub.ModelInfer(heavy, timeout=60).outputs


def test_expired_request_is_not_run(scratch_repository: Path, model_repository: Path) -> None:
    """A request whose deadline passes while queued is dropped before it reaches ORT."""
    settings = make_settings(
        scratch_repository, service="sequence", models=["transformer"], inference_threads=1,
        max_batch_size=256,
    )  # fmt: skip
    with running_server(settings) as server:
        # A request of max_batch_size rows runs alone: 256 rows is tens of ms.
        heavy = full_length_request(model_repository, "transformer", 256)
        light = infer_request(
            "transformer",
            {"tokens": np.full((1, 3), 2, np.int64), "lengths": np.asarray([3], np.int64)},
        )
        stub = v2(server)
        rows_before = _metric_sum(server, "nnserve_batch_size_sum", "transformer")
        blockers = [
            threading.Thread(target=lambda: stub.ModelInfer(heavy, timeout=60)) for _ in range(6)
        ]
        for t in blockers:
            t.start()
        time.sleep(0.02)
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(light, timeout=0.03)
        assert err.value.code() == Code.DEADLINE_EXCEEDED
        for t in blockers:
            t.join()
        time.sleep(0.05)
        # Only the blockers' rows were computed: the expired request never ran.
        rows_after = _metric_sum(server, "nnserve_batch_size_sum", "transformer")
        assert rows_after - rows_before == 6 * 256


def _metric_sum(server: RunningServer, metric: str, model: str) -> float:
    return read_metrics(server).total(metric, model=model)


def test_deadline_passing_in_queue_is_counted_as_deadline_exceeded(
    scratch_repository: Path, model_repository: Path
) -> None:
    """The only inference thread is held by a job that waits on an event, so the request
    stays queued past its deadline: the client sees DEADLINE_EXCEEDED, the request is
    counted with that code and as a ModelStatistics failure, and it never runs."""
    settings = make_settings(scratch_repository, service="classify", models=["mlp"],
                             inference_threads=1)  # fmt: skip
    with running_server(settings) as server:
        stub = v2(server)
        request = infer_request("mlp", golden_inputs(model_repository, "mlp"))
        stub.ModelInfer(request, timeout=10)  # one success, for the counts below
        rows_before = _metric_sum(server, "nnserve_batch_size_sum", "mlp")
        with hold_inference_thread(server), pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(request, timeout=0.2)
        assert err.value.code() == Code.DEADLINE_EXCEEDED
        assert stub.ModelInfer(request, timeout=10).outputs  # serves again
        stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name="mlp")).model_stats[0]
        assert stats.inference_stats.fail.count == 1
        assert stats.inference_stats.success.count == 2
        counted = read_metrics(server).total(
            "nnserve_requests_total", model="mlp", code="DEADLINE_EXCEEDED"
        )
        assert counted == 1.0
        # Only the two successful requests' rows were ever computed.
        rows = request.inputs[0].shape[0]
        assert _metric_sum(server, "nnserve_batch_size_sum", "mlp") - rows_before == rows
