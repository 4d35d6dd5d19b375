"""contract.model on the real exported repository: the reader, the datatype table,
golden arrays in their JSON form and the tolerance rule. No server, no torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from contract.model import (
    ModelLoadError,
    case_to_json,
    cases_from_json,
    from_raw,
    read_spec,
    scan,
    worst,
)
from tests.support.models import ALL_MODELS
from tests.support.paths import ROOT


def test_scan_and_read_every_model(model_repository: Path) -> None:
    assert scan(model_repository) == {name: [1] for name in sorted(ALL_MODELS)}
    for name in ALL_MODELS:
        spec = read_spec(model_repository, name, 1)
        assert spec.onnx_file.is_file() and len(spec.goldens) == 3
        for case in spec.goldens:
            assert set(case.inputs) == {t.name for t in spec.inputs}
            for t in spec.inputs:
                assert case.inputs[t.name].dtype == t.dtype
        # Golden cases survive their JSON form exactly.
        again = cases_from_json([case_to_json(c) for c in spec.goldens], spec.inputs + spec.outputs)
        for a, b in zip(spec.goldens, again, strict=True):
            assert a.name == b.name
            for key in a.inputs:
                assert np.array_equal(a.inputs[key], b.inputs[key])
            for key in a.outputs:
                assert np.array_equal(a.outputs[key], b.outputs[key])


@pytest.mark.parametrize("datatype", ["BYTES", "BF16", "FLOAT"])
def test_unsupported_datatype_fails_to_load(scratch_repository: Path, datatype: str) -> None:
    path = scratch_repository / "mlp" / "1" / "model.json"
    doc = json.loads(path.read_text())
    doc["inputs"][0]["dtype"] = datatype
    path.write_text(json.dumps(doc))
    with pytest.raises(ModelLoadError, match=f"unsupported dtype '{datatype}'"):
        read_spec(scratch_repository, "mlp", 1)


def test_golden_that_does_not_fill_its_shape_fails_to_load(scratch_repository: Path) -> None:
    path = scratch_repository / "cnn" / "1" / "model.json"
    doc = json.loads(path.read_text())
    doc["goldens"]["cases"][0]["inputs"]["image"]["data"].pop()
    path.write_text(json.dumps(doc))
    with pytest.raises(ModelLoadError, match="do not fill shape"):
        read_spec(scratch_repository, "cnn", 1)


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
