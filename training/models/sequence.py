"""Pieces shared by the two sequence families (LSTM and Transformer) on the log data."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch

from training.config import TrainConfig
from training.data.logs import LogData, make_logs
from training.recipe import Dataset, LossFn
from training.tasks import sequence_loss_fn, sequence_split


@dataclass
class SequenceConfig(TrainConfig):
    n_samples: int = 20000  # generated runs (70/10/20 train/val/test)
    max_length: int = 64  # longest run, in events; the exported graph accepts 1..max_length
    anomaly_rate: float = 0.4  # fraction of runs with one injected anomaly
    concurrency: int = 2  # most life cycles open at once in a generated run
    position_loss_weight: float = 1.0  # weight of the per-position BCE next to the sequence CE
    position_pos_weight: float = 5.0  # BCE weight of anomalous positions (they are rare)
    batch_size: int = 64


@lru_cache(maxsize=2)
def _logs(n: int, seed: int, max_length: int, anomaly_rate: float, concurrency: int) -> LogData:
    return make_logs(
        n=n, seed=seed, max_length=max_length, anomaly_rate=anomaly_rate, concurrency=concurrency
    )


def load_data(config: SequenceConfig) -> Dataset:
    data = _logs(
        config.n_samples, config.seed, config.max_length, config.anomaly_rate, config.concurrency
    )
    return Dataset(
        train=sequence_split(data.train),
        val=sequence_split(data.val),
        test=sequence_split(data.test),
        metadata=data.metadata(),
    )


def make_loss(config: SequenceConfig) -> LossFn:
    return sequence_loss_fn(config.position_loss_weight, config.position_pos_weight)


def sanitize_inputs(
    tokens: torch.Tensor, lengths: torch.Tensor, vocab_size: int, unknown_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clamp lengths to 1..T, map out-of-range ids to <unk>; also return the (B, T) mask.

    The services validate requests; this keeps the graph itself total (no out-of-range
    gather) for any input a client might send through the raw KServe API.
    """
    t = tokens.shape[1]
    lengths = lengths.clamp(1, t)
    bad = (tokens < 0) | (tokens >= vocab_size)
    tokens = torch.where(bad, torch.full_like(tokens, unknown_id), tokens)
    positions = torch.arange(t, device=tokens.device).unsqueeze(0)  # (1, T)
    mask = positions < lengths.unsqueeze(1)  # (B, T), True at real events
    return tokens, lengths, mask


def is_last_position(lengths: torch.Tensor, t: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, T, 1) indicator of each row's last real position (where a truncation shows)."""
    positions = torch.arange(t, device=lengths.device).unsqueeze(0)  # (1, T)
    return (positions == (lengths - 1).unsqueeze(1)).to(dtype).unsqueeze(-1)


def masked_max(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Max over real positions: (B, T) -> (B, 1) or (B, T, C) -> (B, C)."""
    if values.dim() == 3:
        mask = mask.unsqueeze(2)  # (B, T) -> (B, T, 1)
        return torch.where(mask, values, torch.full_like(values, float("-inf"))).amax(dim=1)
    neg_inf = torch.full_like(values, float("-inf"))
    return torch.where(mask, values, neg_inf).amax(dim=1, keepdim=True)


def masked_position_scores(position_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """P(anomalous) per position, exactly 0 at padded positions."""
    scores = torch.sigmoid(position_logits)
    return torch.where(mask, scores, torch.zeros_like(scores))


def vocabulary_info(metadata: dict[str, Any]) -> tuple[int, int, int]:
    """(vocabulary size, pad id, unknown id)."""
    return len(metadata["vocabulary"]), int(metadata["pad_id"]), int(metadata["unknown_id"])
