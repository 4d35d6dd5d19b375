"""The batch layout cuts explanation outputs (attention) on both axes, on its own (the
served explanations: tests/service/test_explanations.py)."""

from __future__ import annotations

import numpy as np

from services.batching.merge import BatchLayout


def test_batch_layout_cuts_attention_on_both_axes() -> None:
    layout = BatchLayout({"tokens": 0}, frozenset({"scores"}), frozenset({"attention"}))
    outputs = {
        "scores": np.arange(2 * 4, dtype=np.float32).reshape(2, 4),
        "attention": np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4),
    }
    first, second = layout.split(outputs, rows=[1, 1], lengths=[2, 4])
    assert first["attention"].shape == (1, 2, 2) and first["scores"].shape == (1, 2)
    np.testing.assert_array_equal(first["attention"][0], outputs["attention"][0, :2, :2])
    np.testing.assert_array_equal(second["attention"][0], outputs["attention"][1])
