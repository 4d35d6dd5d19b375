"""Drift references of the reference families (model.json "drift_reference"): how the
training split spread over bins, per feature. Each family's recipe picks one
(Recipe.drift_reference); export calls it without knowing the family.

The expected proportions are counted with contract.drift's own `counts`, the function the
services apply to live requests, so both sides bin identically.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from contract.drift import DriftFeature, DriftReference
from contract.model import Signature
from training.dataset import Dataset

QUANTILE_BINS = 10  # per tabular feature and for sequence lengths: deciles of training
PIXEL_BINS = 8  # equal-width intensity bins over 0..pixel_max
# Tokens rarer than this share of training events pool into the "other" bin (with
# every id never seen): one bin each would be noise at live window sizes.
MIN_TOKEN_SHARE = 0.001
SOURCE = "training split"


def _round(values: np.ndarray) -> np.ndarray:
    """As model.json will hold them (9 significant digits), so the proportions are
    counted against the very edges the services read."""
    return np.array([float(f"{v:.9g}") for v in values], np.float64)


def _quantile_edges(values: np.ndarray, bins: int) -> np.ndarray:
    cuts = np.quantile(values.astype(np.float64), np.linspace(0, 1, bins + 1)[1:-1])
    return np.unique(_round(cuts))  # discrete features repeat quantiles: one edge each


def _with_expected(
    features: list[DriftFeature], inputs: dict[str, np.ndarray], rows: int
) -> dict[str, Any]:
    """Fill in each feature's training proportions (counted as the services count)."""
    draft = DriftReference(tuple(features), rows, SOURCE)
    counts = draft.counts(inputs).astype(np.float64)
    offsets = draft.offsets
    done = []
    for i, f in enumerate(features):
        part = counts[offsets[i] : offsets[i + 1]]
        expected = part / part.sum() if part.sum() else np.full(f.size, 1.0 / f.size)
        done.append(
            DriftFeature(
                f.name, f.kind, f.input, expected, f.edges, f.column, f.categories, f.lengths_input
            )
        )
    return DriftReference(tuple(done), rows, SOURCE).to_json()


def _placeholder(size: int) -> np.ndarray:
    return np.full(size, 1.0 / size)


def tabular(sig: Signature, data: Dataset) -> dict[str, Any]:
    """Deciles of each feature column of the training split."""
    section = sig.section
    x = data.train["x"]
    features = []
    for column, feature in enumerate(section["features"]):
        edges = _quantile_edges(x[:, column], QUANTILE_BINS)
        features.append(
            DriftFeature(
                feature["name"], "bins", section["input"], _placeholder(edges.size + 1),
                edges=edges, column=column,
            )
        )  # fmt: skip
    return _with_expected(features, {section["input"]: x}, len(x))


def image(sig: Signature, data: Dataset) -> dict[str, Any]:
    """Histogram of pixel intensities (every pixel of every training image)."""
    section = sig.section
    pixel_max = float(section["image"]["pixel_max"])
    edges = _round(pixel_max * np.arange(1, PIXEL_BINS) / PIXEL_BINS)
    feature = DriftFeature(
        "pixels", "bins", section["input"], _placeholder(PIXEL_BINS), edges=edges
    )
    x = data.train["x"]
    return _with_expected([feature], {section["input"]: x}, len(x))


def token_sequence(sig: Signature, data: Dataset) -> dict[str, Any]:
    """Event (token) frequencies with an "other" bin, and deciles of sequence length."""
    section = sig.section
    tokens_input, lengths_input = section["tokens_input"], section["lengths_input"]
    tokens, lengths = data.train["tokens"], data.train["lengths"]
    events = tokens[np.arange(tokens.shape[1])[None, :] < lengths[:, None]]
    share = np.bincount(events, minlength=len(section["vocabulary"])) / max(events.size, 1)
    categories = np.flatnonzero(share >= MIN_TOKEN_SHARE).astype(np.int64)
    length_edges = _quantile_edges(lengths, QUANTILE_BINS)
    features = [
        DriftFeature(
            "tokens", "categories", tokens_input, _placeholder(categories.size + 1),
            categories=categories, lengths_input=lengths_input,
        ),
        DriftFeature(
            "length", "bins", lengths_input, _placeholder(length_edges.size + 1),
            edges=length_edges,
        ),
    ]  # fmt: skip
    inputs = {tokens_input: tokens, lengths_input: lengths}
    return _with_expected(features, inputs, len(lengths))
