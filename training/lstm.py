"""LSTM: token embedding + unidirectional LSTM with sequence and per-position heads.

Padding invariance: the LSTM is causal, so right-padding cannot reach real positions;
the sequence summary is the hidden state at each row's own last position plus a
masked max-pool, so the batch's padded length never enters the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from training import goldens, signatures
from training.recipe import Recipe
from training.sequence import (
    SequenceConfig,
    is_last_position,
    load_data,
    make_loss,
    masked_max,
    masked_position_scores,
    sanitize_inputs,
    vocabulary_info,
)
from training.tasks import sequence_evaluate


@dataclass
class LSTMConfig(SequenceConfig):
    embed_dim: int = 32  # token embedding width
    hidden: int = 64  # LSTM hidden size
    layers: int = 1  # stacked LSTM layers
    epochs: int = 10
    lr: float = 5e-3
    patience: int = 4


class LSTMDetector(nn.Module):
    def __init__(self, config: LSTMConfig, metadata: dict[str, Any]) -> None:
        super().__init__()
        self.vocab_size, pad_id, self.unknown_id = vocabulary_info(metadata)
        self.embed = nn.Embedding(self.vocab_size, config.embed_dim, padding_idx=pad_id)
        self.lstm = nn.LSTM(config.embed_dim, config.hidden, config.layers, batch_first=True)
        h = config.hidden
        self.sequence_head = nn.Sequential(nn.Linear(2 * h + 1, h), nn.ReLU(), nn.Linear(h, 2))
        # Each position sees its own state, the row's final state and an is-last flag.
        self.position_head = nn.Sequential(nn.Linear(2 * h + 1, h), nn.ReLU(), nn.Linear(h, 1))

    def logits(
        self, tokens: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(sequence logits (B, 2), position logits (B, T), mask (B, T))."""
        tokens, lengths, mask = sanitize_inputs(tokens, lengths, self.vocab_size, self.unknown_id)
        b, t = tokens.shape
        states, _ = self.lstm(self.embed(tokens))  # (B, T, H)
        h = states.shape[2]
        last_idx = (lengths - 1).view(b, 1, 1).expand(b, 1, h)  # (B, 1, H)
        last = states.gather(1, last_idx).squeeze(1)  # (B, H)
        pooled = masked_max(states, mask)  # (B, H)
        per_pos = torch.cat(
            [
                states,
                last.unsqueeze(1).expand(b, t, h),  # (B, H) -> (B, T, H)
                is_last_position(lengths, t, states.dtype),  # (B, T, 1)
            ],
            dim=2,
        )  # (B, T, 2H + 1)
        pos_logits = self.position_head(per_pos).squeeze(2)  # (B, T, 1) -> (B, T)
        # The most suspicious position feeds the sequence decision directly.
        summary = torch.cat([last, pooled, masked_max(pos_logits, mask)], dim=1)  # (B, 2H + 1)
        seq_logits = self.sequence_head(summary)  # (B, 2)
        return seq_logits, pos_logits, mask

    def forward(
        self, tokens: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        seq_logits, pos_logits, mask = self.logits(tokens, lengths)
        return seq_logits.softmax(dim=1), masked_position_scores(pos_logits, mask)


def build_model(config: LSTMConfig, metadata: dict[str, Any]) -> LSTMDetector:
    return LSTMDetector(config, metadata)


RECIPE = Recipe(
    name="lstm",
    family="lstm",
    task="sequence",
    description="System-log anomaly detection (simulated service runs); embedding + LSTM",
    config_cls=LSTMConfig,
    load_data=load_data,
    build_model=build_model,
    make_loss=make_loss,
    evaluate=sequence_evaluate,
    monitor="f1",
    quality_bar=("f1", 0.95),
    signature=signatures.token_sequence,
    golden_cases=goldens.token_sequence,
)
