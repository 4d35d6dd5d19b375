"""The 8x8 handwritten digits that scikit-learn ships (1,797 images, no download)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

LABELS = [str(d) for d in range(10)]
PIXEL_MAX = 16.0  # load_digits pixels are integer intensities 0..16


@dataclass(frozen=True)
class DigitsData:
    """Images as FP32 (N, 1, 8, 8) in 0..16; y digit ids."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    seed: int

    @property
    def split_description(self) -> str:
        n = len(self.y_train) + len(self.y_val) + len(self.y_test)
        return (
            f"held-out {len(self.y_test)} of {n} scikit-learn digits "
            f"(stratified {len(self.y_test) / n:.0%}), seed {self.seed}"
        )

    def metadata(self) -> dict[str, Any]:
        return {
            "kind": "image",
            "labels": list(LABELS),
            "image": {
                "height": 8,
                "width": 8,
                "channels": 1,
                "layout": "NCHW",
                "pixel_max": PIXEL_MAX,
            },
            "split": self.split_description,
            "seed": self.seed,
        }


def load_digits_data(
    seed: int = 7, test_fraction: float = 0.2, val_fraction: float = 0.1
) -> DigitsData:
    """Fixed stratified train/val/test split of ``sklearn.datasets.load_digits``."""
    bunch = load_digits()
    x = bunch.data.astype(np.float32).reshape(-1, 1, 8, 8)  # (N, 64) -> (N, C=1, H=8, W=8)
    y = bunch.target.astype(np.int64)
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=test_fraction, stratify=y, random_state=seed
    )
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=val_fraction, stratify=y_rest, random_state=seed
    )
    return DigitsData(x_train, y_train, x_val, y_val, x_test, y_test, seed)
