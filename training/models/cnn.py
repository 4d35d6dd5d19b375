"""CNN on the scikit-learn 8x8 digits: two conv layers, max pooling, dense head."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from training import drift, goldens, signatures
from training.config import TrainConfig
from training.data.digits import DigitsData, load_digits_data
from training.recipe import Batch, Dataset, LossFn, Recipe
from training.tasks import classify_evaluate


@dataclass
class CNNConfig(TrainConfig):
    channels: tuple[int, int] = (16, 32)  # output channels of the two 3x3 convolutions
    hidden: int = 64  # width of the dense layer after pooling
    dropout: float = 0.2  # on the dense layer, training only
    max_shift: int = 1  # training images are shifted by up to this many pixels (augmentation)
    epochs: int = 30
    batch_size: int = 64
    lr: float = 3e-3
    patience: int = 8  # on validation loss: 144 validation images make accuracy too coarse


class CNN(nn.Module):
    """FP32 (B, 1, 8, 8) pixels in 0..pixel_max -> 10 digit classes."""

    def __init__(self, config: CNNConfig, metadata: dict[str, Any]) -> None:
        super().__init__()
        image = metadata["image"]
        self.pixel_max = float(image["pixel_max"])
        c1, c2 = config.channels
        self.features = nn.Sequential(
            nn.Conv2d(image["channels"], c1, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B, c2, 8, 8) -> (B, c2, 4, 4)
        )
        flat = c2 * (image["height"] // 2) * (image["width"] // 2)
        self.head = nn.Sequential(
            nn.Flatten(),  # (B, c2, 4, 4) -> (B, c2 * 16)
            nn.Linear(flat, config.hidden),
            nn.ReLU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden, len(metadata["labels"])),
        )

    def logits(self, image: torch.Tensor) -> torch.Tensor:
        # Scaling lives in the graph: clients send pixels in 0..pixel_max.
        return self.head(self.features(image / self.pixel_max))  # (B, 10)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.logits(image)
        return logits.softmax(dim=1), logits


@lru_cache(maxsize=2)
def _digits(seed: int) -> DigitsData:
    return load_digits_data(seed=seed)


def load_data(config: CNNConfig) -> Dataset:
    data = _digits(config.seed)
    return Dataset(
        train={"x": data.x_train, "y": data.y_train},
        val={"x": data.x_val, "y": data.y_val},
        test={"x": data.x_test, "y": data.y_test},
        metadata=data.metadata(),
    )


def build_model(config: CNNConfig, metadata: dict[str, Any]) -> CNN:
    return CNN(config, metadata)


def random_shift(images: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels in x and y, filling with 0."""
    if max_shift <= 0:
        return images
    b, _, h, w = images.shape
    pad = max_shift
    padded = F.pad(images, (pad, pad, pad, pad))  # (B, C, H + 2p, W + 2p)
    dy = torch.randint(0, 2 * pad + 1, (b,))
    dx = torch.randint(0, 2 * pad + 1, (b,))
    rows = (dy.view(b, 1) + torch.arange(h).view(1, h)).view(b, 1, h, 1)  # (B, 1, H, 1)
    cols = (dx.view(b, 1) + torch.arange(w).view(1, w)).view(b, 1, 1, w)  # (B, 1, 1, W)
    batch = torch.arange(b).view(b, 1, 1, 1)
    chans = torch.arange(images.shape[1]).view(1, -1, 1, 1)
    return padded[batch, chans, rows, cols]  # (B, C, H, W)


def make_loss(config: CNNConfig) -> LossFn:
    def loss(model: nn.Module, batch: Batch) -> torch.Tensor:
        x = random_shift(batch["x"], config.max_shift)
        return F.cross_entropy(model.logits(x), batch["y"])  # type: ignore[operator]

    return loss


RECIPE = Recipe(
    name="cnn",
    family="cnn",
    task="classify",
    description="Handwritten digits 0-9 (scikit-learn 8x8); 2 conv layers + pooling + dense",
    config_cls=CNNConfig,
    load_data=load_data,
    build_model=build_model,
    make_loss=make_loss,
    evaluate=classify_evaluate,
    monitor="loss",
    monitor_mode="min",
    quality_bar=("accuracy", 0.97),
    signature=signatures.image,
    golden_cases=goldens.image,
    drift_reference=drift.image,
)
