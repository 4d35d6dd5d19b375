"""CNN vs an MLP of similar parameter count on the same digits, as given and shifted.

Claim: a CNN keeps the spatial structure that an MLP on flattened pixels loses. Both
models see the same split and the same training (optimiser, epochs, early stopping and
the CNN's random shift of up to ``max_shift`` pixels); only the architecture differs.
They are then scored on the held-out digits and on every held-out digit moved by the
same shift in each of the 8 directions.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from training.checkpoint import load_checkpoint, model_from_checkpoint
from training.config import TrainConfig
from training.metrics import accuracy
from training.models import cnn
from training.recipe import Recipe, not_exported
from training.tasks import classify_evaluate, predict_logits
from training.trainer import fit, seed_everything

MODELS = ("cnn", "mlp")
TEST_SETS = ("held-out", "shifted")
# The 8 one-step directions (rows, columns); scaled by the shift size.
DIRECTIONS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0))


def shift_images(x: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Move (N, C, H, W) images ``dy`` rows down and ``dx`` columns right; 0 fills."""
    h, w = x.shape[2], x.shape[3]
    out = np.zeros_like(x)
    out[:, :, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = x[
        :, :, max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def shifted_copies(x: np.ndarray, y: np.ndarray, shift: int) -> tuple[np.ndarray, np.ndarray]:
    """Every image moved by ``shift`` pixels in each of the 8 directions: 8N images."""
    xs = [shift_images(x, dy * shift, dx * shift) for dy, dx in DIRECTIONS]
    return np.concatenate(xs), np.tile(y, len(DIRECTIONS))


@dataclass
class PixelMLPConfig(TrainConfig):
    widths: tuple[int, ...] = (160, 160)  # hidden layer widths
    dropout: float = 0.2  # before the output layer, as in the CNN's head
    max_shift: int = 1  # random training shift, as in the CNN recipe


class PixelMLP(nn.Module):
    """Flattened (B, 1, 8, 8) pixels -> hidden layers -> 10 classes (no spatial prior)."""

    def __init__(self, config: PixelMLPConfig, metadata: dict[str, Any]) -> None:
        super().__init__()
        image = metadata["image"]
        self.pixel_max = float(image["pixel_max"])
        width = image["channels"] * image["height"] * image["width"]
        layers: list[nn.Module] = [nn.Flatten()]  # (B, C, H, W) -> (B, C*H*W)
        for h in config.widths:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers += [nn.Dropout(config.dropout), nn.Linear(width, len(metadata["labels"]))]
        self.net = nn.Sequential(*layers)

    def logits(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image / self.pixel_max)  # (B, 10)


def mlp_parameters(n_in: int, widths: tuple[int, ...], n_out: int) -> int:
    sizes = [n_in, *widths, n_out]
    return sum(a * b + b for a, b in itertools.pairwise(sizes))


def matched_widths(target: int, n_in: int, n_out: int, depth: int = 2) -> tuple[int, ...]:
    """Equal hidden widths (``depth`` layers) whose parameter count is closest to target."""
    best = min(
        range(1, 4096),
        key=lambda h: abs(mlp_parameters(n_in, (h,) * depth, n_out) - target),
    )
    return (best,) * depth


def parameter_count(model: nn.Module) -> int:
    return sum(int(p.numel()) for p in model.parameters())


PIXEL_MLP = Recipe(
    name="mlp-on-pixels",
    family="mlp",
    task="classify",
    description="Digits as 64 flattened pixels; MLP sized like the CNN",
    config_cls=PixelMLPConfig,
    load_data=cnn.load_data,
    build_model=PixelMLP,
    make_loss=cnn.make_loss,  # the CNN's loss: same random shift of the training images
    evaluate=classify_evaluate,
    monitor="loss",
    monitor_mode="min",
    quality_bar=cnn.RECIPE.quality_bar,
    signature=not_exported,
    golden_cases=not_exported,
)


@dataclass
class SpatialResult:
    shift: int
    parameters: dict[str, int]  # model -> parameter count (seed-independent)
    widths: tuple[int, ...]
    seeds: list[int] = field(default_factory=list)
    # model -> test set -> accuracy per seed (in ``seeds`` order)
    accuracy: dict[str, dict[str, list[float]]] = field(
        default_factory=lambda: {m: {t: [] for t in TEST_SETS} for m in MODELS}
    )

    @property
    def held(self) -> bool:
        """The CNN is more accurate than the MLP on both test sets, seed by seed."""
        return bool(self.seeds) and all(
            c > m
            for t in TEST_SETS
            for c, m in zip(self.accuracy["cnn"][t], self.accuracy["mlp"][t], strict=True)
        )


def _scores(model: nn.Module, x: np.ndarray, y: np.ndarray, shift: int) -> dict[str, float]:
    xs, ys = shifted_copies(x, y, shift)
    return {
        "held-out": accuracy(y, predict_logits(model, x, 512).argmax(1)),
        "shifted": accuracy(ys, predict_logits(model, xs, 512).argmax(1)),
    }


def compare(
    cnn_checkpoints: dict[int, Path],
    progress: bool = True,
    on_run: Callable[[int], object] | None = None,
) -> SpatialResult:
    """For each seed's CNN checkpoint: train a matched MLP the same way, score both.

    ``on_run(seed)`` is called before each MLP training run (report progress).
    """
    result: SpatialResult | None = None
    for seed, path in cnn_checkpoints.items():
        if on_run is not None:
            on_run(seed)
        net, config, recipe = model_from_checkpoint(load_checkpoint(path))
        assert isinstance(config, cnn.CNNConfig)
        data = recipe.load_data(config)
        image = data.metadata["image"]
        n_in = image["channels"] * image["height"] * image["width"]
        widths = matched_widths(parameter_count(net), n_in, len(data.metadata["labels"]))
        shared = {k: v for k, v in config.to_dict().items() if k in TrainConfig().to_dict()}
        mlp_config = PixelMLPConfig(
            **shared, widths=widths, dropout=config.dropout, max_shift=config.max_shift
        )
        seed_everything(mlp_config.seed)
        mlp = PixelMLP(mlp_config, data.metadata)
        fit(mlp, PIXEL_MLP, data, mlp_config, progress=progress)
        if result is None:
            result = SpatialResult(
                shift=max(1, config.max_shift),  # a recipe without augmentation: 1 pixel
                parameters={"cnn": parameter_count(net), "mlp": parameter_count(mlp)},
                widths=widths,
            )
        result.seeds.append(seed)
        x, y = data.test["x"], data.test["y"]
        for name, model in (("cnn", net), ("mlp", mlp)):
            for test_set, value in _scores(model, x, y, result.shift).items():
                result.accuracy[name][test_set].append(value)
    if result is None:
        raise ValueError("no CNN checkpoints to compare")
    return result
