"""contract.model on the real exported repository: the reader, the datatype table and
golden arrays in their JSON form. No server. (The tolerance rule and raw tensors:
tests/unit/test_contract.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from contract.model import (
    ModelLoadError,
    case_to_json,
    cases_from_json,
    read_spec,
    scan,
)
from tests.support.models import ALL_MODELS


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
