"""Input drift against the training distribution (model.json "drift_reference",
services/core/drift.py, nnserve_input_drift): the PSI arithmetic and the sliding window
on their own, the reference export writes, and real servers scoring held-out data from
the training generator (low) and shifted data (high), per feature."""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from contract.drift import DriftFeature, DriftReference
from contract.model import NUMPY_TO_V2, read_spec
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from services.core.drift import CHUNKS, PSI_EPSILON, DriftWindow, psi
from services.settings import Settings
from tests.support.metrics import read_metrics
from tests.support.servers import RunningServer, make_settings, running_server
from training.dataset import Dataset
from training.registry import get_recipe

WINDOW = 1000  # rows per model version's window in these servers
INTERVAL = 0.1  # seconds between drift refreshes
ROWS_PER_REQUEST = 64  # the exported models' max_batch_size
STABLE, SIGNIFICANT = 0.1, 0.25  # the usual PSI reading (docs/metrics.md)


# ------------------------------------------------------------------ PSI and window


def test_psi_matches_the_formula() -> None:
    expected = np.array([0.5, 0.5])
    assert psi(expected, expected) == 0.0
    # (0.9 - 0.5) ln(0.9 / 0.5) + (0.1 - 0.5) ln(0.1 / 0.5)
    want = 0.4 * math.log(1.8) - 0.4 * math.log(0.2)
    assert psi(expected, np.array([0.9, 0.1])) == pytest.approx(want, rel=1e-12)
    # An empty bin on either side is floored at epsilon instead of dividing by zero.
    got = psi(np.array([0.5, 0.5, 0.0]), np.array([0.5, 0.25, 0.25]))
    eps = PSI_EPSILON
    want = -0.25 * math.log(0.25 / 0.5) + (0.25 - eps) * math.log(0.25 / eps)
    assert got == pytest.approx(want, rel=1e-12)
    assert psi(np.array([0.25, 0.75]), np.array([0.75, 0.25])) > SIGNIFICANT


def _one_feature(edges: list[float], expected: list[float]) -> DriftReference:
    feature = DriftFeature("x", "bins", "x", np.array(expected), edges=np.array(edges, np.float64))
    return DriftReference((feature,), 100, "test")


def test_window_slides_and_holds_counts_only() -> None:
    reference = _one_feature([0.5], [0.5, 0.5])
    window = DriftWindow(reference, 80, interval_s=0)
    assert window._ring.shape == (CHUNKS, 2)  # memory: chunks x bins, whatever the traffic
    zeros, halves = np.zeros((10, 1)), np.array([[0.0], [1.0]] * 5)
    window.observe({"x": zeros}, 10)
    assert window.scores() == {}  # fewer than a quarter of the window's rows: not scored
    for _ in range(7):
        window.observe({"x": zeros}, 10)
    drifted = window.scores()["x"]  # every value in bin 0 against 50/50
    assert drifted == pytest.approx(psi(np.array([0.5, 0.5]), np.array([1.0, 0.0])))
    for _ in range(8):  # one window of rows spread as in training replaces them
        window.observe({"x": halves}, 10)
    assert window.rows <= 80
    assert window.scores()["x"] == pytest.approx(0.0, abs=1e-12)


def test_window_bins_at_most_one_request_per_interval() -> None:
    window = DriftWindow(_one_feature([0.5], [0.5, 0.5]), 1000, interval_s=60)
    for _ in range(50):  # a burst: only the first request is binned
        window.observe({"x": np.zeros((2, 1))}, 2)
    assert window.rows == 2


def test_window_samples_large_requests() -> None:
    window = DriftWindow(_one_feature([0.5], [0.5, 0.5]), 100_000, interval_s=0)
    window.observe({"x": np.ones((10_000, 1))}, 10_000)
    assert 0 < window.rows <= 256  # MAX_ROWS_PER_REQUEST: every k-th row is binned


# -------------------------------------------------------------- the exported reference


def _training_data(name: str) -> Dataset:
    """The data the exported models trained on: regenerated from the recipe's seed."""
    recipe = get_recipe(name)
    return recipe.load_data(recipe.config_cls())


@pytest.mark.parametrize(
    ("name", "features"),
    [
        ("mlp", {"age", "monthly_income", "debt_ratio", "dependents"}),
        ("cnn", {"pixels"}),
        ("lstm", {"tokens", "length"}),
    ],
)
def test_export_writes_a_small_reference_of_the_training_split(
    model_repository: Path, name: str, features: set[str]
) -> None:
    doc = json.loads((model_repository / name / "1" / "model.json").read_text())
    assert len(json.dumps(doc["drift_reference"])) < 4096
    reference = read_spec(model_repository, name, 1).drift
    assert reference is not None
    assert features <= {f.name for f in reference.features}
    # The services' binning of the training split gives back the expected proportions.
    train = _training_data(name).train
    inputs = (
        {"tokens": train["tokens"], "lengths": train["lengths"]}
        if "tokens" in train
        else {doc["classify"]["input"]: train["x"]}
    )
    counts = reference.counts(inputs)
    for i, feature in enumerate(reference.features):
        part = counts[reference.offsets[i] : reference.offsets[i + 1]]
        np.testing.assert_allclose(part / part.sum(), feature.expected, atol=1e-5)
    assert reference.rows == len(train["y"])


# ---------------------------------------------------------------- real servers


@pytest.fixture(scope="module")
def drift_repository(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's models, with perceptron as a model exported before drift references:
    its model.json without "drift_reference"."""
    target = tmp_path_factory.mktemp("drift") / "model_repository"
    shutil.copytree(model_repository, target)
    path = target / "perceptron" / "1" / "model.json"
    doc = json.loads(path.read_text())
    del doc["drift_reference"]
    path.write_text(json.dumps(doc))
    return target


def _settings(repository: Path, service: str) -> Settings:
    return make_settings(
        repository, service=service, drift_window=WINDOW, drift_interval_seconds=INTERVAL
    )


@pytest.fixture(scope="module")
def classify(drift_repository: Path) -> Iterator[RunningServer]:
    with running_server(_settings(drift_repository, "classify")) as server:
        yield server


@pytest.fixture(scope="module")
def sequence(drift_repository: Path) -> Iterator[RunningServer]:
    with running_server(_settings(drift_repository, "sequence")) as server:
        yield server


def send(server: RunningServer, model: str, inputs: dict[str, np.ndarray]) -> None:
    """ModelInfer in requests of ROWS_PER_REQUEST rows; every one must succeed."""
    stub = pb_grpc.GRPCInferenceServiceStub(server.channel())
    rows = len(next(iter(inputs.values())))
    for start in range(0, rows, ROWS_PER_REQUEST):
        request = pb.ModelInferRequest(model_name=model)
        for key, value in inputs.items():
            part = np.ascontiguousarray(value[start : start + ROWS_PER_REQUEST])
            request.inputs.add(name=key, datatype=NUMPY_TO_V2[part.dtype], shape=part.shape)
            request.raw_input_contents.append(part.tobytes())
        stub.ModelInfer(request, timeout=30)


def drift(server: RunningServer, model: str) -> dict[str, float]:
    """nnserve_input_drift of a model by feature, once a refresh has seen every request
    sent so far (requests are answered, hence observed, before this is called)."""
    time.sleep(5 * INTERVAL)
    selected = read_metrics(server).select("nnserve_input_drift", model=model)
    return {s.labels["feature"]: s.value for s in selected}


def test_tabular_drift_low_on_held_out_and_high_on_tripled_income(
    classify: RunningServer,
) -> None:
    data = _training_data("mlp")
    held_out = data.test["x"]
    names = [f["name"] for f in data.metadata["features"]]
    send(classify, "mlp", {"features": held_out[:1024]})
    stable = drift(classify, "mlp")
    print(f"mlp held-out PSI: {stable}")
    assert set(stable) == set(names)
    assert max(stable.values()) < STABLE, stable

    shifted = held_out[1024:2048].copy()
    income = names.index("monthly_income")
    shifted[:, income] *= 3
    send(classify, "mlp", {"features": shifted})
    drifted = drift(classify, "mlp")
    print(f"mlp income x3 PSI: {drifted}")
    assert drifted["monthly_income"] > SIGNIFICANT, drifted
    # The score names the feature that moved: the others are still held-out data.
    assert max(v for k, v in drifted.items() if k != "monthly_income") < STABLE, drifted


def test_image_drift_low_on_held_out_and_high_on_inverted_digits(
    classify: RunningServer,
) -> None:
    held_out = _training_data("cnn").test["x"]  # 360 images: above a quarter window
    send(classify, "cnn", {"image": held_out})
    stable = drift(classify, "cnn")
    print(f"cnn held-out PSI: {stable}")
    assert set(stable) == {"pixels"} and stable["pixels"] < STABLE, stable

    inverted = np.concatenate([16.0 - held_out] * 3)  # a whole window of ink-for-paper
    send(classify, "cnn", {"image": inverted})
    drifted = drift(classify, "cnn")
    print(f"cnn inverted PSI: {drifted}")
    assert drifted["pixels"] > SIGNIFICANT, drifted


def test_sequence_drift_low_on_held_out_high_on_long_runs_and_rare_events(
    sequence: RunningServer,
) -> None:
    data = _training_data("lstm")
    tokens, lengths = data.test["tokens"], data.test["lengths"]
    send(sequence, "lstm", {"tokens": tokens[:1024], "lengths": lengths[:1024]})
    stable = drift(sequence, "lstm")
    print(f"lstm held-out PSI: {stable}")
    assert set(stable) == {"tokens", "length"}
    assert max(stable.values()) < STABLE, stable

    # Much longer runs of the same events: each held-out run repeated to the max length.
    width = tokens.shape[1]
    rows = range(1024, 2048)
    long_runs = np.stack([np.resize(tokens[r, : lengths[r]], width) for r in rows])
    send(sequence, "lstm", {"tokens": long_runs, "lengths": np.full(1024, width, np.int64)})
    longer = drift(sequence, "lstm")
    print(f"lstm long-run PSI: {longer}")
    assert longer["length"] > SIGNIFICANT, longer
    assert longer["tokens"] < STABLE, longer

    # Held-out lengths, but every event one that training saw rarely or never (errors,
    # <unk>): they fall in the "other" bin or in bins with tiny training shares.
    vocabulary = data.metadata["vocabulary"]
    rare_ids = [vocabulary.index(e) for e in ("<unk>", "worker.crashed", "queue.overflowed")]
    rare = np.random.default_rng(0).choice(rare_ids, size=(1024, width)).astype(np.int64)
    send(sequence, "lstm", {"tokens": rare, "lengths": lengths[2048:3072]})
    unseen = drift(sequence, "lstm")
    print(f"lstm rare-event PSI: {unseen}")
    assert unseen["tokens"] > SIGNIFICANT, unseen
    assert unseen["length"] < STABLE, unseen


def test_model_without_reference_exports_no_drift_series(
    classify: RunningServer, drift_repository: Path
) -> None:
    assert read_spec(drift_repository, "perceptron", 1).drift is None
    held_out = _training_data("perceptron").test["x"]
    send(classify, "perceptron", {"features": held_out[:512]})
    send(classify, "mlp", {"features": held_out[:512]})  # a model with one, beside it
    assert drift(classify, "perceptron") == {}
    assert drift(classify, "mlp")
