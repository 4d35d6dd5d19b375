"""LSTM: token embedding + unidirectional LSTM with sequence and per-position heads.

Causal by construction, so a server can score a stream one event at a time: each
position's score depends only on the events up to it, and the sequence summary (the
last hidden state, a running max of the hidden states and a running max of the
position logits) can be carried forward in O(1) state. The step model (LSTMStep) is
that recurrence exported as its own graph; export proves it reproduces this model.

Padding invariance: right-padding cannot reach real positions, and the summary is
taken at each row's own last position and over its real positions only, so the
batch's padded length never enters the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from contract.model import Signature
from training import drift, goldens, signatures
from training.models.sequence import (
    SequenceConfig,
    load_data,
    make_loss,
    masked_max,
    masked_position_scores,
    sanitize_inputs,
    vocabulary_info,
)
from training.recipe import Recipe, StepRecipe
from training.tasks import sequence_evaluate

# Initial value of the running maxima in the step state: below any hidden state (in
# (-1, 1)) or position logit, finite so that model.json can carry it.
RUNNING_MAX_INITIAL = -1e30


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
        # Each position sees only its own state (causal: a stream can score it at once).
        self.position_head = nn.Sequential(nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 1))

    def logits(
        self, tokens: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(sequence logits (B, 2), position logits (B, T), mask (B, T))."""
        tokens, lengths, mask = sanitize_inputs(tokens, lengths, self.vocab_size, self.unknown_id)
        b = tokens.shape[0]
        states, _ = self.lstm(self.embed(tokens))  # (B, T, H)
        h = states.shape[2]
        last_idx = (lengths - 1).view(b, 1, 1).expand(b, 1, h)  # (B, 1, H)
        last = states.gather(1, last_idx).squeeze(1)  # (B, H)
        pooled = masked_max(states, mask)  # (B, H)
        pos_logits = self.position_head(states).squeeze(2)  # (B, T, 1) -> (B, T)
        # The most suspicious position feeds the sequence decision directly.
        summary = torch.cat([last, pooled, masked_max(pos_logits, mask)], dim=1)  # (B, 2H + 1)
        seq_logits = self.sequence_head(summary)  # (B, 2)
        return seq_logits, pos_logits, mask

    def forward(
        self, tokens: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        seq_logits, pos_logits, mask = self.logits(tokens, lengths)
        return seq_logits.softmax(dim=1), masked_position_scores(pos_logits, mask)


class LSTMStep(nn.Module):
    """One event of many streams at once, batch axis first everywhere:
    (token (B,), h (B, L, H), c (B, L, H), pooled (B, H), peak (B, 1)) ->
    (position_score (B,), sequence_probabilities (B, 2), and the four states, updated).

    After feeding a sequence's events one by one from the initial state, position_score
    is the full model's score of the latest position and sequence_probabilities its
    sequence score for the events so far (the parity gate at export checks this).
    """

    def __init__(self, detector: LSTMDetector) -> None:
        super().__init__()
        self.detector = detector

    def forward(
        self,
        token: torch.Tensor,
        h: torch.Tensor,
        c: torch.Tensor,
        pooled: torch.Tensor,
        peak: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        d = self.detector
        bad = (token < 0) | (token >= d.vocab_size)
        token = torch.where(bad, torch.full_like(token, d.unknown_id), token)
        x = d.embed(token.unsqueeze(1))  # (B, 1, E)
        # nn.LSTM keeps layers first: (B, L, H) <-> (L, B, H).
        out, (h_next, c_next) = d.lstm(x, (h.transpose(0, 1), c.transpose(0, 1)))
        state = out[:, 0]  # (B, H), the top layer's output for this event
        logit = d.position_head(state)  # (B, 1)
        pooled_next = torch.maximum(pooled, state)
        peak_next = torch.maximum(peak, logit)
        summary = torch.cat([state, pooled_next, peak_next], dim=1)  # (B, 2H + 1)
        probabilities = d.sequence_head(summary).softmax(dim=1)  # (B, 2)
        return (
            torch.sigmoid(logit).squeeze(1),
            probabilities,
            h_next.transpose(0, 1),
            c_next.transpose(0, 1),
            pooled_next,
            peak_next,
        )


def build_model(config: LSTMConfig, metadata: dict[str, Any]) -> LSTMDetector:
    return LSTMDetector(config, metadata)


def step_model(model: nn.Module) -> nn.Module:
    assert isinstance(model, LSTMDetector)
    return LSTMStep(model)


def step_signature(model: nn.Module, metadata: dict[str, Any]) -> Signature:
    assert isinstance(model, LSTMDetector)
    lstm = model.lstm
    return signatures.lstm_step(metadata, lstm.num_layers, lstm.hidden_size, RUNNING_MAX_INITIAL)


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
    drift_reference=drift.token_sequence,
    step=StepRecipe(
        module=step_model,
        signature=step_signature,
        golden_cases=goldens.token_sequence_step,
    ),
)
