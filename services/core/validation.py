"""Input checks against model.json, on plain numpy arrays, before anything is queued.

A request that fails here gets INVALID_ARGUMENT with a message naming the input and
what was expected; it never reaches the batcher, so it cannot harm other requests.
"""

from __future__ import annotations

import numpy as np

from contract.model import ModelSpec, TensorSpec
from services.errors import InvalidInput

Tensors = dict[str, np.ndarray]


def check_shape(spec: TensorSpec, shape: tuple[int, ...]) -> None:
    expected = spec.shape
    if len(shape) != len(expected):
        raise InvalidInput(
            f"input {spec.name!r} has rank {len(shape)}; model expects rank {len(expected)} "
            f"{list(expected)} (-1 = any size)"
        )
    for axis, (got, want) in enumerate(zip(shape, expected, strict=True)):
        if got < 0:
            raise InvalidInput(f"input {spec.name!r} has a negative dimension at axis {axis}")
        if want != -1 and got != want:
            raise InvalidInput(
                f"input {spec.name!r} has shape {list(shape)}; model expects {list(expected)} "
                f"(axis {axis} must be {want})"
            )
    if shape[0] == 0:
        raise InvalidInput(f"input {spec.name!r} is an empty batch (axis 0 has size 0)")


def check_request(spec: ModelSpec, tensors: Tensors) -> int:
    """Validate a complete set of model inputs; returns the number of rows (batch size)."""
    missing = [t.name for t in spec.inputs if t.name not in tensors]
    if missing:
        raise InvalidInput(
            f"model {spec.name!r} needs inputs {[t.name for t in spec.inputs]}; missing {missing}"
        )
    rows = -1
    for t in spec.inputs:
        value = tensors[t.name]
        if rows == -1:
            rows = int(value.shape[0])
        elif value.shape[0] != rows:
            raise InvalidInput(
                f"inputs disagree on the batch size: {t.name!r} has {value.shape[0]} rows, "
                f"others {rows}"
            )
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise InvalidInput(f"input {t.name!r} contains NaN or infinity")
    if spec.sequence is not None:
        _check_sequence(spec, tensors)
    return rows


def _check_sequence(spec: ModelSpec, tensors: Tensors) -> None:
    seq = spec.sequence
    assert seq is not None
    tokens = tensors.get(seq.tokens_input)
    if tokens is not None:
        steps = tokens.shape[1]
        if steps == 0:
            raise InvalidInput(f"input {seq.tokens_input!r} is an empty sequence (length 0)")
        if steps > seq.max_length:
            raise InvalidInput(
                f"sequence length {steps} exceeds the model's max length {seq.max_length}"
            )
        low, high = int(tokens.min()), int(tokens.max())
        if low < 0 or high >= len(seq.vocabulary):
            bad = low if low < 0 else high
            raise InvalidInput(
                f"token id {bad} is outside the vocabulary (0..{len(seq.vocabulary) - 1})"
            )
    if seq.lengths_input and tokens is not None:
        lengths = tensors[seq.lengths_input]
        if lengths.size and (int(lengths.min()) < 1 or int(lengths.max()) > tokens.shape[1]):
            raise InvalidInput(
                f"input {seq.lengths_input!r} must be between 1 and the padded length "
                f"{tokens.shape[1]}; got {int(lengths.min())}..{int(lengths.max())}"
            )
