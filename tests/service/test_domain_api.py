"""nnserve.v1 Classify / Sequence / DescribeModel against real servers; results must equal
in-process ONNX Runtime on the same inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from protos import nnserve_pb2 as npb
from protos import nnserve_pb2_grpc as npb_grpc
from tests.support.models import SEQUENCE_MODELS, golden_inputs, model_json, reference_outputs
from tests.support.servers import RunningServer


def predictor(server: RunningServer) -> npb_grpc.PredictorStub:
    return npb_grpc.PredictorStub(server.channel())


@pytest.mark.parametrize("name", ["perceptron", "mlp"])
def test_classify_tabular_by_name_and_position(
    name: str, servers: dict[str, RunningServer], model_repository: Path
) -> None:
    doc = model_json(model_repository, name)
    features = [f["name"] for f in doc["classify"]["features"]]
    rows = golden_inputs(model_repository, name)["features"][:5]
    expected = reference_outputs(model_repository, name, {"features": rows})["probabilities"]

    by_name = npb.ClassifyRequest(model_name=name, top_k=2)
    by_position = npb.ClassifyRequest(model_name=name)
    for row in rows:
        by_name.rows.add(named=dict(zip(features, map(float, row), strict=True)))
        by_position.rows.add(values=row.tolist())
    stub = predictor(servers[name])
    for response in (stub.Classify(by_name), stub.Classify(by_position)):
        assert list(response.labels) == doc["labels"]
        assert len(response.results) == len(rows)
        for result, want in zip(response.results, expected, strict=True):
            np.testing.assert_allclose(result.scores, want, rtol=1e-5, atol=1e-6)
            assert result.index == int(np.argmax(want))
            assert result.label == doc["labels"][result.index]
    top = stub.Classify(by_name).results[0].top_k
    assert len(top) == 2 and top[0].score >= top[1].score


def test_classify_images_uint8_and_float(
    servers: dict[str, RunningServer], model_repository: Path
) -> None:
    doc = model_json(model_repository, "cnn")
    image = doc["classify"]["image"]
    pixel_max = image["pixel_max"]
    images = golden_inputs(model_repository, "cnn")["image"][:4]  # (B, 1, 8, 8) in [0, pixel_max]
    as_uint8 = np.round(images / pixel_max * 255).astype(np.uint8)
    scaled = as_uint8.astype(np.float32) * np.float32(pixel_max / 255.0)
    expected_uint8 = reference_outputs(model_repository, "cnn", {"image": scaled})["probabilities"]
    expected_float = reference_outputs(model_repository, "cnn", {"image": images})["probabilities"]

    h, w = image["height"], image["width"]
    uint8_request = npb.ClassifyRequest(model_name="cnn", top_k=3)
    float_request = npb.ClassifyRequest(model_name="cnn")
    for raw, flt in zip(as_uint8, images, strict=True):
        uint8_request.images.add(shape=[h, w], uint8_pixels=raw.tobytes())
        float_request.images.add(shape=[1, h, w], float_pixels=npb.FloatPixels(values=flt.ravel()))
    stub = predictor(servers["cnn"])
    got_uint8 = stub.Classify(uint8_request)
    got_float = stub.Classify(float_request)
    np.testing.assert_allclose(
        [r.scores for r in got_uint8.results], expected_uint8, rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        [r.scores for r in got_float.results], expected_float, rtol=1e-5, atol=1e-6
    )
    assert all(len(r.top_k) == 3 for r in got_uint8.results)
    assert list(got_uint8.labels) == doc["labels"]


@pytest.mark.parametrize("name", SEQUENCE_MODELS)
def test_sequence_strings_and_ids_with_mixed_lengths(
    name: str, servers: dict[str, RunningServer], model_repository: Path
) -> None:
    doc = model_json(model_repository, name)
    vocabulary = doc["sequence"]["vocabulary"]
    golden = golden_inputs(model_repository, name)
    tokens, lengths = golden["tokens"], golden["lengths"]
    # Several rows of different lengths in one request: the server pads them together.
    picks = list(range(min(6, len(tokens))))
    sequences = [tokens[i, : lengths[i]].tolist() for i in picks]
    as_strings = npb.SequenceRequest(model_name=name, per_position=True)
    as_ids = npb.SequenceRequest(model_name=name, per_position=True)
    for seq in sequences:
        as_strings.sequences.add(tokens=npb.TokenStrings(tokens=[vocabulary[t] for t in seq]))
        as_ids.sequences.add(token_ids=npb.TokenIds(ids=seq))
    stub = predictor(servers[name])
    for response in (stub.Sequence(as_strings), stub.Sequence(as_ids)):
        assert list(response.labels) == doc["labels"]
        for seq, result in zip(sequences, response.results, strict=True):
            # Reference: each sequence alone, unpadded.
            alone = reference_outputs(
                model_repository,
                name,
                {
                    "tokens": np.asarray([seq], dtype=np.int64),
                    "lengths": np.asarray([len(seq)], dtype=np.int64),
                },
            )
            np.testing.assert_allclose(
                result.scores, alone["sequence_probabilities"][0], rtol=1e-4, atol=1e-5
            )
            assert result.length == len(seq)
            assert len(result.position_scores) == len(seq)
            np.testing.assert_allclose(
                result.position_scores, alone["position_scores"][0], rtol=1e-4, atol=1e-5
            )


def test_sequence_without_per_position(servers: dict[str, RunningServer]) -> None:
    request = npb.SequenceRequest(model_name="lstm")
    request.sequences.add(token_ids=npb.TokenIds(ids=[2, 3, 4]))
    result = predictor(servers["lstm"]).Sequence(request).results[0]
    assert result.length == 3 and len(result.position_scores) == 0
    assert abs(sum(result.scores) - 1.0) < 1e-4


@pytest.mark.parametrize("name", ["mlp", "cnn", "lstm"])
def test_describe_model(
    name: str, servers: dict[str, RunningServer], model_repository: Path
) -> None:
    doc = model_json(model_repository, name)
    described = predictor(servers[name]).DescribeModel(npb.DescribeModelRequest(model_name=name))
    assert described.ready and described.provider == "CPUExecutionProvider"
    assert described.family == doc["family"] and described.task == doc["task"]
    assert list(described.labels) == doc["labels"]
    assert json.loads(described.model_json)["name"] == name
    if doc["task"] == "sequence":
        assert list(described.vocabulary) == doc["sequence"]["vocabulary"]
        assert described.max_length == doc["sequence"]["max_length"]
    elif doc["classify"]["kind"] == "tabular":
        assert list(described.feature_names) == [f["name"] for f in doc["classify"]["features"]]
