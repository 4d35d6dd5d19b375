"""Checkpoints: a plain dict (state_dict + config + metrics + data metadata), never a module.

Loaded with ``torch.load(weights_only=True)``, so a checkpoint cannot run code.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training import NNSERVE_VERSION
from training.config import TrainConfig
from training.recipe import Recipe

FORMAT = "nnserve.checkpoint/1"


class CheckpointError(Exception):
    """A checkpoint is missing, unreadable or not an nnserve checkpoint."""


def save_checkpoint(
    path: Path,
    *,
    recipe: Recipe,
    config: TrainConfig,
    model: nn.Module,
    metrics: dict[str, Any],
    metadata: dict[str, Any],
    history: list[dict[str, float]],
    artifacts: dict[str, Any] | None = None,
) -> Path:
    """Write atomically (temp file + rename), so a crash never leaves half a checkpoint."""
    payload = {
        "format": FORMAT,
        "name": recipe.name,
        "family": recipe.family,
        "task": recipe.task,
        "description": recipe.description,
        "config": config.to_dict(),
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "metrics": metrics,
        "data": metadata,
        "history": history,
        "artifacts": artifacts or {},
        "versions": {"nnserve": NNSERVE_VERSION, "torch": str(torch.__version__)},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load and sanity-check a checkpoint; raises :class:`CheckpointError` with a reason."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint is not a file: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (
        RuntimeError,
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        EOFError,
        ValueError,
        OSError,
    ) as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an nnserve checkpoint (expected format {FORMAT})")
    missing = [k for k in ("name", "config", "state_dict", "metrics", "data") if k not in payload]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}")
    return payload


def model_from_checkpoint(payload: dict[str, Any]) -> tuple[nn.Module, TrainConfig, Recipe]:
    """Rebuild the eval-mode model a checkpoint describes."""
    from training.registry import get_recipe  # registry imports every family module

    try:
        recipe = get_recipe(payload["name"])
        config = recipe.config_cls.from_dict(payload["config"])
        model = recipe.build_model(config, payload["data"])
        model.load_state_dict(payload["state_dict"])
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint does not rebuild its model: {exc}") from exc
    model.eval()
    return model, config, recipe
