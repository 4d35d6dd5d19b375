"""nnserve_client (blocking and asyncio) and its CLI against the real services.

Every score the client returns must equal in-process ONNX Runtime on the tensors the
domain API builds from the same input (feature order, pixel scaling, token ids and
lengths from model.json), so the client, the server's domain codec and the model agree.
tests/unit/test_client_cli.py keeps the encoding checks that need answers chosen by the test.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import numpy as np
import pytest

from nnserve_client import NNServeClient, NNServeError, ServingStatus
from nnserve_client.aio import AsyncNNServeClient
from tests.support.cli import client_cli
from tests.support.models import (
    digit_images,
    event_runs,
    loan_rows,
    reference_outputs,
    spec_of,
)
from tests.support.servers import RunningServer


def sequence_reference(repository: Path, name: str, runs: list[list[str]]) -> dict[str, np.ndarray]:
    spec = spec_of(repository, name)
    assert spec.sequence is not None
    index = spec.sequence.token_index
    longest = max(len(r) for r in runs)
    tokens = np.full((len(runs), longest), spec.sequence.pad_id, dtype=np.int64)
    for i, run in enumerate(runs):
        tokens[i, : len(run)] = [index[e] for e in run]
    lengths = np.array([len(r) for r in runs], dtype=np.int64)
    return reference_outputs(repository, name, {"tokens": tokens, "lengths": lengths})


# ---------------------------------------------------------------- blocking client


@pytest.mark.parametrize("name", ["perceptron", "mlp"])
def test_classify_tabular_matches_onnx_runtime(
    name: str, classify_server: RunningServer, model_repository: Path
) -> None:
    rows, features = loan_rows(model_repository, name)
    want = reference_outputs(model_repository, name, {"features": features})["probabilities"]
    labels = spec_of(model_repository, name).labels
    with NNServeClient(classify_server.address) as client:
        named = client.classify_tabular(name, rows, top_k=2)
        positional = client.classify_tabular(name, features)
    assert (named.model, named.version, named.labels) == (name, "1", labels)
    got = np.array([r.scores for r in named.results])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose([r.scores for r in positional.results], got, rtol=1e-6)
    for result, row in zip(named.results, want, strict=True):
        best = int(np.argmax(row))
        assert (result.label, result.index) == (labels[best], best)
        assert [s.index for s in result.top_k] == list(np.argsort(-row, kind="stable")[:2])


def test_classify_images_matches_onnx_runtime(
    classify_server: RunningServer, model_repository: Path
) -> None:
    u8, tensor = digit_images(model_repository)
    want = reference_outputs(model_repository, "cnn", {"image": tensor})["probabilities"]
    with NNServeClient(classify_server.address) as client:
        as_uint8 = client.classify_images("cnn", u8, top_k=3)
        as_float = client.classify_images("cnn", tensor)  # (N, C, H, W), already in range
    np.testing.assert_allclose([r.scores for r in as_uint8.results], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose([r.scores for r in as_float.results], want, rtol=1e-5, atol=1e-6)
    assert [r.label for r in as_uint8.results] == [str(int(i)) for i in want.argmax(axis=1)]
    assert all(len(r.top_k) == 3 for r in as_uint8.results)


@pytest.mark.parametrize("name", ["lstm", "transformer"])
def test_score_sequences_matches_onnx_runtime(
    name: str, sequence_server: RunningServer, model_repository: Path
) -> None:
    runs = event_runs(model_repository, name)
    want = sequence_reference(model_repository, name, runs)
    index = spec_of(model_repository, name).sequence.token_index  # type: ignore[union-attr]
    with NNServeClient(sequence_server.address) as client:
        by_name = client.score_sequences(name, runs)
        by_id = client.score_sequences(name, [[index[e] for e in r] for r in runs])
        bare = client.score_sequences(name, runs, per_position=False)
    for results in (by_name.results, by_id.results):
        for i, (run, result) in enumerate(zip(runs, results, strict=True)):
            assert result.length == len(run)
            np.testing.assert_allclose(
                result.scores, want["sequence_probabilities"][i], rtol=1e-5, atol=1e-6
            )
            np.testing.assert_allclose(
                result.position_scores, want["position_scores"][i, : len(run)], rtol=1e-5, atol=1e-6
            )
    assert by_name.results[1].steps == tuple(runs[1])
    assert all(r.position_scores == () for r in bare.results)


def test_describe_health_and_errors(
    classify_server: RunningServer, sequence_server: RunningServer, model_repository: Path
) -> None:
    mlp, lstm = spec_of(model_repository, "mlp"), spec_of(model_repository, "lstm")
    with NNServeClient(classify_server.address) as client:
        d = client.describe("mlp")
        assert (d.name, d.version, d.family, d.task, d.ready) == (
            "mlp",
            "1",
            "mlp",
            "classify",
            True,
        )
        assert d.feature_names == mlp.classify.feature_names  # type: ignore[union-attr]
        assert d.labels == mlp.labels and d.provider == "CPUExecutionProvider"
        assert d.model_json["onnx"]["sha256"] == mlp.sha256
        assert client.health() is ServingStatus.SERVING
        assert client.health("mlp") is ServingStatus.SERVING
        assert client.health("no_such_model") is ServingStatus.SERVICE_UNKNOWN
        with pytest.raises(NNServeError) as err:
            client.classify_tabular("no_such_model", [{"x": 1.0}])
        assert err.value.code == grpc.StatusCode.NOT_FOUND
        with pytest.raises(NNServeError) as err:
            client.classify_tabular("mlp", [{mlp.classify.feature_names[0]: 1.0}])  # type: ignore[union-attr]
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "missing features" in err.value.details
    with NNServeClient(sequence_server.address) as client:
        d = client.describe("lstm")
        assert d.vocabulary == lstm.sequence.vocabulary  # type: ignore[union-attr]
        assert d.max_length == lstm.sequence.max_length  # type: ignore[union-attr]
        with pytest.raises(NNServeError) as err:
            client.score_sequences("lstm", [["not.an.event"]])
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT


# ---------------------------------------------------------------- asyncio client


async def test_async_client_matches_blocking_client(
    classify_server: RunningServer, sequence_server: RunningServer, model_repository: Path
) -> None:
    rows, features = loan_rows(model_repository, "mlp")
    u8, _ = digit_images(model_repository)
    runs = event_runs(model_repository, "lstm")
    with NNServeClient(classify_server.address) as sync_classify:
        want_loans = sync_classify.classify_tabular("mlp", rows, top_k=2)
        want_digits = sync_classify.classify_images("cnn", u8, top_k=2)
        want_describe = sync_classify.describe("cnn")
    with NNServeClient(sequence_server.address) as sync_sequence:
        want_runs = sync_sequence.score_sequences("lstm", runs)

    async with (
        AsyncNNServeClient(classify_server.address) as classify,
        AsyncNNServeClient(sequence_server.address) as sequence,
    ):
        assert await classify.classify_tabular("mlp", rows, top_k=2) == want_loans
        assert await classify.classify_images("cnn", u8, top_k=2) == want_digits
        assert await classify.describe("cnn") == want_describe
        assert await sequence.score_sequences("lstm", runs) == want_runs
        assert await classify.health() is ServingStatus.SERVING
        assert await classify.health("no_such_model") is ServingStatus.SERVICE_UNKNOWN
        with pytest.raises(NNServeError) as err:
            await classify.classify_tabular("no_such_model", features)
        assert err.value.code == grpc.StatusCode.NOT_FOUND
        with pytest.raises(NNServeError) as err:
            await sequence.score_sequences("lstm", [["not.an.event"]])
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_async_client_concurrent_calls_keep_their_own_results(
    classify_server: RunningServer, model_repository: Path
) -> None:
    """Many calls in flight on one channel (the server batches them); each answer is its own."""
    _, features = loan_rows(model_repository, "mlp")
    want = reference_outputs(model_repository, "mlp", {"features": features})["probabilities"]
    async with AsyncNNServeClient(classify_server.address) as client:
        results = await asyncio.gather(
            *(client.classify_tabular("mlp", features[i % 7]) for i in range(28))
        )
    for i, result in enumerate(results):
        np.testing.assert_allclose(result.results[0].scores, want[i % 7], rtol=1e-5, atol=1e-6)


async def test_async_client_unreachable_server_is_unavailable() -> None:
    async with AsyncNNServeClient("127.0.0.1:1", timeout=5.0) as dead:
        with pytest.raises(NNServeError) as err:
            await dead.health()
    assert err.value.code == grpc.StatusCode.UNAVAILABLE


# ---------------------------------------------------------------- CLI


def test_cli_against_the_classify_service(
    classify_server: RunningServer, model_repository: Path
) -> None:
    address = classify_server.address
    health = client_cli("--address", address, "health", "--model", "mlp")
    assert (health.returncode, health.stdout.strip()) == (0, "SERVING")
    unknown = client_cli("--address", address, "health", "--model", "no_such_model")
    assert (unknown.returncode, unknown.stdout.strip()) == (1, "SERVICE_UNKNOWN")

    described = json.loads(client_cli("--address", address, "--json", "describe", "cnn").stdout)
    assert described["labels"] == list(spec_of(model_repository, "cnn").labels)

    rows, features = loan_rows(model_repository, "mlp")
    flags = [a for name, value in rows[0].items() for a in ("--feature", f"{name}={value!r}")]
    loan = client_cli("--address", address, "--json", "loan", "mlp", *flags)
    assert loan.returncode == 0, loan.stderr
    want = reference_outputs(model_repository, "mlp", {"features": features[:1]})["probabilities"]
    np.testing.assert_allclose(json.loads(loan.stdout)["results"][0]["scores"], want[0], rtol=1e-5)

    missing = client_cli("--address", address, "loan", "mlp", *flags[:2])
    assert missing.returncode == 1 and "INVALID_ARGUMENT" in missing.stderr


def test_cli_digit_sample_matches_onnx_runtime(
    classify_server: RunningServer, model_repository: Path
) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    proc = client_cli(
        "--address", classify_server.address, "--json", "digit", "cnn", "--sample", "5"
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["true_label"] == int(digits.target[5])
    image = digits.images[5].astype(np.float32).reshape(1, 1, 8, 8)
    want = reference_outputs(model_repository, "cnn", {"image": image})["probabilities"]
    np.testing.assert_allclose(got["results"][0]["scores"], want[0], rtol=1e-5, atol=1e-6)


def test_cli_logs_against_the_sequence_service(
    sequence_server: RunningServer, model_repository: Path
) -> None:
    run = event_runs(model_repository, "lstm")[1]
    want = sequence_reference(model_repository, "lstm", [run])
    proc = client_cli(
        "--address", sequence_server.address, "--json", "logs", "lstm", "--events", ",".join(run)
    )
    assert proc.returncode == 0, proc.stderr
    [result] = json.loads(proc.stdout)["results"]
    assert result["steps"] == run
    np.testing.assert_allclose(result["scores"], want["sequence_probabilities"][0], rtol=1e-5)
    np.testing.assert_allclose(
        result["position_scores"], want["position_scores"][0], rtol=1e-5, atol=1e-6
    )
    unknown = client_cli("--address", sequence_server.address, "logs", "lstm", "--events", "nope.x")
    assert unknown.returncode == 1 and "INVALID_ARGUMENT" in unknown.stderr
