"""Model inputs/outputs per family, exactly as docs/model-json.md names them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# KServe v2 datatype names <-> numpy.
DTYPES: dict[str, type[np.generic]] = {
    "FP32": np.float32,
    "FP64": np.float64,
    "INT64": np.int64,
    "INT32": np.int32,
    "UINT8": np.uint8,
    "BOOL": np.bool_,
}
BATCH_AXIS = "batch"
SEQUENCE_AXIS = "sequence"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # KServe v2 name
    shape: tuple[int, ...]  # -1 for dynamic axes; axis 0 is the batch axis
    # ONNX symbolic names of the dynamic axes, by axis index.
    axis_names: dict[int, str]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


def _t(name: str, dtype: str, *dims: int | str) -> TensorSpec:
    shape = tuple(-1 if isinstance(d, str) else d for d in dims)
    axes = {i: d for i, d in enumerate(dims) if isinstance(d, str)}
    return TensorSpec(name, dtype, shape, axes)


@dataclass(frozen=True)
class IOSpec:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


def io_spec(family: str, metadata: dict[str, Any]) -> IOSpec:
    """Inputs and outputs of a reference-family graph, from checkpoint metadata."""
    b, t = BATCH_AXIS, SEQUENCE_AXIS
    n_labels = len(metadata["labels"])
    if family in ("perceptron", "mlp"):
        features = _t("features", "FP32", b, len(metadata["features"]))
        second = _t("margin", "FP32", b, 1) if family == "perceptron" else None
        return IOSpec(
            inputs=(features,),
            outputs=(
                _t("probabilities", "FP32", b, n_labels),
                second or _t("logits", "FP32", b, n_labels),
            ),
        )
    if family == "cnn":
        img = metadata["image"]
        return IOSpec(
            inputs=(_t("image", "FP32", b, img["channels"], img["height"], img["width"]),),
            outputs=(
                _t("probabilities", "FP32", b, n_labels),
                _t("logits", "FP32", b, n_labels),
            ),
        )
    if family in ("lstm", "transformer"):
        return IOSpec(
            inputs=(_t("tokens", "INT64", b, t), _t("lengths", "INT64", b)),
            outputs=(
                _t("sequence_probabilities", "FP32", b, n_labels),
                _t("position_scores", "FP32", b, t),
            ),
        )
    raise ValueError(f"no export spec for family {family!r}")
