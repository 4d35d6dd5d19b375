"""CNN on the scikit-learn 8x8 digits: two conv layers, max pooling, dense head."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
from torch import nn

from training.config import TrainConfig
from training.data.digits import DigitsData, load_digits_data
from training.recipe import Dataset, LossFn, Recipe
from training.tasks import classify_evaluate, classify_loss


@dataclass
class CNNConfig(TrainConfig):
    channels: tuple[int, int] = (16, 32)  # output channels of the two 3x3 convolutions
    hidden: int = 64  # width of the dense layer after pooling
    dropout: float = 0.2  # on the dense layer, training only
    epochs: int = 40
    batch_size: int = 64
    lr: float = 3e-3
    patience: int = 10


class CNN(nn.Module):
    """FP32 (B, 1, 8, 8) pixels in 0..pixel_max -> 10 digit classes."""

    input_names = ("image",)
    output_names = ("probabilities", "logits")

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


def make_loss(config: CNNConfig) -> LossFn:
    return classify_loss


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
    monitor="accuracy",
    quality_bar=("accuracy", 0.97),
)
