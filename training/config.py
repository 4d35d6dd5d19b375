"""Training settings shared by every model family (each family config extends this)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Self


@dataclass
class TrainConfig:
    seed: int = 7  # seeds data generation, weight init and batch order
    epochs: int = 30  # upper bound; early stopping usually ends sooner
    batch_size: int = 128
    lr: float = 3e-3  # AdamW peak learning rate, cosine-decayed to 0 over `epochs`
    weight_decay: float = 1e-4
    patience: int = 6  # epochs without validation improvement before stopping
    min_delta: float = 1e-4  # a smaller validation improvement does not reset patience
    eval_batch_size: int = 1024

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-compatible dict (tuples become lists) for checkpoints and logs."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Self:
        """Rebuild from :meth:`to_dict` output; unknown keys are an error."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ValueError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            default = fields[key].default
            # Tuples travel as lists through JSON / checkpoints.
            kwargs[key] = tuple(value) if isinstance(default, tuple) else value
        return cls(**kwargs)
