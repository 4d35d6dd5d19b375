"""Golden input/output cases of the reference families: real held-out samples and random
valid inputs, with PyTorch's outputs as the reference. Each family's recipe picks its
case builder (Recipe.golden_cases); export calls it without knowing the family.

Cases go through their JSON form before PyTorch computes the reference outputs, so
the inputs stored in model.json are bit-for-bit the inputs the reference saw.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from contract.model import GoldenCase, Signature, decode_array, encode_array
from training.dataset import Dataset

# A family's filter of candidate rows (e.g. the perceptron keeps rows off its step).
RowFilter = Callable[[nn.Module, np.ndarray], np.ndarray]


@torch.no_grad()
def reference(
    model: nn.Module, sig: Signature, name: str, inputs: dict[str, np.ndarray]
) -> GoldenCase:
    """Round-trip the inputs through JSON, then run PyTorch on them."""
    clean = {t.name: decode_array(encode_array(inputs[t.name]), t.dtype) for t in sig.inputs}
    model.eval()
    outs = model(*(torch.from_numpy(clean[t.name]) for t in sig.inputs))
    return GoldenCase(
        name=name,
        inputs=clean,
        outputs={t.name: o.numpy() for t, o in zip(sig.outputs, outs, strict=True)},
    )


@dataclass(frozen=True)
class GoldenSet:
    stored: list[GoldenCase]  # written to model.json and re-checked by the services
    extra: list[GoldenCase]  # checked at export only (keeps model.json small)


def tabular(
    model: nn.Module,
    sig: Signature,
    data: Dataset,
    metadata: dict[str, Any],
    seed: int,
    keep: RowFilter | None = None,
) -> GoldenSet:
    features = metadata["features"]
    rng = np.random.default_rng(seed)
    lo = np.array([f["min"] for f in features], dtype=np.float32)
    hi = np.array([f["max"] for f in features], dtype=np.float32)
    random_x = rng.uniform(lo, hi, size=(512, len(features))).astype(np.float32)
    held = data.test["x"]
    if keep is not None:
        held, random_x = keep(model, held), keep(model, random_x)
    return GoldenSet(
        stored=[
            reference(model, sig, "heldout_b1", {"features": held[:1]}),
            reference(model, sig, "heldout_b7", {"features": held[1:8]}),
            reference(model, sig, "random_b64", {"features": random_x[:64]}),
        ],
        extra=[
            reference(model, sig, "heldout_b64", {"features": held[8:72]}),
            reference(model, sig, "random_b7", {"features": random_x[64:71]}),
        ],
    )


def image(
    model: nn.Module, sig: Signature, data: Dataset, metadata: dict[str, Any], seed: int
) -> GoldenSet:
    rng = np.random.default_rng(seed)
    test_x = data.test["x"]
    pixel_max = float(metadata["image"]["pixel_max"])
    shape = test_x.shape[1:]
    # Stored random images use whole intensities (compact JSON); extra ones any float.
    random_int = rng.integers(0, int(pixel_max) + 1, size=(64, *shape)).astype(np.float32)
    random_float = rng.uniform(0.0, pixel_max, size=(7, *shape)).astype(np.float32)
    return GoldenSet(
        stored=[
            reference(model, sig, "heldout_b1", {"image": test_x[:1]}),
            reference(model, sig, "heldout_b7", {"image": test_x[1:8]}),
            reference(model, sig, "random_b64", {"image": random_int}),
        ],
        extra=[
            reference(model, sig, "heldout_b64", {"image": test_x[8:72]}),
            reference(model, sig, "random_float_b7", {"image": random_float}),
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


def token_sequence(
    model: nn.Module, sig: Signature, data: Dataset, metadata: dict[str, Any], seed: int
) -> GoldenSet:
    test_tokens, test_lengths = data.test["tokens"], data.test["lengths"]
    test_labels = data.test["y"]
    vocab_size = len(metadata["vocabulary"])
    pad_id, max_length = int(metadata["pad_id"]), int(metadata["max_length"])
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
        reference(model, sig, f"random_b1_len{n}", _pad(random_rows([n]), pad_id))
        for n in sorted({1, 5, 17, max_length})
        if n <= max_length
    ]
    extra += [
        reference(
            model,
            sig,
            "random_b7_mixed",
            _pad(random_rows(sequence_lengths(max_length, 7, rng)), pad_id),
        ),
        reference(model, sig, "heldout_b64", _pad(held[:64], pad_id)),
        # Extra right-padding beyond the longest row must change nothing (checked too).
        reference(model, sig, "heldout_b7_overpadded", _pad(mixed, pad_id, t=max_length)),
    ]
    return GoldenSet(
        stored=[
            reference(model, sig, "heldout_b1", _pad(held[:1], pad_id)),
            reference(model, sig, "heldout_b7_mixed", _pad(mixed, pad_id)),
            reference(model, sig, "random_b64_mixed", _pad(b64, pad_id, t=max_length)),
        ],
        extra=extra,
    )


def initial_state(sig: Signature, rows: int) -> dict[str, np.ndarray]:
    """A step model's state before the first event: each state tensor filled with the
    initial value its step section declares."""
    shapes = {t.name: t.shape[1:] for t in sig.inputs}
    return {
        s["input"]: np.full((rows, *shapes[s["input"]]), s["initial"], dtype=np.float32)
        for s in sig.section["state"]
    }


@torch.no_grad()
def token_sequence_step(
    model: nn.Module, sig: Signature, data: Dataset, metadata: dict[str, Any], seed: int
) -> GoldenSet:
    """Step-model cases: the first event of 7 held-out runs from the initial state, and
    the next event after PyTorch stepped them a few events (a state mid-stream)."""
    tokens = data.test["tokens"]
    token_name = sig.section["token_input"]
    states = [(s["input"], s["output"]) for s in sig.section["state"]]
    out_index = {t.name: i for i, t in enumerate(sig.outputs)}
    model.eval()

    def case_at(name: str, rows: slice, step: int) -> GoldenCase:
        batch = tokens[rows]
        state = initial_state(sig, len(batch))
        for t in range(step):  # advance the state with PyTorch
            outs = model(
                torch.from_numpy(batch[:, t]), *(torch.from_numpy(state[i]) for i, _ in states)
            )
            state = {i: outs[out_index[o]].numpy() for i, o in states}
        return reference(model, sig, name, {token_name: batch[:, step], **state})

    return GoldenSet(
        stored=[case_at("first_event_b1", slice(0, 1), 0), case_at("event4_b7", slice(1, 8), 4)],
        extra=[case_at("first_event_b7", slice(8, 15), 0), case_at("event2_b64", slice(0, 64), 2)],
    )


def token_sequence_small(
    model: nn.Module, sig: Signature, data: Dataset, metadata: dict[str, Any], seed: int
) -> GoldenSet:
    """token_sequence's cases, storing only the small ones: for graphs with a (B, T, T)
    output (an attention explanation), a stored batch of 64 full-length rows would add
    megabytes to model.json. The large cases are still checked at export."""
    full = token_sequence(model, sig, data, metadata, seed)
    small = [c for c in full.stored if len(c.inputs["lengths"]) <= 8]
    large = [c for c in full.stored if len(c.inputs["lengths"]) > 8]
    return GoldenSet(stored=small, extra=large + full.extra)
