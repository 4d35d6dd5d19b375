"""contract.model without a model repository: the tolerance rule, raw tensors, and what
the package imports. (The reader on the real exported repository:
tests/pipeline/test_contract.py.)"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from contract.model import (
    from_raw,
    worst,
)
from tests.support.paths import ROOT


def test_tolerance_rule() -> None:
    golden = np.array([[1.0, 100.0], [0.0, np.nan]], dtype=np.float32)
    atol, rtol = 1e-4, 1e-3
    inside = golden + np.array([[1e-4, 0.1], [-1e-4, 0.0]], dtype=np.float32)
    assert worst(inside, golden, atol, rtol)[0] <= 1e-6  # float32 rounding at the edge
    outside = golden.copy()
    outside[0, 1] = 100.2  # 0.2 > 1e-4 + 1e-3 * 100
    excess, diff, index = worst(outside, golden, atol, rtol)
    assert excess > 0 and index == (0, 1) and diff == pytest.approx(0.2, rel=1e-3)
    nan_where_number = golden.copy()
    nan_where_number[0, 0] = np.nan
    assert worst(nan_where_number, golden, atol, rtol)[0] == np.inf
    assert worst(np.zeros((0, 3)), np.zeros((0, 3)), atol, rtol)[0] == 0.0


def test_from_raw_is_little_endian_and_a_view() -> None:
    value = np.arange(6, dtype="<i8").reshape(2, 3)
    raw = value.tobytes()
    got = from_raw(raw, "INT64", [2, 3])
    assert np.array_equal(got, value) and not got.flags.owndata and not got.flags.writeable


def test_contract_imports_neither_grpc_nor_torch() -> None:
    code = (
        "import sys, contract.model; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'grpc', 'google', 'torch', 'onnx', 'onnxruntime', 'services', 'export', 'training'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
