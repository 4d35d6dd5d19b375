"""Hostile input, generated: hypothesis builds ModelInferRequest / Classify / Sequence
messages (wrong shapes, huge dims with tiny payloads, mismatched raw contents, unknown
datatypes, odd names and versions, NaN/inf, out-of-vocabulary ids) and random bytes for
every RPC, against the real servers. Nothing may crash a server, answer INTERNAL or
UNKNOWN, or send a status message longer than the bound; the servers answer good
requests afterwards.

The default run is bounded (NNSERVE_FUZZ_EXAMPLES, default 40 per test); `make fuzz`
runs many more and prints how many requests were sent.
"""

from __future__ import annotations

import collections
import os
from pathlib import Path

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from protos import nnserve_pb2 as npb
from protos import nnserve_pb2_grpc as npb_grpc
from services.errors import MAX_MESSAGE_CHARS
from tests.support.inference import decode_outputs, infer_request
from tests.support.models import golden_inputs, reference_outputs
from tests.support.servers import RunningServer

EXAMPLES = int(os.environ.get("NNSERVE_FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize="NNSERVE_FUZZ_EXAMPLES" not in os.environ,  # CI: the same cases every run
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
SENT: collections.Counter[str] = collections.Counter()  # code name -> requests

MODEL_NAMES = st.one_of(
    st.sampled_from(["mlp", "cnn", "perceptron", "lstm", "transformer", "", "../mlp", "/etc"]),
    st.text(max_size=300),
)
VERSIONS = st.one_of(
    st.sampled_from(["", "1", "0", "-1", "²", "①", "1" * 40, "01", " 1"]), st.text(max_size=50)
)
DATATYPES = st.one_of(
    st.sampled_from(["FP32", "INT64", "FP16", "FP64", "UINT8", "BOOL", "BYTES", "BF16", ""]),
    st.text(max_size=20),
)
DIMS = st.one_of(st.integers(-3, 70), st.sampled_from([2**31, 2**40, 2**62, -(2**62)]))
FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=32)


def call(method, request, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    """One call; returns the status code after checking the rules every answer obeys."""
    try:
        method(request, timeout=timeout)
        code = grpc.StatusCode.OK
    except grpc.RpcError as exc:
        code = exc.code()
        details = exc.details() or ""
        assert code not in FORBIDDEN, details
        assert len(details) <= MAX_MESSAGE_CHARS, len(details)
    SENT[code.name] += 1
    return code


@st.composite
def infer_requests(draw: st.DrawFn) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(
        model_name=draw(MODEL_NAMES), model_version=draw(VERSIONS), id=draw(st.text(max_size=40))
    )
    use_raw = draw(st.booleans())
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.one_of(st.sampled_from(["features", "pixels", "tokens", "lengths"]),
                              st.text(max_size=100)))  # fmt: skip
        tensor = request.inputs.add(
            name=name, datatype=draw(DATATYPES), shape=draw(st.lists(DIMS, max_size=6))
        )
        if use_raw:
            request.raw_input_contents.append(draw(st.binary(max_size=512)))
        else:
            tensor.contents.fp32_contents.extend(draw(st.lists(FLOATS, max_size=64)))
            tensor.contents.int64_contents.extend(
                draw(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=64))
            )
    if draw(st.booleans()) and use_raw:  # a raw count that disagrees with the inputs
        request.raw_input_contents.append(draw(st.binary(max_size=16)))
    for name in draw(st.lists(st.text(max_size=30), max_size=2)):
        request.outputs.add(name=name)
    return request


@st.composite
def classify_requests(draw: st.DrawFn) -> npb.ClassifyRequest:
    request = npb.ClassifyRequest(
        model_name=draw(MODEL_NAMES),
        model_version=draw(VERSIONS),
        top_k=draw(st.integers(0, 2**32 - 1)),
    )
    for _ in range(draw(st.integers(0, 4))):
        row = request.rows.add()
        if draw(st.booleans()):
            keys = st.one_of(
                st.sampled_from(["age", "credit_score", "dependents"]), st.text(max_size=80)
            )
            for key, value in draw(st.dictionaries(keys, FLOATS, max_size=10)).items():
                row.named[key] = value
        else:
            row.values.extend(draw(st.lists(FLOATS, max_size=12)))
    for _ in range(draw(st.integers(0, 3))):
        image = request.images.add(shape=draw(st.lists(DIMS, max_size=4)))
        if draw(st.booleans()):
            image.uint8_pixels = draw(st.binary(max_size=128))
        else:
            image.float_pixels.values.extend(draw(st.lists(FLOATS, max_size=80)))
    return request


@st.composite
def sequence_requests(draw: st.DrawFn) -> npb.SequenceRequest:
    request = npb.SequenceRequest(
        model_name=draw(MODEL_NAMES), model_version=draw(VERSIONS),
        per_position=draw(st.booleans()),
    )  # fmt: skip
    for _ in range(draw(st.integers(0, 4))):
        item = request.sequences.add()
        kind = draw(st.sampled_from(["ids", "tokens", "numeric", "none"]))
        if kind == "ids":
            ids = st.one_of(st.integers(-3, 60), st.integers(-(2**63), 2**63 - 1))
            item.token_ids.ids.extend(draw(st.lists(ids, max_size=300)))
        elif kind == "tokens":
            item.tokens.tokens.extend(draw(st.lists(st.text(max_size=60), max_size=20)))
        elif kind == "numeric":
            item.numeric.features = draw(st.integers(0, 10) | st.just(2**32 - 1))
            item.numeric.values.extend(draw(st.lists(FLOATS, max_size=40)))
    return request


def _v2(server: RunningServer) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(server.channel())


def test_fuzz_model_infer(servers: dict[str, RunningServer]) -> None:
    stubs = [_v2(servers["mlp"]), _v2(servers["lstm"])]

    @FUZZ
    @given(request=infer_requests(), which=st.integers(0, 1))
    def run(request: pb.ModelInferRequest, which: int) -> None:
        call(stubs[which].ModelInfer, request)

    run()


def test_fuzz_domain_api(servers: dict[str, RunningServer]) -> None:
    classify = npb_grpc.PredictorStub(servers["mlp"].channel())
    sequence = npb_grpc.PredictorStub(servers["lstm"].channel())

    @FUZZ
    @given(c=classify_requests(), s=sequence_requests())
    def run(c: npb.ClassifyRequest, s: npb.SequenceRequest) -> None:
        call(classify.Classify, c)
        call(sequence.Sequence, s)
        describe = npb.DescribeModelRequest(model_name=c.model_name, model_version=c.model_version)
        call(classify.DescribeModel, describe)

    run()


def _methods() -> list[tuple[str, bool]]:
    """Every RPC of the inference services and routing as (path, client-streaming)."""
    methods = []
    for descriptor in (pb.DESCRIPTOR.services_by_name["GRPCInferenceService"],
                       npb.DESCRIPTOR.services_by_name["Predictor"],
                       npb.DESCRIPTOR.services_by_name["Routing"]):  # fmt: skip
        for m in descriptor.methods:
            methods.append((f"/{descriptor.full_name}/{m.name}", m.client_streaming))
    return methods


@pytest.mark.parametrize("service", ["classify", "sequence"])
def test_fuzz_random_bytes_to_every_rpc(servers: dict[str, RunningServer], service: str) -> None:
    server = servers["mlp" if service == "classify" else "lstm"]
    channel = server.channel()
    methods = _methods()

    @FUZZ
    @given(data=st.binary(max_size=2048), index=st.integers(0, len(methods) - 1))
    def run(data: bytes, index: int) -> None:
        path, streaming = methods[index]
        if streaming:
            stream = channel.stream_stream(path)  # bytes in, bytes out
            try:
                for _ in stream(iter([data, data]), timeout=10):
                    pass
                code = grpc.StatusCode.OK
            except grpc.RpcError as exc:
                code = exc.code()
                assert code not in FORBIDDEN, exc.details()
            SENT[code.name] += 1
        else:
            call(channel.unary_unary(path), data)

    run()


def test_servers_still_correct_after_fuzzing(
    servers: dict[str, RunningServer], model_repository: Path
) -> None:
    for name in ("mlp", "lstm"):
        inputs = golden_inputs(model_repository, name)
        response = _v2(servers[name]).ModelInfer(infer_request(name, inputs), timeout=10)
        expected = reference_outputs(model_repository, name, inputs)
        for key, value in decode_outputs(response).items():
            np.testing.assert_allclose(value, expected[key], rtol=1e-4, atol=1e-5)
    total = sum(SENT.values())
    print(f"\nfuzz: {total} requests sent, by code: {dict(SENT.most_common())}")
