"""The drift reference of a model version (model.json "drift_reference"): how its training
inputs were spread, per feature, as bins and their expected proportions.

Numpy only. Export computes the expected proportions with the same `counts` that the
services apply to live requests, so a training split scored against its own reference
gives exactly 0. docs/model-json.md, "The drift reference", describes the JSON.

Two kinds of feature:

- "bins": numeric values cut at `edges` (k - 1 increasing numbers, k bins); a value goes
  to bin i = how many edges are <= it (below the first edge: bin 0; at or above the
  last: bin k - 1). `column` picks one column of a (batch, features) input; without it
  every value of the input counts (an image's pixels, a sequence's length).
- "categories": integer ids; each listed id has a bin, and one last bin ("other") takes
  every id not listed. With `lengths_input`, only each row's first `length` positions
  count (padding is not an event).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

# Bounds on a reference (model.json is read by the services: keep what it can cost small).
MAX_FEATURES = 256
MAX_BINS = 1024  # per "bins" feature
MAX_CATEGORIES = 4096  # per "categories" feature, "other" not counted
MAX_CATEGORY_ID = 1 << 20  # ids index a lookup table of this size at most
SUM_TOLERANCE = 1e-3  # expected proportions are rounded in JSON; they sum to 1 within this

_EMPTY_F = np.zeros(0, np.float64)
_EMPTY_I = np.zeros(0, np.int64)


@dataclass(frozen=True)
class DriftFeature:
    """One scored feature: its bins over one model input, and their training proportions."""

    name: str
    kind: str  # "bins" | "categories"
    input: str
    expected: np.ndarray  # float64 (k,): training proportion of each bin
    edges: np.ndarray = field(default_factory=lambda: _EMPTY_F)  # bins: float64 (k - 1,)
    column: int | None = None  # bins: a column of a (batch, features) input
    categories: np.ndarray = field(default_factory=lambda: _EMPTY_I)  # categories: ids
    lengths_input: str | None = None  # categories: count only positions < the row's length

    @property
    def size(self) -> int:
        return int(self.expected.size)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"name": self.name, "kind": self.kind, "input": self.input}
        if self.kind == "bins":
            doc["column"] = self.column
            doc["edges"] = [float(f"{e:.9g}") for e in self.edges]
        else:
            doc["lengths_input"] = self.lengths_input
            doc["categories"] = [int(c) for c in self.categories]
        doc["expected"] = [float(f"{p:.6g}") for p in self.expected]
        return doc


@dataclass(frozen=True)
class DriftReference:
    """Every scored feature of a model version, in model.json order."""

    features: tuple[DriftFeature, ...]
    rows: int  # training rows the proportions were computed from
    source: str  # which data, in words

    @cached_property
    def offsets(self) -> np.ndarray:
        """Feature i's bins are counts()[offsets[i]:offsets[i + 1]]."""
        return np.concatenate([[0], np.cumsum([f.size for f in self.features])]).astype(np.int64)

    @property
    def size(self) -> int:
        return int(self.offsets[-1])

    @cached_property
    def _plan(self) -> tuple[tuple[Any, ...], ...]:
        """Per-input work, prepared once: columns of one input are binned in one go."""
        steps: list[tuple[Any, ...]] = []
        columns: dict[str, list[int]] = {}
        for i, f in enumerate(self.features):
            if f.kind == "bins" and f.column is not None:
                columns.setdefault(f.input, []).append(i)
            elif f.kind == "bins":
                steps.append(("all", f.input, f.edges, int(self.offsets[i])))
            else:
                # One entry per id up to the largest category, then "other": np.take
                # with mode="clip" sends every larger id to it in one call.
                lut = np.full(int(f.categories.max(initial=-1)) + 2, f.size - 1, np.int64)
                lut[f.categories] = np.arange(f.categories.size)
                steps.append(("ids", f.input, f.lengths_input, lut, int(self.offsets[i])))
        for name, indices in columns.items():
            cols = np.array([self.features[i].column for i in indices], np.int64)
            width = max(self.features[i].edges.size for i in indices)
            # Padded with +inf: no finite value reaches a padding edge.
            edges = np.full((len(indices), width), np.inf)
            for row, i in enumerate(indices):
                edges[row, : self.features[i].edges.size] = self.features[i].edges
            offsets = self.offsets[np.array(indices)]
            steps.append(("columns", name, cols, edges, offsets))
        return tuple(steps)

    def counts(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Bin counts of a batch of (validated, finite) inputs: int64 (size,)."""
        parts: list[np.ndarray] = []
        for step in self._plan:
            kind, name = step[0], step[1]
            x = inputs[name]
            if kind == "columns":
                _, _, cols, edges, offsets = step
                values = x[:, cols]  # (B, F)
                bins = (values[:, :, None] >= edges[None, :, :]).sum(axis=2)
                parts.append((bins + offsets[None, :]).ravel())
            elif kind == "all":
                _, _, edges, offset = step
                parts.append(np.searchsorted(edges, x.ravel(), side="right") + offset)
            else:
                _, _, lengths_name, lut, offset = step
                if lengths_name is not None:
                    positions = np.arange(x.shape[1])[None, :]
                    ids = x[positions < inputs[lengths_name].reshape(-1, 1)]
                else:
                    ids = x.ravel()
                # Requests are validated first (ids >= 0); a negative id would count as 0.
                parts.append(np.take(lut, ids, mode="clip") + offset)
        flat = np.concatenate(parts) if parts else _EMPTY_I
        return np.bincount(flat.astype(np.intp, copy=False), minlength=self.size)

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "rows": self.rows,
            "features": [f.to_json() for f in self.features],
        }


# ---------------------------------------------------------------- reading model.json


def _floats(values: Sequence[Any], what: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.isfinite(array).all():
        raise ValueError(f"{what}: not all finite")
    return array


def _feature(doc: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]]) -> DriftFeature:
    name, kind, source = str(doc["name"]), doc["kind"], str(doc["input"])
    where = f"drift_reference feature {name[:64]!r}"
    if source not in shapes:
        raise ValueError(f"{where}: input {source[:64]!r} is not a model input")
    expected = _floats(doc["expected"], f"{where} expected")
    if (expected < 0).any() or abs(float(expected.sum()) - 1.0) > SUM_TOLERANCE:
        raise ValueError(f"{where}: expected proportions must be >= 0 and sum to 1")
    if kind == "bins":
        edges = _floats(doc["edges"], f"{where} edges")
        if edges.size + 1 > MAX_BINS or (edges.size and (np.diff(edges) <= 0).any()):
            raise ValueError(f"{where}: edges must increase, at most {MAX_BINS - 1} of them")
        if expected.size != edges.size + 1:
            raise ValueError(f"{where}: {edges.size} edges need {edges.size + 1} proportions")
        column = doc.get("column")
        if column is not None:
            shape = shapes[source]
            if len(shape) != 2 or not 0 <= int(column) < shape[1]:
                raise ValueError(f"{where}: column {column} is not a column of {source!r}")
            column = int(column)
        return DriftFeature(name, kind, source, expected, edges=edges, column=column)
    if kind == "categories":
        ids = np.asarray(doc["categories"], dtype=np.int64).reshape(-1)
        if ids.size > MAX_CATEGORIES or np.unique(ids).size != ids.size:
            raise ValueError(f"{where}: at most {MAX_CATEGORIES} distinct categories")
        if ids.size and (ids.min() < 0 or ids.max() >= MAX_CATEGORY_ID):
            raise ValueError(f"{where}: category ids must be in 0..{MAX_CATEGORY_ID - 1}")
        if expected.size != ids.size + 1:
            raise ValueError(f"{where}: {ids.size} categories need {ids.size + 1} proportions")
        lengths = doc.get("lengths_input")
        if lengths is not None and (lengths not in shapes or len(shapes[lengths]) != 1):
            raise ValueError(f"{where}: lengths_input must name a (batch,) input")
        if lengths is not None and len(shapes[source]) != 2:
            raise ValueError(f"{where}: lengths_input needs a (batch, positions) input")
        return DriftFeature(name, kind, source, expected, categories=ids, lengths_input=lengths)
    raise ValueError(f"{where}: unknown kind {kind!r} (bins|categories)")


def parse_reference(
    doc: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]]
) -> DriftReference:
    """model.json "drift_reference" against the model's input shapes; ValueError or
    KeyError says what is wrong."""
    entries = list(doc["features"])
    if not 1 <= len(entries) <= MAX_FEATURES:
        raise ValueError(f"drift_reference: 1 to {MAX_FEATURES} features")
    features = tuple(_feature(e, shapes) for e in entries)
    names = [f.name for f in features]
    if len(set(names)) != len(names):
        raise ValueError("drift_reference: feature names must be unique")
    return DriftReference(features, int(doc["rows"]), str(doc.get("source", "")))
