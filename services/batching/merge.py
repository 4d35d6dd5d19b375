"""Merge requests into one batch and split the batch's outputs back, per model layout.

Sequence models take right-padded tensors: requests of different lengths are padded to
the longest in the batch, and per-position outputs are cut back to each request's length.
The exported graphs mask padding, so a request's answer does not depend on its batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from contract.model import ModelSpec


@dataclass(frozen=True)
class BatchLayout:
    """Which inputs are padded along axis 1 (and with what), which outputs are cut."""

    padded_inputs: dict[str, int | float]
    positional_outputs: frozenset[str]
    # (B, T, T) outputs (an explain graph's attention): cut on axes 1 and 2.
    pairwise_outputs: frozenset[str] = frozenset()

    @classmethod
    def for_model(cls, spec: ModelSpec) -> BatchLayout:
        seq = spec.sequence
        if seq is None:
            return cls({}, frozenset())
        padded: dict[str, int | float] = {seq.tokens_input: seq.pad_id}
        if seq.numeric_input:
            padded[seq.numeric_input] = 0.0
        positional = {o.name for o in spec.outputs if len(o.shape) >= 2 and o.shape[1] == -1}
        pairwise = {seq.attention_output} if seq.attention_output else set()
        return cls(padded, frozenset(positional - pairwise), frozenset(pairwise))

    def length_of(self, inputs: dict[str, np.ndarray]) -> int:
        """Padded length of a request (0 for models without a sequence axis)."""
        for name in self.padded_inputs:
            return int(inputs[name].shape[1])
        return 0

    def merge(
        self, requests: list[dict[str, np.ndarray]], lengths: list[int]
    ) -> dict[str, np.ndarray]:
        if len(requests) == 1:
            return requests[0]
        longest = max(lengths)
        merged = {}
        for name in requests[0]:
            parts = [r[name] for r in requests]
            if name in self.padded_inputs:
                fill = self.padded_inputs[name]
                parts = [
                    p
                    if p.shape[1] == longest
                    else np.pad(
                        p,
                        [(0, 0), (0, longest - p.shape[1])] + [(0, 0)] * (p.ndim - 2),
                        constant_values=fill,
                    )
                    for p in parts
                ]
            merged[name] = np.concatenate(parts, axis=0)
        return merged

    def split(
        self,
        outputs: dict[str, np.ndarray],
        rows: list[int],
        lengths: list[int],
    ) -> list[dict[str, np.ndarray]]:
        if len(rows) == 1:
            return [outputs]
        results: list[dict[str, np.ndarray]] = [{} for _ in rows]
        for name, value in outputs.items():
            start = 0
            cut = name in self.positional_outputs
            square = name in self.pairwise_outputs
            for i, n in enumerate(rows):
                part = value[start : start + n]  # view, no copy
                if square:
                    part = part[:, : lengths[i], : lengths[i]]
                elif cut:
                    part = part[:, : lengths[i]]
                results[i][name] = part
                start += n
        return results
