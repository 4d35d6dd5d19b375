"""Log sequences whose label is decided by one event exactly ``gap`` positions before the end.

Each sequence is ``prefix`` filler events, then the deciding event, then ``gap`` filler
events (so the deciding event sits at index ``length - 1 - gap``). The deciding event
is ``auth.token.validated`` (label 0: the request goes through) or
``auth.token.rejected`` (label 1: it fails); fillers are drawn uniformly from the other
normal events, independently of the label, so nothing after the deciding event hints
at the answer. A model that reads the sequence in order and decides at the end must
carry that one event across ``gap`` steps: the memory test for LSTM vs plain RNN.
The random prefix (0..``max_prefix`` events) means only the distance from the end,
not the absolute position, locates the deciding event.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from training.data.logs import NORMAL_EVENTS, PAD_ID, UNK_ID, VOCABULARY

GAP_LABELS = ["validated", "rejected"]
DECIDING_EVENTS = ("auth.token.validated", "auth.token.rejected")  # label 0, label 1
DECIDING_IDS = tuple(VOCABULARY.index(e) for e in DECIDING_EVENTS)
FILLER_IDS = np.array(
    [VOCABULARY.index(e) for e in NORMAL_EVENTS if e not in DECIDING_EVENTS], dtype=np.int64
)


@dataclass(frozen=True)
class GapSplit:
    tokens: np.ndarray  # int64 (N, max_prefix + 1 + gap), right-padded with PAD_ID
    lengths: np.ndarray  # int64 (N,)
    labels: np.ndarray  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def as_split(self) -> dict[str, np.ndarray]:
        return {"tokens": self.tokens, "lengths": self.lengths, "y": self.labels}


@dataclass(frozen=True)
class GapData:
    train: GapSplit
    val: GapSplit
    test: GapSplit
    gap: int
    seed: int

    def metadata(self) -> dict[str, Any]:
        n = len(self.train) + len(self.val) + len(self.test)
        return {
            "labels": list(GAP_LABELS),
            "vocabulary": list(VOCABULARY),
            "pad_id": PAD_ID,
            "unknown_id": UNK_ID,
            "max_length": int(self.train.tokens.shape[1]),
            "gap": self.gap,
            "split": f"held-out {len(self.test)} of {n} generated sequences, gap {self.gap}, "
            f"seed {self.seed}",
            "seed": self.seed,
        }


def _split(rng: np.random.Generator, n: int, gap: int, max_prefix: int) -> GapSplit:
    width = max_prefix + 1 + gap
    labels = rng.integers(0, 2, n)
    prefix = rng.integers(0, max_prefix + 1, n)
    lengths = prefix + 1 + gap
    tokens = rng.choice(FILLER_IDS, size=(n, width))
    tokens[np.arange(width)[None, :] >= lengths[:, None]] = PAD_ID
    tokens[np.arange(n), prefix] = np.asarray(DECIDING_IDS)[labels]
    return GapSplit(tokens.astype(np.int64), lengths.astype(np.int64), labels.astype(np.int64))


def make_gap_logs(
    gap: int,
    n: int = 4000,
    seed: int = 7,
    max_prefix: int = 7,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
) -> GapData:
    """``n`` sequences (70/10/20 train/val/test) with the deciding event ``gap`` back."""
    if gap < 0 or max_prefix < 0:
        raise ValueError("gap and max_prefix must be >= 0")
    rng = np.random.default_rng([seed, gap])
    n_test, n_val = round(n * test_fraction), round(n * val_fraction)
    return GapData(
        train=_split(rng, n - n_test - n_val, gap, max_prefix),
        val=_split(rng, n_val, gap, max_prefix),
        test=_split(rng, n_test, gap, max_prefix),
        gap=gap,
        seed=seed,
    )
