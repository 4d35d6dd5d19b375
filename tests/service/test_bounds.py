"""What a client sends is bounded before it is used: rows per request, bytes and calls in
flight, status message length, metric label values, method paths kept in memory."""

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
from services.errors import MAX_MESSAGE_CHARS
from tests.support.inference import infer_request
from tests.support.metrics import scrape
from tests.support.models import golden_inputs, model_json
from tests.support.servers import (
    RunningServer,
    hold_inference_thread,
    make_settings,
    running_server,
)

Code = grpc.StatusCode


def test_rows_over_max_batch_size_are_refused_before_decoding(
    classify_server: RunningServer,
) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(classify_server.channel())
    # 200,000 rows: refused by shape, before any array is built (typed and raw alike).
    for raw in (True, False):
        request = infer_request("mlp", {"features": np.zeros((200_000, 8), np.float32)}, raw)
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(request, timeout=10)
        assert err.value.code() == Code.INVALID_ARGUMENT
        assert "at most 64 per request" in err.value.details()
    # The domain API: more rows than a batch holds is refused as well.
    rows = [npb.TabularRow(values=[0.0] * 8) for _ in range(65)]
    with pytest.raises(grpc.RpcError) as err:
        npb_grpc.PredictorStub(classify_server.channel()).Classify(
            npb.ClassifyRequest(model_name="mlp", rows=rows), timeout=10
        )
    assert err.value.code() == Code.INVALID_ARGUMENT
    assert "at most 64" in err.value.details()


def test_domain_rows_are_counted_before_arrays_are_built(sequence_server: RunningServer) -> None:
    """200,000 one-token sequences (padded to the longest, 64 events, they would be ~100
    MB of int64): refused by count in the decoder ("model 'transformer'"), before the
    batcher (which names the version, "model 'transformer/1'") ever sees arrays."""
    short = npb.SequenceInput(token_ids=npb.TokenIds(ids=[2]))
    longest = npb.SequenceInput(token_ids=npb.TokenIds(ids=[2] * 64))
    request = npb.SequenceRequest(model_name="transformer", sequences=[longest] + [short] * 200_000)
    with pytest.raises(grpc.RpcError) as err:
        npb_grpc.PredictorStub(sequence_server.channel()).Sequence(request, timeout=30)
    assert err.value.code() == Code.INVALID_ARGUMENT
    assert "request has 200001 rows; model 'transformer' takes at most 64" in err.value.details()


def test_long_client_strings_never_overflow_the_status(classify_server: RunningServer) -> None:
    """A name of 100,000 characters: the client sees the real error (INVALID_ARGUMENT:
    names and versions have bounded lengths), with a short message, not
    RESOURCE_EXHAUSTED from an oversized status."""
    stub = pb_grpc.GRPCInferenceServiceStub(classify_server.channel())
    name = "m" * 100_000
    for request in (
        pb.ModelInferRequest(model_name=name),
        pb.ModelInferRequest(model_name="mlp", model_version="9" * 100_000),
        pb.ModelMetadataRequest(name=name),
    ):
        call = (
            stub.ModelMetadata if isinstance(request, pb.ModelMetadataRequest) else stub.ModelInfer
        )
        with pytest.raises(grpc.RpcError) as err:
            call(request, timeout=10)
        assert err.value.code() == Code.INVALID_ARGUMENT
        assert len(err.value.details()) < 300
    inputs = {"x" * 50_000: np.zeros((1, 8), np.float32)}
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(infer_request("mlp", inputs), timeout=10)
    assert err.value.code() == Code.INVALID_ARGUMENT
    assert len(err.value.details()) <= MAX_MESSAGE_CHARS
    # Unknown model names do not become metric label values.
    assert "m" * 100 not in scrape(classify_server)


def test_unknown_method_paths_answer_unimplemented_and_are_not_kept(
    classify_server: RunningServer,
) -> None:
    channel = classify_server.channel()
    for i in range(2000):
        path = f"/nnserve.v1.Predictor/{'X' * 1000}{i}"
        with pytest.raises(grpc.RpcError) as err:
            channel.unary_unary(path)(b"", timeout=5)
        assert err.value.code() == Code.UNIMPLEMENTED
    text = scrape(classify_server)
    assert "X" * 100 not in text  # no label values, no cached handlers per path
    assert pb_grpc.GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest()).live


def _held_burst(
    scratch_repository: Path, model_repository: Path, count: int, **limits: int
) -> tuple[list[grpc.StatusCode], list[str]]:
    """With the only inference thread held by a job that waits on an event, send `count`
    full-batch transformer requests at once; release the thread once every request is
    either answered or admitted; return the codes and details, then check the server
    serves again."""
    settings = make_settings(
        scratch_repository, service="sequence", models=["transformer"], inference_threads=1,
        **limits,
    )  # fmt: skip
    request = heavy_request(model_repository)
    with running_server(settings) as server, hold_inference_thread(server) as gate:
        stub = pb_grpc.GRPCInferenceServiceStub(server.channel())
        codes: list[grpc.StatusCode] = []
        details: list[str] = []
        lock = threading.Lock()

        def send() -> None:
            try:
                stub.ModelInfer(request, timeout=30)
                code, detail = Code.OK, ""
            except grpc.RpcError as exc:
                code, detail = exc.code(), exc.details() or ""
            with lock:
                codes.append(code)
                details.append(detail)

        threads = [threading.Thread(target=send) for _ in range(count)]
        for t in threads:
            t.start()
        plane = server.server.plane
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # every request answered or held in the server
            with lock:
                answered = len(codes)
            if answered + plane.inflight_requests >= count:
                break
            time.sleep(0.01)
        gate.set()
        for t in threads:
            t.join(30)
        # The calls' slots are free again (gRPC frees them as the calls finish on the
        # server, a moment after the client has its answer).
        small = infer_request("transformer", golden_inputs(model_repository, "transformer"))
        for attempt in range(50):
            try:
                assert stub.ModelInfer(small, timeout=10).outputs
                break
            except grpc.RpcError as exc:
                assert exc.code() == Code.RESOURCE_EXHAUSTED and attempt < 49
                time.sleep(0.02)
    return codes, details


def heavy_request(model_repository: Path) -> pb.ModelInferRequest:
    max_length = model_json(model_repository, "transformer")["sequence"]["max_length"]
    tokens = np.full((64, max_length), 2, np.int64)
    lengths = np.full(64, max_length, np.int64)
    return infer_request("transformer", {"tokens": tokens, "lengths": lengths})


def _request_bytes(request: pb.ModelInferRequest) -> int:
    return sum(len(raw) for raw in request.raw_input_contents)


def test_bytes_in_flight_are_bounded(scratch_repository: Path, model_repository: Path) -> None:
    """Accepted requests hold their tensor bytes until answered: beyond
    max_inflight_bytes, a request gets RESOURCE_EXHAUSTED at once."""
    size = _request_bytes(heavy_request(model_repository))
    codes, details = _held_burst(
        scratch_repository, model_repository, 6, max_inflight_bytes=int(2.5 * size)
    )
    assert codes.count(Code.OK) == 2, codes  # two fit in 2.5 requests' worth
    assert codes.count(Code.RESOURCE_EXHAUSTED) == 4, codes
    assert all("max_inflight_bytes" in d for d in details if d), details


def test_calls_in_flight_are_bounded(scratch_repository: Path, model_repository: Path) -> None:
    """Beyond max_concurrent_rpcs running calls, gRPC answers RESOURCE_EXHAUSTED at once."""
    codes, details = _held_burst(scratch_repository, model_repository, 6, max_concurrent_rpcs=4)
    assert codes.count(Code.OK) == 4, codes
    assert codes.count(Code.RESOURCE_EXHAUSTED) == 2, codes
    assert all("Concurrent RPC limit" in d for d in details if d), details


def test_a_stream_reads_no_further_than_its_window(
    scratch_repository: Path, model_repository: Path
) -> None:
    """A ModelStreamInfer call holds at most max_stream_inflight requests read and not yet
    answered: with the only inference thread held, 40 requests sent at once leave exactly
    8 in the server; the rest wait in gRPC flow control. Once released, every request is
    answered with its id."""
    settings = make_settings(
        scratch_repository, models=["mlp"], inference_threads=1, max_stream_inflight=8,
    )  # fmt: skip
    features = golden_inputs(model_repository, "mlp")["features"][:1]
    with running_server(settings) as server, hold_inference_thread(server) as gate:
        stub = pb_grpc.GRPCInferenceServiceStub(server.channel())
        requests = []
        for i in range(40):
            request = infer_request("mlp", {"features": features})
            request.id = str(i)
            requests.append(request)
        answers = stub.ModelStreamInfer(iter(requests), timeout=30)
        plane = server.server.plane
        deadline = time.monotonic() + 10
        while plane.inflight_requests < 8 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)  # time to read more, were it allowed to
        assert plane.inflight_requests == 8
        gate.set()
        got = [answer for answer in answers]
    assert not [a.error_message for a in got if a.error_message]
    assert sorted(int(a.infer_response.id) for a in got) == list(range(40))
