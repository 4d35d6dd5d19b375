"""Export signatures of the reference families: graph inputs/outputs and the model.json
task section, exactly as docs/model-json.md names them. Each family's recipe picks one
(or writes its own), so export has no per-family knowledge."""

from __future__ import annotations

from typing import Any

from contract.model import Signature, tensor

BATCH_AXIS = "batch"
SEQUENCE_AXIS = "sequence"


def tabular(
    metadata: dict[str, Any], second_output: str = "logits", second_width: int | None = None
) -> Signature:
    """features (B, F) -> probabilities (B, L) and a second output (B, second_width or L)."""
    b, n_labels = BATCH_AXIS, len(metadata["labels"])
    width = second_width or n_labels
    return Signature(
        inputs=(tensor("features", "FP32", b, len(metadata["features"])),),
        outputs=(
            tensor("probabilities", "FP32", b, n_labels),
            tensor(second_output, "FP32", b, width),
        ),
        section={
            "input": "features",
            "scores_output": "probabilities",
            "kind": "tabular",
            "features": metadata["features"],
        },
    )


def image(metadata: dict[str, Any]) -> Signature:
    """image (B, C, H, W) -> probabilities and logits (B, L)."""
    b, n_labels, img = BATCH_AXIS, len(metadata["labels"]), metadata["image"]
    return Signature(
        inputs=(tensor("image", "FP32", b, img["channels"], img["height"], img["width"]),),
        outputs=(
            tensor("probabilities", "FP32", b, n_labels),
            tensor("logits", "FP32", b, n_labels),
        ),
        section={
            "input": "image",
            "scores_output": "probabilities",
            "kind": "image",
            "image": img,
        },
    )


def token_sequence(metadata: dict[str, Any]) -> Signature:
    """tokens (B, T) + lengths (B,) -> sequence_probabilities (B, L), position_scores (B, T)."""
    b, t, n_labels = BATCH_AXIS, SEQUENCE_AXIS, len(metadata["labels"])
    max_length = int(metadata["max_length"])
    return Signature(
        inputs=(tensor("tokens", "INT64", b, t), tensor("lengths", "INT64", b)),
        outputs=(
            tensor("sequence_probabilities", "FP32", b, n_labels),
            tensor("position_scores", "FP32", b, t),
        ),
        section={
            "tokens_input": "tokens",
            "lengths_input": "lengths",
            "sequence_scores_output": "sequence_probabilities",
            "position_scores_output": "position_scores",
            "max_length": max_length,
            "pad_id": int(metadata["pad_id"]),
            "unknown_id": metadata["unknown_id"],
            "vocabulary": list(metadata["vocabulary"]),
            "numeric_input": None,
        },
        axis_max={SEQUENCE_AXIS: max_length},
    )


def lstm_step(
    metadata: dict[str, Any], layers: int, hidden: int, running_max_initial: float
) -> Signature:
    """The LSTM step model: token (B,) + state -> position_score (B,),
    sequence_probabilities (B, L) + the next state. The section is model.json's "step"
    block: which tensors carry the event, the scores and each state's input -> output."""
    b, n_labels = BATCH_AXIS, len(metadata["labels"])
    states = (
        ("h", (layers, hidden), 0.0),
        ("c", (layers, hidden), 0.0),
        ("pooled", (hidden,), running_max_initial),  # running max of the hidden states
        ("peak", (1,), running_max_initial),  # running max of the position logits
    )
    return Signature(
        inputs=(
            tensor("token", "INT64", b),
            *(tensor(name, "FP32", b, *dims) for name, dims, _ in states),
        ),
        outputs=(
            tensor("position_score", "FP32", b),
            tensor("sequence_probabilities", "FP32", b, n_labels),
            *(tensor(f"{name}_next", "FP32", b, *dims) for name, dims, _ in states),
        ),
        section={
            "token_input": "token",
            "position_score_output": "position_score",
            "sequence_scores_output": "sequence_probabilities",
            "state": [
                {"input": name, "output": f"{name}_next", "initial": initial}
                for name, _, initial in states
            ],
        },
    )


ATTENTION_OUTPUT = "attention"


def token_sequence_attention(metadata: dict[str, Any]) -> Signature:
    """token_sequence plus attention (B, T, T): row i is position i's attention over
    the positions (the explain graph of an attention model, docs/model-json.md)."""
    base = token_sequence(metadata)
    b, t = BATCH_AXIS, SEQUENCE_AXIS
    return Signature(
        inputs=base.inputs,
        outputs=(*base.outputs, tensor(ATTENTION_OUTPUT, "FP32", b, t, t)),
        section=base.section,
        axis_max=base.axis_max,
    )
