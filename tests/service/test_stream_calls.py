"""Many requests on one call: ClassifyStream, SequenceStream (and the client's
classify_stream) against the real services. Each answer must equal the unary call's for
the same request; a failed request answers with its status and the call goes on; an
undecodable message ends the call with INVALID_ARGUMENT; each request is counted like a
unary one. (ModelStreamInfer: test_kserve_api.py; the per-call window: test_bounds.py.)"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
import pytest

from nnserve_client import ClassifyResult, NNServeClient, NNServeError
from nnserve_client.aio import AsyncNNServeClient
from protos import nnserve_pb2 as npb
from protos import nnserve_pb2_grpc as npb_grpc
from services.rpc.pipelining import MAX_ID_CHARS
from tests.support.metrics import read_metrics
from tests.support.models import digit_images, event_runs, loan_rows
from tests.support.servers import RunningServer

Code = grpc.StatusCode


def assert_same(streamed: ClassifyResult | NNServeError, alone: ClassifyResult) -> None:
    """Batched with other requests or alone: the same labels, scores within the tolerance."""
    assert isinstance(streamed, ClassifyResult)
    assert [r.label for r in streamed.results] == [r.label for r in alone.results]
    for a, b in zip(streamed.results, alone.results, strict=True):
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-3, atol=1e-4)


def batches_of(rows: list[dict[str, float]], count: int) -> list[list[dict[str, float]]]:
    """`count` batches of 1 to 3 rows each, cycling through `rows`."""
    return [[rows[(i + j) % len(rows)] for j in range(1 + i % 3)] for i in range(count)]


def test_classify_stream_answers_each_batch_as_the_unary_call_does(
    classify_server: RunningServer, model_repository: Path
) -> None:
    rows, _ = loan_rows(model_repository, "mlp")
    batches = batches_of(rows, 60)
    bad = len(batches)
    batches.append([{"age": 1.0}])  # missing features: this one fails, the rest go on
    before = read_metrics(classify_server).total("nnserve_requests_total", method="ClassifyStream")
    with NNServeClient(classify_server.address) as client:
        answers = dict(client.classify_stream("mlp", batches, top_k=2))
        assert sorted(answers) == list(range(len(batches)))  # each batch answered once
        failure = answers.pop(bad)
        assert isinstance(failure, NNServeError) and failure.code == Code.INVALID_ARGUMENT
        for index, result in answers.items():
            assert_same(result, client.classify_tabular("mlp", batches[index], top_k=2))
    after = read_metrics(classify_server).total("nnserve_requests_total", method="ClassifyStream")
    assert after - before == len(batches)


def test_classify_stream_of_images_and_the_asyncio_client(
    classify_server: RunningServer, model_repository: Path
) -> None:
    images, _ = digit_images(model_repository)
    batches = [images[i : i + 2] for i in range(0, len(images), 2)] * 4

    async def streamed() -> dict[int, ClassifyResult | NNServeError]:
        async with AsyncNNServeClient(classify_server.address) as client:
            return {i: r async for i, r in client.classify_stream("cnn", batches, images=True)}

    answers = asyncio.run(streamed())
    assert sorted(answers) == list(range(len(batches)))
    with NNServeClient(classify_server.address) as client:
        for index, result in answers.items():
            assert_same(result, client.classify_images("cnn", batches[index]))


def test_a_failed_request_answers_with_its_status_and_the_call_goes_on(
    classify_server: RunningServer, model_repository: Path
) -> None:
    _, features = loan_rows(model_repository, "mlp")
    good = npb.ClassifyRequest(model_name="mlp", rows=[npb.TabularRow(values=features[0])])
    requests = [
        npb.ClassifyStreamRequest(id="a", request=good),
        npb.ClassifyStreamRequest(id="b", request=npb.ClassifyRequest(model_name="nope")),
        npb.ClassifyStreamRequest(id="x" * 100_000, request=good),  # id too long
        npb.ClassifyStreamRequest(id="c", request=good),
    ]
    stub = npb_grpc.PredictorStub(classify_server.channel())
    answers = {a.id: a for a in stub.ClassifyStream(iter(requests), timeout=30)}
    assert set(answers) == {"a", "b", "c", "x" * MAX_ID_CHARS}
    assert answers["a"].response == answers["c"].response
    assert answers["a"].response.results and not answers["a"].HasField("error")
    assert answers["b"].error.code == "NOT_FOUND" and not answers["b"].HasField("response")
    long_id = answers["x" * MAX_ID_CHARS].error
    assert long_id.code == "INVALID_ARGUMENT" and len(long_id.message) < 100


def test_an_undecodable_message_ends_the_call_with_invalid_argument(
    classify_server: RunningServer, model_repository: Path
) -> None:
    _, features = loan_rows(model_repository, "mlp")
    good = npb.ClassifyStreamRequest(
        id="0",
        request=npb.ClassifyRequest(model_name="mlp", rows=[npb.TabularRow(values=features[0])]),
    ).SerializeToString()
    call = classify_server.channel().stream_stream("/nnserve.v1.Predictor/ClassifyStream")
    answers = call(iter([good, b"\xff\xff\xff"]), timeout=30)
    with pytest.raises(grpc.RpcError) as err:
        for _ in answers:
            pass
    assert err.value.code() == Code.INVALID_ARGUMENT
    assert "cannot be decoded" in (err.value.details() or "")


def test_sequence_stream_answers_as_the_unary_call_does(
    sequence_server: RunningServer, model_repository: Path
) -> None:
    runs = event_runs(model_repository, "transformer")
    requests = []
    for i in range(30):
        sequences = [
            npb.SequenceInput(tokens=npb.TokenStrings(tokens=run)) for run in runs[: 1 + i % 3]
        ]
        request = npb.SequenceRequest(
            model_name="transformer", sequences=sequences, per_position=True
        )
        requests.append(npb.SequenceStreamRequest(id=str(i), request=request))
    stub = npb_grpc.PredictorStub(sequence_server.channel())
    answers = {int(a.id): a for a in stub.SequenceStream(iter(requests), timeout=30)}
    assert sorted(answers) == list(range(len(requests)))
    for i, answer in answers.items():
        unary = stub.Sequence(requests[i].request, timeout=30)
        assert [r.label for r in answer.response.results] == [r.label for r in unary.results]
        for streamed, alone in zip(answer.response.results, unary.results, strict=True):
            # Batched with other requests or alone: the same scores within the tolerance.
            np.testing.assert_allclose(streamed.scores, alone.scores, rtol=1e-3, atol=1e-4)
