"""Transformer encoder: token embedding + learned positions + pre-norm self-attention.

Attention uses a key padding mask, so padded positions never contribute to real ones;
the sequence summary is a masked mean + max pool over real positions only.

Next to the learned absolute positions, attention carries ALiBi-style directional
recency biases (half the heads look back, half look ahead). Without them this small
encoder learned the log grammar far too slowly for the training budget (the task
hinges on "the previous event of the same life cycle", a relative-position notion).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

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
class TransformerConfig(SequenceConfig):
    d_model: int = 64  # embedding / residual width
    heads: int = 4  # attention heads (d_model must divide evenly)
    # Heads that attend to later events; the others look back. With none of 4, seeds 1
    # and 2 scored held-out F1 0.960 and 0.956 (bar 0.95); with 2, seeds 1, 2, 7, 8, 9
    # scored 0.979-0.989 in the same training time (direction costs nothing).
    look_ahead_heads: int = 2
    layers: int = 2  # encoder blocks
    ff_dim: int = 128  # feed-forward hidden width
    dropout: float = 0.0  # on attention output and feed-forward (fresh data: rarely needed)
    epochs: int = 10
    lr: float = 3e-3
    patience: int = 4


class EncoderBlock(nn.Module):
    """Pre-norm block: x + attn(ln(x)); x + ff(ln(x))."""

    def __init__(self, d_model: int, heads: int, ff_dim: int, dropout: float) -> None:
        super().__init__()
        if d_model % heads:
            raise ValueError("d_model must be divisible by heads")
        self.heads = heads
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(
            nn.Linear(d_model, ff_dim), nn.GELU(), nn.Linear(ff_dim, d_model), nn.Dropout(dropout)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """x (B, T, D); bias (B, nh, T, T) additive attention bias (-inf at padded keys)."""
        b, t, d = x.shape
        hd = d // self.heads
        q, k, v = self.qkv(self.norm1(x)).split(d, dim=2)  # 3 x (B, T, D)
        q = q.view(b, t, self.heads, hd).transpose(1, 2)  # (B, nh, T, hd)
        k = k.view(b, t, self.heads, hd).transpose(1, 2)  # (B, nh, T, hd)
        v = v.view(b, t, self.heads, hd).transpose(1, 2)  # (B, nh, T, hd)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (B, nh, T, hd)
        y = y.transpose(1, 2).reshape(b, t, d)  # (B, nh, T, hd) -> (B, T, D)
        x = x + self.drop(self.proj(y))
        return x + self.ff(self.norm2(x))


def directional_slopes(heads: int, look_ahead: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(slopes (nh,), directions (nh,)): ``heads - look_ahead`` heads look back.

    Within a direction the slopes fall geometrically from 1 (mostly the neighbour) by
    halves (longer reach), as in ALiBi (Press et al., 2022).
    """
    back = heads - look_ahead
    slopes = [2.0**-k for k in range(back)] + [2.0**-k for k in range(look_ahead)]
    directions = [1.0] * back + [-1.0] * look_ahead
    return torch.tensor(slopes), torch.tensor(directions)


def attention_bias(
    mask: torch.Tensor, slopes: torch.Tensor, directions: torch.Tensor
) -> torch.Tensor:
    """(B, nh, T, T) additive attention bias for queries i (rows) and keys j (columns).

    A look-back head (direction +1) sees real keys j < i with bias -slope * (i - j); a
    look-ahead head (-1) sees real keys j > i with bias -slope * (j - i). A query with
    no such key (the first / last real position, and padded queries) sees only itself,
    so no row is fully masked (no NaN). Masked keys get -inf, so softmax gives them
    exactly 0 weight: padding cannot change real positions.
    """
    b, t = mask.shape
    pos = torch.arange(t, device=mask.device)
    offset = (pos.view(t, 1) - pos.view(1, t)).to(torch.float32)  # (T, T): i - j
    signed = directions.view(-1, 1, 1) * offset.view(1, t, t)  # (nh, T, T)
    visible = (signed > 0).unsqueeze(0) & mask.view(b, 1, 1, t)  # (B, nh, T, T)
    diagonal = (pos.view(t, 1) == pos.view(1, t)).view(1, 1, t, t)  # (1, 1, T, T)
    alone = ~visible.any(dim=3, keepdim=True)  # (B, nh, T, 1): query sees no key
    visible = visible | (diagonal & alone)
    recency = (-slopes.view(-1, 1, 1) * signed.abs()).unsqueeze(0)  # (1, nh, T, T)
    return torch.where(visible, recency, torch.full_like(recency, float("-inf")))


class TransformerDetector(nn.Module):
    input_names = ("tokens", "lengths")
    output_names = ("sequence_probabilities", "position_scores")

    def __init__(self, config: TransformerConfig, metadata: dict[str, Any]) -> None:
        super().__init__()
        self.vocab_size, pad_id, self.unknown_id = vocabulary_info(metadata)
        d = config.d_model
        self.embed = nn.Embedding(self.vocab_size, d, padding_idx=pad_id)
        self.position = nn.Embedding(int(metadata["max_length"]), d)  # learned positions
        # Start positions small: the recency bias already carries order, and large random
        # position vectors would add noise to every attention score early in training.
        nn.init.normal_(self.position.weight, std=0.02)
        self.blocks = nn.ModuleList(
            EncoderBlock(d, config.heads, config.ff_dim, config.dropout)
            for _ in range(config.layers)
        )
        self.norm = nn.LayerNorm(d)
        self.slopes: torch.Tensor
        self.directions: torch.Tensor
        slopes, directions = directional_slopes(config.heads, config.look_ahead_heads)
        # Derived from the config, so not part of the state_dict.
        self.register_buffer("slopes", slopes, persistent=False)
        self.register_buffer("directions", directions, persistent=False)
        self.sequence_head = nn.Sequential(nn.Linear(2 * d + 1, d), nn.ReLU(), nn.Linear(d, 2))
        self.position_head = nn.Sequential(nn.Linear(2 * d + 1, d), nn.ReLU(), nn.Linear(d, 1))

    def logits(
        self, tokens: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(sequence logits (B, 2), position logits (B, T), mask (B, T))."""
        tokens, lengths, mask = sanitize_inputs(tokens, lengths, self.vocab_size, self.unknown_id)
        b, t = tokens.shape
        positions = torch.arange(t, device=tokens.device)
        x = self.embed(tokens) + self.position(positions).unsqueeze(0)  # (B, T, D)
        bias = attention_bias(mask, self.slopes, self.directions)  # (B, nh, T, T)
        for block in self.blocks:
            x = block(x, bias)
        x = self.norm(x)
        d = x.shape[2]
        m = mask.unsqueeze(2).to(x.dtype)  # (B, T, 1)
        mean = (x * m).sum(dim=1) / m.sum(dim=1)  # (B, D)
        neg_inf = torch.full_like(x, float("-inf"))
        peak = torch.where(mask.unsqueeze(2), x, neg_inf).amax(dim=1)  # (B, D)
        per_pos = torch.cat(
            [
                x,
                mean.unsqueeze(1).expand(b, t, d),  # (B, D) -> (B, T, D)
                is_last_position(lengths, t, x.dtype),  # (B, T, 1)
            ],
            dim=2,
        )  # (B, T, 2D + 1)
        pos_logits = self.position_head(per_pos).squeeze(2)  # (B, T, 1) -> (B, T)
        # The most suspicious position feeds the sequence decision directly.
        summary = torch.cat([mean, peak, masked_max(pos_logits, mask)], dim=1)  # (B, 2D + 1)
        seq_logits = self.sequence_head(summary)  # (B, 2)
        return seq_logits, pos_logits, mask

    def forward(
        self, tokens: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        seq_logits, pos_logits, mask = self.logits(tokens, lengths)
        return seq_logits.softmax(dim=1), masked_position_scores(pos_logits, mask)


def build_model(config: TransformerConfig, metadata: dict[str, Any]) -> TransformerDetector:
    return TransformerDetector(config, metadata)


RECIPE = Recipe(
    name="transformer",
    family="transformer",
    task="sequence",
    description=(
        "System-log anomaly detection (simulated service runs); "
        "embedding + learned positions + self-attention encoder"
    ),
    config_cls=TransformerConfig,
    load_data=load_data,
    build_model=build_model,
    make_loss=make_loss,
    evaluate=sequence_evaluate,
    monitor="f1",
    quality_bar=("f1", 0.95),
)
