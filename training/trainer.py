"""One model-agnostic trainer: AdamW + cosine decay, validation, early stopping, tqdm."""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from training.config import TrainConfig
from training.recipe import Batch, Dataset, Recipe, Split

log = logging.getLogger(__name__)

# Sequence batches are drawn from length-sorted pools of this many batches, so each
# batch is trimmed to a similar length (the LSTM cost grows with the padded length).
_BUCKET_POOL = 16


@dataclass
class FitResult:
    history: list[dict[str, float]] = field(default_factory=list)  # one row per epoch
    best_epoch: int = 0
    best_val: dict[str, float] = field(default_factory=dict)
    stopped_early: bool = False
    train_seconds: float = 0.0  # wall clock
    train_cpu_seconds: float = 0.0  # process CPU time: comparable on a busy, shared machine


def seed_everything(seed: int) -> None:
    """Seed torch (weight init, dropout); data and batch order use explicit generators."""
    torch.manual_seed(seed)


def batch_indices(
    n: int, batch_size: int, rng: np.random.Generator, lengths: np.ndarray | None = None
) -> list[np.ndarray]:
    """Shuffled mini-batches; with ``lengths``, similar lengths are grouped together."""
    order = rng.permutation(n)
    if lengths is None:
        return [order[i : i + batch_size] for i in range(0, n, batch_size)]
    pool = batch_size * _BUCKET_POOL
    batches: list[np.ndarray] = []
    for i in range(0, n, pool):
        chunk = order[i : i + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
    return [batches[k] for k in rng.permutation(len(batches))]


def _to_batch(split: Split, idx: np.ndarray) -> Batch:
    return {k: torch.from_numpy(v[idx]) for k, v in split.items()}


def _subset(split: Split, n: int) -> Split:
    return {k: v[:n] for k, v in split.items()}


def fit(
    model: nn.Module,
    recipe: Recipe,
    data: Dataset,
    config: TrainConfig,
    *,
    dry_run: bool = False,
    progress: bool = True,
) -> FitResult:
    """Train ``model`` in place; on return it holds the best validation weights.

    ``dry_run`` takes exactly one optimisation step on one batch and evaluates on a
    small slice of the validation split: a smoke test of the whole path.
    """
    seed_everything(config.seed)
    rng = np.random.default_rng(config.seed)
    loss_fn = recipe.make_loss(config)
    train = data.train
    val = _subset(data.val, 64) if dry_run else data.val
    n = len(next(iter(train.values())))
    steps_per_epoch = 1 if dry_run else math.ceil(n / config.batch_size)
    epochs = 1 if dry_run else config.epochs
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max(1, epochs * steps_per_epoch)
    )
    result = FitResult()
    best_score = -math.inf
    best_state: dict[str, Any] = copy.deepcopy(model.state_dict())
    stale = 0
    start = time.perf_counter()
    cpu_start = time.process_time()
    bar = tqdm(
        range(1, epochs + 1), desc=recipe.name, unit="epoch", disable=not progress, mininterval=1.0
    )
    for epoch in bar:
        model.train()
        losses: list[float] = []
        for idx in batch_indices(n, config.batch_size, rng, train.get("lengths"))[:steps_per_epoch]:
            loss = loss_fn(model, _to_batch(train, idx))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
        metrics = recipe.evaluate(model, val, config.eval_batch_size)
        row = {
            "epoch": float(epoch),
            "train_loss": float(np.mean(losses)),
            "lr": float(scheduler.get_last_lr()[0]),
            "seconds": time.perf_counter() - start,
            "cpu_seconds": time.process_time() - cpu_start,
            **{f"val_{k}": v for k, v in metrics.items()},
        }
        result.history.append(row)
        value = metrics[recipe.monitor]
        score = -value if recipe.monitor_mode == "min" else value
        bar.set_postfix(
            loss=f"{row['train_loss']:.4f}", **{f"val_{recipe.monitor}": f"{value:.4f}"}
        )
        if score > best_score + config.min_delta:
            best_score, stale = score, 0
            best_state = copy.deepcopy(model.state_dict())
            result.best_epoch, result.best_val = epoch, dict(metrics)
        else:
            stale += 1
            if stale >= config.patience:
                result.stopped_early = True
                log.info(
                    "%s: early stop at epoch %d (best %d)", recipe.name, epoch, result.best_epoch
                )
                break
    bar.close()
    model.load_state_dict(best_state)
    model.eval()
    result.train_seconds = time.perf_counter() - start
    result.train_cpu_seconds = time.process_time() - cpu_start
    return result
