"""The data a recipe trains on: splits of equally long arrays and their metadata.

A leaf module (numpy and torch only), so that both the recipes (training.recipe) and the
golden-case builders (training.goldens) can name these types without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

# A split is a dict of equally long arrays, e.g. {"x": (N, 8), "y": (N,)}.
Split = dict[str, np.ndarray]
Batch = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Dataset:
    train: Split
    val: Split
    test: Split
    metadata: dict[str, Any]  # labels, features / vocabulary, split description ...
