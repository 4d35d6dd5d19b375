"""Compressed requests against real servers: gzip and deflate clients are answered, and a
compression bomb is refused before it is inflated, on every kind of RPC.

The bombs are real compressed messages from a grpcio client (grpc.Compression.Gzip or
Deflate): the client serializes N bytes of zeros and its gRPC core compresses them. The
gigabyte test measures the peak resident memory of a server in its own process.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from protos import nnserve_pb2 as npb
from protos import nnserve_pb2_grpc as npb_grpc
from tests.support.inference import decode_outputs, infer_request
from tests.support.metrics import read_metrics
from tests.support.models import golden_inputs, reference_outputs
from tests.support.process import server_process
from tests.support.servers import RunningServer, make_settings, running_server

# The bound is grpc.aio's (the interceptor inflates): with the native front end it holds
# for forwarded methods only (the last test); pygrpc-native inflates its own methods
# whole before any bound applies (docs/operations.md#front-ends).
pytestmark = pytest.mark.frontends("aio")

Code = grpc.StatusCode
GZIP, DEFLATE = grpc.Compression.Gzip, grpc.Compression.Deflate
KSERVE = "/inference.GRPCInferenceService"
PREDICTOR = "/nnserve.v1.Predictor"
MiB = 1 << 20


def _metric(url: str, name: str, **labels: str) -> float:
    return read_metrics(url).total(name, **labels)


def _unary(channel: grpc.Channel, path: str) -> grpc.UnaryUnaryMultiCallable:
    return channel.unary_unary(path)  # bytes in, bytes out: the bomb is sent as it is


def _assert_bomb_refused(err: grpc.RpcError, limit: int) -> None:
    assert err.code() == Code.RESOURCE_EXHAUSTED, (err.code(), err.details())
    details = err.details() or ""
    assert f"more than {limit} bytes (max_message_bytes)" in details, details
    assert len(details) < 200


# ------------------------------------------------------------ clients that compress


def test_gzip_and_deflate_clients_are_answered(
    classify_server: RunningServer, model_repository: Path
) -> None:
    """Gzip- and deflate-compressed calls get the same answers as plain ones: unary
    (ModelInfer, Classify, health), a ModelStreamInfer stream, and tiny messages that
    core sends uncompressed on a compressed call."""
    inputs = golden_inputs(model_repository, "mlp")
    expected = reference_outputs(model_repository, "mlp", inputs)["probabilities"]
    stub = pb_grpc.GRPCInferenceServiceStub(classify_server.channel())
    predictor = npb_grpc.PredictorStub(classify_server.channel())
    health = health_pb2_grpc.HealthStub(classify_server.channel())
    row = npb.TabularRow(values=[float(v) for v in inputs["features"][0]])
    plain = predictor.Classify(npb.ClassifyRequest(model_name="mlp", rows=[row]), timeout=10)
    for compression in (GZIP, DEFLATE):
        answer = stub.ModelInfer(infer_request("mlp", inputs), timeout=10, compression=compression)
        got = decode_outputs(answer)["probabilities"]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        classified = predictor.Classify(
            npb.ClassifyRequest(model_name="mlp", rows=[row]), timeout=10, compression=compression
        )
        assert classified == plain
        streamed = list(
            stub.ModelStreamInfer(
                iter([infer_request("mlp", inputs)] * 3), timeout=10, compression=compression
            )
        )
        assert len(streamed) == 3 and not any(s.error_message for s in streamed)
        for s in streamed:
            got = decode_outputs(s.infer_response)["probabilities"]
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        # A tiny message does not shrink: core sends it uncompressed on this call.
        check = health.Check(health_pb2.HealthCheckRequest(), timeout=5, compression=compression)
        assert check.status == health_pb2.HealthCheckResponse.SERVING


# ------------------------------------------------------------ bombs on every RPC kind


@pytest.fixture(scope="module")
def small_limit_server(model_repository: Path) -> Iterator[RunningServer]:
    """max_message_bytes 1 MiB, so a 16 MiB bomb is enough to show the bound."""
    settings = make_settings(
        model_repository, service="sequence", models=["lstm"], max_message_bytes=MiB
    )
    with running_server(settings) as server:
        yield server


BOMB = bytes(16 * MiB)  # zeros: about 16 KB once gzip'd

STREAMS = (
    f"{KSERVE}/ModelStreamInfer",
    f"{PREDICTOR}/ClassifyStream",
    f"{PREDICTOR}/SequenceStream",
    f"{PREDICTOR}/Stream",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
)
UNARY = (
    f"{KSERVE}/ModelInfer",
    f"{KSERVE}/ModelMetadata",
    f"{PREDICTOR}/Sequence",
    "/grpc.health.v1.Health/Check",
)


def test_bombs_are_refused_on_every_kind_of_rpc(small_limit_server: RunningServer) -> None:
    """A 16 MiB-of-zeros message, gzip'd (and deflate'd) by the client, is refused with
    RESOURCE_EXHAUSTED naming max_message_bytes on unary calls, every stream (as the
    first message, and after a valid one), health Check and Watch, and reflection; the
    server answers normally afterwards and counts the refusals."""
    server = small_limit_server
    url = server.metrics_url
    before = _metric(url, "nnserve_refusals_total", reason="inflated_too_large")
    refused = 0
    with server.channel() as channel:
        for path in UNARY:
            for compression in (GZIP, DEFLATE):
                with pytest.raises(grpc.RpcError) as err:
                    _unary(channel, path)(BOMB, timeout=30, compression=compression)
                _assert_bomb_refused(err.value, MiB)
                refused += 1
        watch = channel.unary_stream("/grpc.health.v1.Health/Watch")(
            BOMB, timeout=30, compression=GZIP
        )
        with pytest.raises(grpc.RpcError) as err:
            next(watch)
        _assert_bomb_refused(err.value, MiB)
        refused += 1
        for path in STREAMS:
            call = channel.stream_stream(path)(iter([BOMB]), timeout=30, compression=GZIP)
            with pytest.raises(grpc.RpcError) as err:
                list(call)
            _assert_bomb_refused(err.value, MiB)
            refused += 1
        # After a valid message on the same call: the answer, then the refusal.
        first = npb.SequenceStreamRequest(
            id="ok", request=npb.SequenceRequest(model_name="lstm", sequences=[_sequence()])
        ).SerializeToString()
        call = channel.stream_stream(f"{PREDICTOR}/SequenceStream")(
            iter([first, BOMB]), timeout=30, compression=GZIP
        )
        answers = []
        with pytest.raises(grpc.RpcError) as err:
            for answer in call:
                answers.append(npb.SequenceStreamResponse.FromString(answer))
        _assert_bomb_refused(err.value, MiB)
        refused += 1
        assert [a.id for a in answers] == ["ok"] and not answers[0].HasField("error")
        # The server is fine: a plain call is answered.
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == (
            health_pb2.HealthCheckResponse.SERVING
        )
    after = _metric(url, "nnserve_refusals_total", reason="inflated_too_large")
    assert after - before == refused


def test_a_compressed_message_over_the_bound_as_sent_is_counted(
    small_limit_server: RunningServer,
) -> None:
    """2 MiB of random bytes do not shrink: over max_message_bytes as sent, gRPC core
    refuses them before any handler runs, and the server still counts the call."""
    url = small_limit_server.metrics_url
    before = _metric(url, "nnserve_refusals_total", reason="ended_before_handler")
    with small_limit_server.channel() as channel, pytest.raises(grpc.RpcError) as err:
        _unary(channel, f"{KSERVE}/ModelInfer")(os.urandom(2 * MiB), timeout=30)
    assert err.value.code() == Code.RESOURCE_EXHAUSTED
    deadline = time.monotonic() + 5  # counted as the call's task ends, just after
    while _metric(url, "nnserve_refusals_total", reason="ended_before_handler") == before:
        assert time.monotonic() < deadline, "the refused call was not counted"
        time.sleep(0.02)


def _sequence() -> npb.SequenceInput:
    return npb.SequenceInput(token_ids=npb.TokenIds(ids=[2, 3, 4]))


def test_malformed_gzip_is_invalid_argument(small_limit_server: RunningServer) -> None:
    """Bytes that start like gzip but do not inflate (sent raw, or truncated) are
    INVALID_ARGUMENT with a short message that quotes nothing of them."""
    garbage = b"\x1f\x8b\x08\x00" + b"\xff" * 5000
    with small_limit_server.channel() as channel:
        for path in (f"{KSERVE}/ModelInfer", "/grpc.health.v1.Health/Check"):
            with pytest.raises(grpc.RpcError) as err:
                _unary(channel, path)(garbage, timeout=10)
            assert err.value.code() == Code.INVALID_ARGUMENT
            assert err.value.details() == (
                "the request message cannot be decompressed (malformed gzip)"
            )


# ------------------------------------------------------------ a gigabyte, measured


def _memory_kb(pid: int) -> dict[str, int]:
    fields = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0])
    return fields


def _reset_peak(pid: int) -> None:
    """Reset the process's peak resident memory (VmHWM) to its current RSS."""
    with open(f"/proc/{pid}/clear_refs", "w") as clear:
        clear.write("5")


GIB = 1 << 30
GROWTH_LIMIT_KB = 50 * 1024


def test_a_gigabyte_bomb_costs_the_server_no_memory(model_repository: Path, tmp_path: Path) -> None:
    """1 GiB of zeros, gzip'd by a grpcio client (about 1 MB on the wire), sent as a
    ModelInfer request and as the second message of a ModelStreamInfer stream, to a
    server process: RESOURCE_EXHAUSTED each time, and the server's peak resident memory
    grows by at most 50 MB (gRPC core alone would inflate the whole gigabyte first).
    A normal gzip'd ModelInfer is answered correctly afterwards."""
    inputs = golden_inputs(model_repository, "mlp")
    expected = reference_outputs(model_repository, "mlp", inputs)["probabilities"]
    valid = infer_request("mlp", inputs)
    with server_process(
        model_repository, tmp_path, "--service", "classify", "--models", '["mlp"]'
    ) as server:
        pid = server.process.pid
        limit = 16 * MiB  # the default max_message_bytes
        with server.channel() as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            stub.ModelInfer(valid, timeout=10, compression=GZIP)  # warm: code paths, pools
            bomb = bytes(GIB)
            baseline = _memory_kb(pid)["VmRSS"]
            _reset_peak(pid)
            with pytest.raises(grpc.RpcError) as err:
                _unary(channel, f"{KSERVE}/ModelInfer")(bomb, timeout=120, compression=GZIP)
            _assert_bomb_refused(err.value, limit)
            call = channel.stream_stream(f"{KSERVE}/ModelStreamInfer")(
                iter([valid.SerializeToString(), bomb]), timeout=120, compression=GZIP
            )
            answers = []
            with pytest.raises(grpc.RpcError) as err:
                for answer in call:
                    answers.append(pb.ModelStreamInferResponse.FromString(answer))
            _assert_bomb_refused(err.value, limit)
            assert len(answers) == 1 and not answers[0].error_message
            del bomb
            peak = _memory_kb(pid)["VmHWM"]
            growth = peak - baseline
            print(
                f"\n1 GiB gzip bomb x2: server RSS {baseline / 1024:.0f} MB, "
                f"peak +{growth / 1024:.1f} MB"
            )
            assert growth <= GROWTH_LIMIT_KB, f"peak RSS grew by {growth / 1024:.0f} MB"
            answer = stub.ModelInfer(valid, timeout=10, compression=GZIP)
            got = decode_outputs(answer)["probabilities"]
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        assert os.path.exists(f"/proc/{pid}")  # still running: nothing crashed


@pytest.mark.frontends("native")
def test_with_the_native_front_forwarded_calls_are_bounded_too(
    model_repository: Path,
) -> None:
    """NNSERVE_FRONTEND=native: pygrpc-native forwards every method but ModelInfer,
    Classify and Sequence to grpc.aio with its compressed frames as sent, so bombs there
    are refused by the same bound; a gzip'd ModelInfer (served natively, inflated by
    pygrpc-native) is answered."""
    settings = make_settings(
        model_repository, service="classify", models=["mlp"], frontend="native",
        max_message_bytes=MiB,
    )  # fmt: skip
    inputs = golden_inputs(model_repository, "mlp")
    expected = reference_outputs(model_repository, "mlp", inputs)["probabilities"]
    with running_server(settings) as server, server.channel() as channel:
        assert server.server.native is not None
        for path in (f"{KSERVE}/ModelMetadata", "/grpc.health.v1.Health/Check"):
            with pytest.raises(grpc.RpcError) as err:
                _unary(channel, path)(BOMB, timeout=30, compression=GZIP)
            _assert_bomb_refused(err.value, MiB)
        call = channel.stream_stream(f"{KSERVE}/ModelStreamInfer")(
            iter([BOMB]), timeout=30, compression=GZIP
        )
        with pytest.raises(grpc.RpcError) as err:
            list(call)
        _assert_bomb_refused(err.value, MiB)
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        answer = stub.ModelInfer(infer_request("mlp", inputs), timeout=10, compression=GZIP)
        got = decode_outputs(answer)["probabilities"]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        # pygrpc-native takes gzip only: a deflate client of a native method is refused.
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(infer_request("mlp", inputs), timeout=10, compression=DEFLATE)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
