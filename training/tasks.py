"""Losses and held-out evaluation shared by the classify and sequence families."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.data.logs import ANOMALY_KINDS
from training.metrics import accuracy, binary_prf, macro_f1
from training.recipe import Batch, Split


def classify_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    logits = model.logits(batch["x"])  # type: ignore[operator]
    return F.cross_entropy(logits, batch["y"])


@torch.no_grad()
def predict_logits(model: nn.Module, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Raw logits of a classify model over a whole split, in eval mode."""
    was_training = model.training
    model.eval()
    try:
        parts = [
            model.logits(torch.from_numpy(x[i : i + batch_size]))  # type: ignore[operator]
            for i in range(0, len(x), batch_size)
        ]
    finally:
        model.train(was_training)
    return torch.cat(parts).numpy()


def classify_evaluate(model: nn.Module, split: Split, batch_size: int) -> dict[str, float]:
    logits = predict_logits(model, split["x"], batch_size)
    y = split["y"]
    pred = logits.argmax(1)
    n_classes = logits.shape[1]
    loss = float(F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(y)))
    metrics = {"loss": loss, "accuracy": accuracy(y, pred)}
    if n_classes == 2:
        precision, recall, f1 = binary_prf(y, pred)
        metrics.update(precision=precision, recall=recall, f1=f1)
    else:
        metrics["f1"] = macro_f1(y, pred, n_classes)
    return metrics


def sequence_split(split: Any) -> Split:
    """Arrays of a :class:`training.data.logs.SequenceSplit` as a trainer split."""
    return {
        "tokens": split.tokens,
        "lengths": split.lengths,
        "y": split.labels,
        "position_y": split.position_labels,
        "kinds": split.kinds,
    }


def _trim(batch: Batch) -> Batch:
    """Cut the padded time axis to the longest sequence in the batch (saves compute)."""
    t = int(batch["lengths"].max())
    return {k: v[:, :t] if v.dim() == 2 else v for k, v in batch.items()}


def sequence_loss_fn(
    position_weight: float, pos_weight: float = 1.0
) -> Callable[[nn.Module, Batch], torch.Tensor]:
    """Sequence cross-entropy + ``position_weight`` x masked per-position BCE.

    ``pos_weight`` up-weights the rare anomalous positions in the BCE.
    """
    weight = torch.tensor(pos_weight)

    def loss(model: nn.Module, batch: Batch) -> torch.Tensor:
        b = _trim(batch)
        seq_logits, pos_logits, mask = model.logits(b["tokens"], b["lengths"])  # type: ignore[operator]
        seq_loss = F.cross_entropy(seq_logits, b["y"])
        pos_loss = F.binary_cross_entropy_with_logits(
            pos_logits[mask], b["position_y"][mask], pos_weight=weight
        )
        return seq_loss + position_weight * pos_loss

    return loss


@torch.no_grad()
def predict_sequences(
    model: nn.Module, split: Split, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """(sequence probabilities (N, 2), position scores (N, max_length)) in eval mode."""
    was_training = model.training
    model.eval()
    n, max_len = split["tokens"].shape
    seq = np.zeros((n, 2), dtype=np.float32)
    pos = np.zeros((n, max_len), dtype=np.float32)
    try:
        for i in range(0, n, batch_size):
            lengths = torch.from_numpy(split["lengths"][i : i + batch_size])
            t = int(lengths.max())
            tokens = torch.from_numpy(split["tokens"][i : i + batch_size, :t])
            p_seq, p_pos = model(tokens, lengths)
            seq[i : i + len(lengths)] = p_seq.numpy()
            pos[i : i + len(lengths), :t] = p_pos.numpy()
    finally:
        model.train(was_training)
    return seq, pos


def sequence_evaluate(model: nn.Module, split: Split, batch_size: int) -> dict[str, float]:
    seq, pos = predict_sequences(model, split, batch_size)
    y = split["y"]
    pred = seq.argmax(1)
    precision, recall, f1 = binary_prf(y, pred)
    loss = float(-np.mean(np.log(np.clip(seq[np.arange(len(y)), y], 1e-7, 1.0))))
    mask = np.arange(pos.shape[1])[None, :] < split["lengths"][:, None]
    pos_true = split["position_y"][mask].astype(np.int64)
    pos_pred = (pos[mask] > 0.5).astype(np.int64)
    _, _, pos_f1 = binary_prf(pos_true, pos_pred)
    metrics = {
        "loss": loss,
        "accuracy": accuracy(y, pred),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "position_f1": pos_f1,
    }
    # Detection rate per injected anomaly kind (kinds: 0 normal, 1 + ANOMALY_KINDS index).
    for k, name in enumerate(ANOMALY_KINDS, start=1):
        rows = split["kinds"] == k
        if rows.any():
            metrics[f"recall_{name}"] = float(np.mean(pred[rows] == 1))
    return metrics
