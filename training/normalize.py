"""Input standardisation baked into tabular models, so clients send raw feature values."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class Standardize(nn.Module):
    """(x - mean) / std with the training split's statistics stored as buffers."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, features: list[dict[str, Any]]) -> None:
        super().__init__()
        mean = torch.tensor([f["mean"] for f in features], dtype=torch.float32)
        # A constant feature would divide by zero; treat its spread as 1.
        std = torch.tensor([f["std"] or 1.0 for f in features], dtype=torch.float32)
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std
