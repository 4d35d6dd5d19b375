"""Python API: train one reference model into runs/<name>/."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from training import plots
from training.checkpoint import save_checkpoint
from training.registry import get_recipe
from training.trainer import fit, seed_everything

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
DRY_RUN_CHECKPOINT = "checkpoint.dry-run.pt"  # never picked up by export's default lookup


@dataclass(frozen=True)
class TrainResult:
    name: str
    checkpoint: Path
    metrics: dict[str, Any]

    @property
    def passed(self) -> bool:
        return bool(self.metrics["quality_bar"]["passed"])


def default_threads() -> int:
    """Torch intra-op threads for training (env NNSERVE_TRAIN_THREADS overrides).

    One: these models are tiny, so extra threads buy little, and on a shared machine
    OpenMP threads that spin-wait for a busy core slow training down many times over.
    """
    env = os.environ.get("NNSERVE_TRAIN_THREADS")
    return max(1, int(env)) if env else 1


def checkpoint_path(runs_dir: str | os.PathLike[str], name: str, dry_run: bool = False) -> Path:
    return Path(runs_dir) / name / (DRY_RUN_CHECKPOINT if dry_run else CHECKPOINT)


def train(
    name: str,
    dry_run: bool = False,
    runs_dir: str | os.PathLike[str] = "runs",
    overrides: dict[str, Any] | None = None,
    progress: bool = True,
    curves: bool = True,
) -> TrainResult:
    """Train ``name``, evaluate on its held-out split and write checkpoint + metrics.

    ``overrides`` replace config defaults (e.g. ``{"epochs": 2}`` for quick tests).
    ``dry_run`` runs one optimisation step and writes ``checkpoint.dry-run.pt`` instead
    of ``checkpoint.pt``, so a smoke run never replaces a real model. ``curves=False``
    skips ``curves.png`` (the report draws its own; a plot costs about a second).
    """
    recipe = get_recipe(name)
    config = recipe.config_cls.from_dict({**recipe.config_cls().to_dict(), **(overrides or {})})
    torch.set_num_threads(default_threads())
    seed_everything(config.seed)
    data = recipe.load_data(config)
    model = recipe.build_model(config, data.metadata)
    result = fit(model, recipe, data, config, dry_run=dry_run, progress=progress)
    held_out = recipe.evaluate(model, data.test, config.eval_batch_size)
    extra = recipe.extra(config, data, model) if recipe.extra and not dry_run else None

    bar_metric, bar_min = recipe.quality_bar
    metrics: dict[str, Any] = {
        "split": data.metadata["split"],
        "accuracy": held_out["accuracy"],
        "f1": held_out["f1"],
        "train_seconds": round(result.train_seconds, 3),
        "extra": {
            **{k: v for k, v in held_out.items() if k not in ("accuracy", "f1")},
            **(extra.metrics if extra else {}),
            "train_cpu_seconds": round(result.train_cpu_seconds, 3),
            "torch_threads": torch.get_num_threads(),
        },
        "val": result.best_val,
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
        "quality_bar": {
            "metric": bar_metric,
            "min": bar_min,
            "value": held_out[bar_metric],
            "passed": (not dry_run) and held_out[bar_metric] >= bar_min,
        },
        "dry_run": dry_run,
    }
    path = checkpoint_path(runs_dir, name, dry_run)
    save_checkpoint(
        path,
        recipe=recipe,
        config=config,
        model=model,
        metrics=metrics,
        metadata=data.metadata,
        history=result.history,
        artifacts=extra.artifacts if extra else None,
    )
    run_dir = path.parent
    suffix = ".dry-run" if dry_run else ""
    (run_dir / f"metrics{suffix}.json").write_text(
        json.dumps({"name": name, **metrics, "history": result.history}, indent=2) + "\n"
    )
    if curves and not dry_run:
        plots.curves(result.history, name, recipe.monitor, run_dir / "curves.png")
    log.info(
        "%s: held-out %s=%.4f (bar %.2f) in %.1fs -> %s",
        name,
        bar_metric,
        held_out[bar_metric],
        bar_min,
        result.train_seconds,
        path,
    )
    return TrainResult(name=name, checkpoint=path, metrics=metrics)
