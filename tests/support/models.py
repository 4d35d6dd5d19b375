"""The five reference models as the tests see them: names, what their exported versions
declare (model.json, goldens), what in-process ONNX Runtime answers, and inputs built
from their specs for the client library's calls."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from contract.model import ModelSpec, read_spec

CLASSIFY_MODELS = ("perceptron", "mlp", "cnn")
SEQUENCE_MODELS = ("lstm", "transformer")
ALL_MODELS = CLASSIFY_MODELS + SEQUENCE_MODELS


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


def spec_of(repository: Path, name: str) -> ModelSpec:
    return read_spec(repository, name, 1)


def loan_rows(repository: Path, name: str) -> tuple[list[dict[str, float]], np.ndarray]:
    """Golden feature rows, as name -> value mappings and as the model's (B, F) tensor."""
    features = golden_inputs(repository, name, case=1)["features"]  # 7 held-out rows
    names = spec_of(repository, name).classify.feature_names  # type: ignore[union-attr]
    rows = [dict(zip(names, map(float, row), strict=True)) for row in features]
    return rows[::-1], features[::-1]  # reversed: order must follow the request


def digit_images(repository: Path) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, H, W) and the float tensor (N, 1, H, W) the server must build."""
    spec = spec_of(repository, "cnn")
    assert spec.classify is not None
    rng = np.random.default_rng(3)
    channels, height, width = spec.classify.image_shape  # type: ignore[misc]
    u8 = rng.integers(0, 256, size=(5, height, width), dtype=np.uint8)
    scale = np.float32(spec.classify.pixel_max / 255.0)
    return u8, (u8 * scale).astype(np.float32).reshape(5, channels, height, width)


def event_runs(repository: Path, name: str) -> list[list[str]]:
    """Three runs of different lengths, as event names from the model's vocabulary."""
    spec = spec_of(repository, name)
    assert spec.sequence is not None
    vocabulary = spec.sequence.vocabulary
    reserved = (spec.sequence.pad_id, spec.sequence.unknown_id)
    events = [e for i, e in enumerate(vocabulary) if i not in reserved]
    rng = np.random.default_rng(5)
    return [list(rng.choice(events, size=n)) for n in (3, 11, 1)]
