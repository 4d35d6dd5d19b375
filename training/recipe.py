"""What the model-agnostic trainer needs to know about one reference model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

import torch
from torch import nn

from contract.model import Signature
from training.config import TrainConfig
from training.dataset import Batch, Dataset, Split  # also imported from here by the families
from training.goldens import GoldenSet

LossFn = Callable[[nn.Module, Batch], torch.Tensor]
# (model, signature, dataset, checkpoint metadata, seed) -> golden cases for export.
GoldenCases = Callable[[nn.Module, Signature, Dataset, dict[str, Any], int], GoldenSet]


@dataclass(frozen=True)
class Extra:
    """Additional results a recipe computes after training (e.g. a baseline model)."""

    metrics: dict[str, float | int | str | bool] = field(default_factory=dict)
    # Stored in the checkpoint under "artifacts" (tensors, numbers, strings only).
    artifacts: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StepRecipe:
    """A sequence family's step model (one event plus its state in, scores plus the new
    state out), exported beside the full model for streaming sessions."""

    module: Callable[[nn.Module], nn.Module]  # trained full model -> step module
    signature: Callable[[nn.Module, dict[str, Any]], Signature]  # (full model, metadata)
    golden_cases: GoldenCases  # called with the step module and its signature


@dataclass(frozen=True)
class Explainer:
    """An optional second graph that also returns an explanation (docs/model-json.md,
    "explain"): the same inputs as the main graph, its outputs plus one more. Export
    writes it beside the main graph; the services run it only for requests that ask."""

    signature: Callable[[dict[str, Any]], Signature]  # checkpoint data metadata -> graph
    module: Callable[[nn.Module], nn.Module]  # trained model -> module of that signature
    golden_cases: GoldenCases  # its golden cases (stored ones go into model.json)
    attention_output: str  # the extra output's name
    definition: str  # what the extra output holds, recorded in model.json


@dataclass(frozen=True)
class Recipe:
    name: str  # model name in the repository
    family: str  # perceptron|mlp|cnn|lstm|transformer
    task: str  # classify|sequence
    description: str
    config_cls: type[TrainConfig]
    load_data: Callable[[Any], Dataset]
    build_model: Callable[[Any, dict[str, Any]], nn.Module]
    make_loss: Callable[[Any], LossFn]  # config -> loss(model, batch)
    evaluate: Callable[[nn.Module, Split, int], dict[str, float]]
    monitor: str  # validation metric for early stopping and best-epoch selection
    quality_bar: tuple[str, float]  # held-out metric and its minimum
    # What export needs, so export has no per-family branches: the graph's signature
    # (from the checkpoint's data metadata) and the golden cases it is checked on.
    signature: Callable[[dict[str, Any]], Signature]
    golden_cases: GoldenCases
    extra: Callable[[Any, Dataset, nn.Module], Extra] | None = None
    monitor_mode: str = "max"  # "max": higher monitor is better; "min": lower (a loss)
    step: StepRecipe | None = None  # families that can score a stream event by event
    explainer: Explainer | None = None  # an explain graph beside the main one
    # model.json "drift_reference": the training split's spread per input feature
    # (training/drift.py); None exports none, and the services then score no drift.
    drift_reference: Callable[[Signature, Dataset], dict[str, Any]] | None = None


def not_exported(*_args: Any) -> NoReturn:
    """Signature and golden cases of a model that is only trained and measured (the
    training report's comparison models), never exported."""
    raise TypeError("this model is only trained for the training report; it is not exported")
