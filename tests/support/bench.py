"""A model repository for the peers benchmark's tests: model.json and a stand-in
model.onnx (the generated peer configurations only copy it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SERVING = {"max_batch_size": 48, "max_queue_delay_ms": 1.5}
MODEL_JSON: dict[str, Any] = {
    "name": "mlp",
    "version": 1,
    "task": "classify",
    "labels": ["no", "yes"],
    "classify": {"input": "features", "scores_output": "probabilities", "kind": "tabular"},
    "onnx": {"file": "model.onnx", "sha256": "0" * 64},
    "inputs": [{"name": "features", "dtype": "FP32", "shape": [-1, 4]}],
    "outputs": [
        {"name": "probabilities", "dtype": "FP32", "shape": [-1, 2]},
        {"name": "logits", "dtype": "FP32", "shape": [-1, 2]},
    ],
    "serving": SERVING,
}


def peer_repository(directory: Path) -> Path:
    """<directory>/repo holding mlp version 1 as MODEL_JSON declares it."""
    version = directory / "repo" / "mlp" / "1"
    version.mkdir(parents=True)
    (version / "model.json").write_text(json.dumps(MODEL_JSON))
    (version / "model.onnx").write_bytes(b"not parsed here")
    return directory / "repo"
