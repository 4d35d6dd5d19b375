"""MLP: 2+ hidden layers on the banded (non-linearly-separable) loan rule.

After training, a perceptron is trained on the very same split; its held-out accuracy
is recorded as ``perceptron_on_same_data_accuracy`` to show the perceptron fails here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from training import drift, goldens, signatures
from training.config import TrainConfig
from training.models import perceptron
from training.normalize import Standardize
from training.recipe import Dataset, Extra, LossFn, Recipe
from training.tasks import classify_evaluate, classify_loss
from training.trainer import fit


@dataclass
class MLPConfig(TrainConfig):
    n_samples: int = 40000  # generated applications (70/10/20 train/val/test)
    label_noise: float = 0.01  # fraction of labels flipped at random
    hidden: tuple[int, ...] = (64, 64)  # widths of the hidden layers (2+)
    epochs: int = 30
    batch_size: int = 128
    lr: float = 5e-3
    patience: int = 8
    baseline_epochs: int = 15  # epochs for the comparison perceptron


class MLP(nn.Module):
    def __init__(self, config: MLPConfig, metadata: dict[str, Any]) -> None:
        super().__init__()
        if len(config.hidden) < 2:
            raise ValueError("the MLP needs at least 2 hidden layers")
        self.standardize = Standardize(metadata["features"])
        layers: list[nn.Module] = []
        width = len(metadata["features"])
        for h in config.hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, len(metadata["labels"])))
        self.net = nn.Sequential(*layers)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(self.standardize(features))  # (B, 2)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.logits(features)
        return logits.softmax(dim=1), logits


def load_data(config: MLPConfig) -> Dataset:
    return perceptron.loan_dataset(config, "nonlinear")


def build_model(config: MLPConfig, metadata: dict[str, Any]) -> MLP:
    return MLP(config, metadata)


def make_loss(config: MLPConfig) -> LossFn:
    return classify_loss


def baseline(config: MLPConfig, data: Dataset, model: nn.Module) -> Extra:
    """Train a perceptron on the same non-linear split and report its accuracy."""
    p_config = perceptron.PerceptronConfig(
        seed=config.seed,
        rule="nonlinear",
        n_samples=config.n_samples,
        label_noise=config.label_noise,
        epochs=config.baseline_epochs,
    )
    p_model = perceptron.build_model(p_config, data.metadata)
    fit(p_model, perceptron.RECIPE, data, p_config, progress=False)
    held_out = perceptron.evaluate(p_model, data.test, config.eval_batch_size)
    return Extra(
        metrics={"perceptron_on_same_data_accuracy": held_out["accuracy"]},
        # Small (9 weights): lets the report draw the perceptron's decision regions.
        artifacts={"baseline_perceptron": {"state_dict": p_model.state_dict()}},
    )


RECIPE = Recipe(
    name="mlp",
    family="mlp",
    task="classify",
    description="Loan approval, non-linearly-separable rule; 2 hidden layers",
    config_cls=MLPConfig,
    load_data=load_data,
    build_model=build_model,
    make_loss=make_loss,
    evaluate=classify_evaluate,
    monitor="accuracy",
    quality_bar=("accuracy", 0.97),
    signature=signatures.tabular,
    golden_cases=goldens.tabular,
    drift_reference=drift.tabular,
    extra=baseline,
)
