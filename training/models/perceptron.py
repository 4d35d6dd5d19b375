"""Perceptron: one linear unit + step, trained with a hinge (margin perceptron) loss."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training import drift, goldens, signatures
from training.config import TrainConfig
from training.data.loans import make_loans
from training.metrics import accuracy, binary_prf
from training.normalize import Standardize
from training.recipe import Batch, Dataset, LossFn, Recipe, Split
from training.tasks import predict_logits


@dataclass
class PerceptronConfig(TrainConfig):
    rule: str = "linear"  # loan rule to learn; the MLP's baseline uses "nonlinear"
    n_samples: int = 40000  # generated applications (70/10/20 train/val/test)
    label_noise: float = 0.01  # fraction of labels flipped at random
    hinge_margin: float = 1.0  # hinge loss max(0, margin - y * score), y in {-1, +1}
    epochs: int = 15
    batch_size: int = 256
    lr: float = 1e-2
    weight_decay: float = 0.0
    patience: int = 4


class Perceptron(nn.Module):
    """score = w . standardize(x) + b; decision = step(score)."""

    def __init__(self, config: PerceptronConfig, metadata: dict[str, Any]) -> None:
        super().__init__()
        self.standardize = Standardize(metadata["features"])
        self.linear = nn.Linear(len(metadata["features"]), 1)

    def score(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(self.standardize(features))  # (B, 1)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Two-class view for shared evaluation: [-score, score]/2 ranks like the step."""
        s = self.score(features)
        return torch.cat([-s, s], dim=1) / 2  # (B, 2)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        margin = self.score(features)  # (B, 1)
        step = (margin > 0).to(margin.dtype)
        return torch.cat([1 - step, step], dim=1), margin  # (B, 2) one-hot, (B, 1)


@lru_cache(maxsize=4)
def _loans(rule: str, n: int, seed: int, noise: float) -> Any:
    return make_loans(rule, n=n, seed=seed, label_noise=noise)  # type: ignore[arg-type]


def loan_dataset(config: Any, rule: str) -> Dataset:
    data = _loans(rule, config.n_samples, config.seed, config.label_noise)
    return Dataset(
        train={"x": data.x_train, "y": data.y_train},
        val={"x": data.x_val, "y": data.y_val},
        test={"x": data.x_test, "y": data.y_test},
        metadata=data.metadata(),
    )


def load_data(config: PerceptronConfig) -> Dataset:
    return loan_dataset(config, config.rule)


def build_model(config: PerceptronConfig, metadata: dict[str, Any]) -> Perceptron:
    return Perceptron(config, metadata)


def make_loss(config: PerceptronConfig) -> LossFn:
    margin = config.hinge_margin

    def loss(model: nn.Module, batch: Batch) -> torch.Tensor:
        score = model.score(batch["x"]).squeeze(1)  # type: ignore[operator]  # (B,)
        sign = batch["y"].to(score.dtype) * 2 - 1  # {0, 1} -> {-1, +1}
        return F.relu(margin - sign * score).mean()

    return loss


def evaluate(model: nn.Module, split: Split, batch_size: int) -> dict[str, float]:
    logits = predict_logits(model, split["x"], batch_size)
    pred = (logits[:, 1] > 0).astype(split["y"].dtype)  # the step decision
    y = split["y"]
    precision, recall, f1 = binary_prf(y, pred)
    sign = y * 2 - 1
    loss = float((logits[:, 1] * 2 * -sign + 1).clip(min=0).mean())  # hinge, margin 1
    return {
        "loss": loss,
        "accuracy": accuracy(y, pred),
        "precision": precision,
        "recall": recall,
        "f1": f1,
    }


# Golden rows keep |margin| above this, so float noise on another device cannot flip
# the step (the one-hot probabilities output).
_MIN_ABS_MARGIN = 1e-2


def clear_of_step(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """Rows whose margin is not within float noise of the step."""
    with torch.no_grad():
        margin = model(torch.from_numpy(x))[1].numpy()[:, 0]
    return x[np.abs(margin) >= _MIN_ABS_MARGIN]


RECIPE = Recipe(
    name="perceptron",
    family="perceptron",
    task="classify",
    description="Loan approval, linearly separable rule; one linear unit + step",
    config_cls=PerceptronConfig,
    load_data=load_data,
    build_model=build_model,
    make_loss=make_loss,
    evaluate=evaluate,
    monitor="accuracy",
    quality_bar=("accuracy", 0.95),
    signature=functools.partial(signatures.tabular, second_output="margin", second_width=1),
    golden_cases=functools.partial(goldens.tabular, keep=clear_of_step),
    drift_reference=drift.tabular,
)
