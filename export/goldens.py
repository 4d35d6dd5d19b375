"""Golden input/output cases: real held-out samples and random valid inputs.

Cases go through their JSON form before PyTorch computes the reference outputs, so
the inputs stored in model.json are bit-for-bit the inputs the reference saw.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from export.spec import DTYPES, IOSpec

# Perceptron outputs are a step of the margin: golden rows keep |margin| above this,
# so float noise on another device cannot flip the one-hot output.
_MIN_ABS_MARGIN = 1e-2


@dataclass(frozen=True)
class Case:
    name: str
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]  # PyTorch reference


def _num(x: float) -> float:
    # 9 significant digits round-trip any float32 exactly and keep model.json small.
    return float(f"{x:.9g}")


def encode_array(a: np.ndarray) -> dict[str, Any]:
    flat = a.reshape(-1)  # row-major
    data = [int(v) for v in flat] if a.dtype.kind in "iub" else [_num(float(v)) for v in flat]
    return {"shape": list(a.shape), "data": data}


def decode_array(obj: dict[str, Any], dtype: str) -> np.ndarray:
    return np.asarray(obj["data"], dtype=DTYPES[dtype]).reshape(obj["shape"])


def case_to_json(case: Case) -> dict[str, Any]:
    return {
        "name": case.name,
        "inputs": {k: encode_array(v) for k, v in case.inputs.items()},
        "outputs": {k: encode_array(v) for k, v in case.outputs.items()},
    }


def cases_from_json(cases: list[dict[str, Any]], spec: IOSpec) -> list[Case]:
    dtypes = {t.name: t.dtype for t in (*spec.inputs, *spec.outputs)}
    return [
        Case(
            name=c["name"],
            inputs={k: decode_array(v, dtypes[k]) for k, v in c["inputs"].items()},
            outputs={k: decode_array(v, dtypes[k]) for k, v in c["outputs"].items()},
        )
        for c in cases
    ]


@torch.no_grad()
def reference(model: nn.Module, spec: IOSpec, name: str, inputs: dict[str, np.ndarray]) -> Case:
    """Round-trip the inputs through JSON, then run PyTorch on them."""
    dtypes = {t.name: t.dtype for t in spec.inputs}
    clean = {k: decode_array(encode_array(v), dtypes[k]) for k, v in inputs.items()}
    model.eval()
    outs = model(*(torch.from_numpy(clean[t.name]) for t in spec.inputs))
    return Case(
        name=name,
        inputs=clean,
        outputs={t.name: o.numpy() for t, o in zip(spec.outputs, outs, strict=True)},
    )


@dataclass(frozen=True)
class GoldenSet:
    stored: list[Case]  # written to model.json and re-checked by the services
    extra: list[Case]  # checked at export only (keeps model.json small)


def _robust_rows(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """Rows whose perceptron margin is not within float noise of the step."""
    with torch.no_grad():
        margin = model(torch.from_numpy(x))[1].numpy()[:, 0]
    return x[np.abs(margin) >= _MIN_ABS_MARGIN]


def tabular_goldens(
    model: nn.Module, spec: IOSpec, test_x: np.ndarray, features: list[dict[str, Any]], seed: int
) -> GoldenSet:
    rng = np.random.default_rng(seed)
    lo = np.array([f["min"] for f in features], dtype=np.float32)
    hi = np.array([f["max"] for f in features], dtype=np.float32)
    random_x = rng.uniform(lo, hi, size=(512, len(features))).astype(np.float32)
    held = test_x
    if spec.outputs[1].name == "margin":  # perceptron: keep the step well-defined
        held, random_x = _robust_rows(model, held), _robust_rows(model, random_x)
    return GoldenSet(
        stored=[
            reference(model, spec, "heldout_b1", {"features": held[:1]}),
            reference(model, spec, "heldout_b7", {"features": held[1:8]}),
            reference(model, spec, "random_b64", {"features": random_x[:64]}),
        ],
        extra=[
            reference(model, spec, "heldout_b64", {"features": held[8:72]}),
            reference(model, spec, "random_b7", {"features": random_x[64:71]}),
        ],
    )


def image_goldens(
    model: nn.Module, spec: IOSpec, test_x: np.ndarray, pixel_max: float, seed: int
) -> GoldenSet:
    rng = np.random.default_rng(seed)
    shape = test_x.shape[1:]
    # Stored random images use whole intensities (compact JSON); extra ones any float.
    random_int = rng.integers(0, int(pixel_max) + 1, size=(64, *shape)).astype(np.float32)
    random_float = rng.uniform(0.0, pixel_max, size=(7, *shape)).astype(np.float32)
    return GoldenSet(
        stored=[
            reference(model, spec, "heldout_b1", {"image": test_x[:1]}),
            reference(model, spec, "heldout_b7", {"image": test_x[1:8]}),
            reference(model, spec, "random_b64", {"image": random_int}),
        ],
        extra=[
            reference(model, spec, "heldout_b64", {"image": test_x[8:72]}),
            reference(model, spec, "random_float_b7", {"image": random_float}),
        ],
    )


def _pad(rows: list[np.ndarray], pad_id: int, t: int | None = None) -> dict[str, np.ndarray]:
    """Right-pad token rows into one batch: tokens (B, T), lengths (B,)."""
    t = t or max(len(r) for r in rows)
    tokens = np.full((len(rows), t), pad_id, dtype=np.int64)
    for i, r in enumerate(rows):
        tokens[i, : len(r)] = r
    return {"tokens": tokens, "lengths": np.array([len(r) for r in rows], dtype=np.int64)}


def sequence_lengths(max_length: int, n: int, rng: np.random.Generator) -> list[int]:
    """n lengths that always include 1, 5, 17 and max_length (where they fit)."""
    must = sorted({min(v, max_length) for v in (1, 5, 17, max_length)})
    rest = rng.integers(1, max_length + 1, size=max(0, n - len(must))).tolist()
    lengths = (must + rest)[:n]
    rng.shuffle(lengths)
    return lengths


def sequence_goldens(
    model: nn.Module,
    spec: IOSpec,
    test_tokens: np.ndarray,
    test_lengths: np.ndarray,
    test_labels: np.ndarray,
    vocab_size: int,
    pad_id: int,
    max_length: int,
    seed: int,
) -> GoldenSet:
    rng = np.random.default_rng(seed)
    held = [test_tokens[i, : test_lengths[i]] for i in range(len(test_lengths))]
    # Mixed lengths and labels in one batch: 4 normal and 3 anomalous held-out runs.
    normal = [i for i in range(len(held)) if test_labels[i] == 0][:4]
    anomalous = [i for i in range(len(held)) if test_labels[i] == 1][:3]
    mixed = [held[i] for i in normal + anomalous]

    def random_rows(lengths: list[int]) -> list[np.ndarray]:
        return [rng.integers(2, vocab_size, size=n).astype(np.int64) for n in lengths]

    b64 = random_rows(sequence_lengths(max_length, 64, rng))
    extra = [
        reference(model, spec, f"random_b1_len{n}", _pad(random_rows([n]), pad_id))
        for n in sorted({1, 5, 17, max_length})
        if n <= max_length
    ]
    extra += [
        reference(
            model,
            spec,
            "random_b7_mixed",
            _pad(random_rows(sequence_lengths(max_length, 7, rng)), pad_id),
        ),
        reference(model, spec, "heldout_b64", _pad(held[:64], pad_id)),
        # Extra right-padding beyond the longest row must change nothing (checked too).
        reference(model, spec, "heldout_b7_overpadded", _pad(mixed, pad_id, t=max_length)),
    ]
    return GoldenSet(
        stored=[
            reference(model, spec, "heldout_b1", _pad(held[:1], pad_id)),
            reference(model, spec, "heldout_b7_mixed", _pad(mixed, pad_id)),
            reference(model, spec, "random_b64_mixed", _pad(b64, pad_id, t=max_length)),
        ],
        extra=extra,
    )
