"""Offline PyTorch training for the five nnserve reference models.

Entry points: ``python -m training --model NAME|all`` and :func:`training.api.train`.
"""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

MODEL_NAMES: tuple[str, ...] = ("perceptron", "mlp", "cnn", "lstm", "transformer")


def _nnserve_version() -> str:
    try:
        return importlib.metadata.version("nnserve")
    except importlib.metadata.PackageNotFoundError:
        # Running from a source checkout: read the version pyproject.toml declares.
        pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
        try:
            return str(tomllib.loads(pyproject.read_text())["project"]["version"])
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "0.0.0"


NNSERVE_VERSION = _nnserve_version()
