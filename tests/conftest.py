"""Shared fixtures: one model repository trained and exported in this test session with
the real pipeline (training.api + export.api, short dry-run training: the service tests
need real graphs and goldens, not accuracy), and one running server per service."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from contract.model import read_spec
from tests.support.compose_stack import docker_engine
from tests.support.servers import RunningServer, make_settings, running_server

# One Docker engine per session for the compose stack tests (make stack-test).
__all__ = ["docker_engine"]

CLASSIFY_MODELS = ("perceptron", "mlp", "cnn")
SEQUENCE_MODELS = ("lstm", "transformer")
ALL_MODELS = CLASSIFY_MODELS + SEQUENCE_MODELS


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The five reference models, trained briefly and exported (parity gate included)."""
    from export.api import export_model
    from training.api import train

    runs = tmp_path_factory.mktemp("runs")
    repository = tmp_path_factory.mktemp("model_repository")
    for name in ALL_MODELS:
        result = train(name, dry_run=True, runs_dir=runs, progress=False)
        export_model(result.checkpoint, repository)
    return repository


@pytest.fixture
def scratch_repository(model_repository: Path, tmp_path: Path) -> Path:
    """A private copy tests may break (corrupt files, add versions)."""
    target = tmp_path / "model_repository"
    shutil.copytree(model_repository, target)
    return target


@pytest.fixture(scope="session")
def classify_server(model_repository: Path) -> Iterator[RunningServer]:
    with running_server(make_settings(model_repository, service="classify")) as server:
        yield server


@pytest.fixture(scope="session")
def sequence_server(model_repository: Path) -> Iterator[RunningServer]:
    with running_server(make_settings(model_repository, service="sequence")) as server:
        yield server


@pytest.fixture(scope="session")
def servers(
    classify_server: RunningServer, sequence_server: RunningServer
) -> dict[str, RunningServer]:
    """Model name -> the running server that serves it."""
    return {
        **{m: classify_server for m in CLASSIFY_MODELS},
        **{m: sequence_server for m in SEQUENCE_MODELS},
    }


def model_json(repository: Path, name: str, version: int = 1) -> dict[str, Any]:
    return json.loads((repository / name / str(version) / "model.json").read_text())


def golden_inputs(repository: Path, name: str, case: int = 0) -> dict[str, np.ndarray]:
    return dict(read_spec(repository, name, 1).goldens[case].inputs)


def reference_outputs(
    repository: Path, name: str, inputs: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """In-process ONNX Runtime on the same model file: what the server must reproduce."""
    session = ort.InferenceSession(
        str(repository / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs), strict=True))
