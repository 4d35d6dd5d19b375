"""Export: ONNX + model.json per the contract, parity gate, versions, CLI errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from contract.model import cases_from_json, read_spec, worst
from export import api as export_api
from export.api import ExportResult, export_model
from export.errors import ManifestError, ParityError
from export.manifest import validate
from export.parity import check_cases
from tests.support.paths import ROOT
from tests.support.training import TINY, run_cli
from training import MODEL_NAMES
from training.api import train
from training.checkpoint import load_checkpoint, model_from_checkpoint
from training.registry import get_recipe

SCHEMA = json.loads((ROOT / "export" / "model.schema.json").read_text())
CLASSIFY = ("perceptron", "mlp", "cnn")
SEQUENCE = ("lstm", "transformer")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny but real (non-dry-run) checkpoints of all five families."""
    runs = tmp_path_factory.mktemp("runs")
    return {
        name: train(name, runs_dir=runs, overrides=TINY[name], progress=False).checkpoint
        for name in MODEL_NAMES
    }


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model_repository")


@pytest.fixture(scope="module")
def exported(checkpoints: dict[str, Path], repository: Path) -> dict[str, ExportResult]:
    return {name: export_model(path, repository) for name, path in checkpoints.items()}


def _manifest(result: ExportResult) -> dict[str, Any]:
    return json.loads((result.path / "model.json").read_text())


def _tree(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under root."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# ----------------------------------------------------------------- layout and contract


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_export_writes_a_valid_version(
    name: str, exported: dict[str, ExportResult], repository: Path
) -> None:
    result = exported[name]
    assert result.path == repository / name / "1" and result.version == 1
    assert sorted(p.name for p in (repository / name).iterdir()) == ["1"]  # no staging left
    doc = _manifest(result)
    jsonschema.Draft202012Validator(SCHEMA).validate(doc)
    onnx_bytes = (result.path / "model.onnx").read_bytes()
    assert doc["onnx"]["sha256"] == hashlib.sha256(onnx_bytes).hexdigest()
    assert (doc["name"], doc["version"], doc["family"]) == (name, 1, name)
    proto = onnx.load_from_string(onnx_bytes)
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version == doc["onnx"]["opset"] == 18
    graph_io = [
        (v.name, [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim])
        for v in (*proto.graph.input, *proto.graph.output)
    ]
    declared = [
        (t["name"], [-1 if s == -1 else s for s in t["shape"]])
        for t in (*doc["inputs"], *doc["outputs"])
    ]
    for (g_name, g_dims), (d_name, d_dims) in zip(graph_io, declared, strict=True):
        assert g_name == d_name
        assert [d if isinstance(d, int) else -1 for d in g_dims] == d_dims
    assert doc["serving"] == {
        "device_policy": "allow_cpu_fallback",
        "max_batch_size": 64,
        "max_queue_delay_ms": 2.0,
    }
    assert 1 <= len(doc["goldens"]["cases"]) <= 4
    assert len(json.dumps(doc)) < 300_000  # goldens keep model.json a reasonable size


def test_contract_names_per_task(exported: dict[str, ExportResult]) -> None:
    mlp, perceptron, cnn = (_manifest(exported[n]) for n in ("mlp", "perceptron", "cnn"))
    assert [t["name"] for t in mlp["inputs"]] == ["features"]
    assert [t["name"] for t in mlp["outputs"]] == ["probabilities", "logits"]
    assert [t["name"] for t in perceptron["outputs"]] == ["probabilities", "margin"]
    assert mlp["classify"]["kind"] == "tabular"
    assert [f["name"] for f in mlp["classify"]["features"]][:4] == [
        "age",
        "years_experience",
        "monthly_income",
        "debt_ratio",
    ]
    assert "perceptron_on_same_data_accuracy" in mlp["metrics"]["extra"]
    assert cnn["inputs"] == [{"name": "image", "dtype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert cnn["classify"]["image"]["pixel_max"] == 16.0
    assert cnn["labels"] == [str(d) for d in range(10)]
    for name in SEQUENCE:
        doc = _manifest(exported[name])
        assert doc["inputs"] == [
            {"name": "tokens", "dtype": "INT64", "shape": [-1, -1]},
            {"name": "lengths", "dtype": "INT64", "shape": [-1]},
        ]
        assert doc["outputs"] == [
            {"name": "sequence_probabilities", "dtype": "FP32", "shape": [-1, 2]},
            {"name": "position_scores", "dtype": "FP32", "shape": [-1, -1]},
        ]
        seq = doc["sequence"]
        assert doc["labels"] == ["normal", "anomalous"]
        assert (
            seq["vocabulary"][seq["pad_id"]] == "<pad>"
            and seq["vocabulary"][seq["unknown_id"]] == "<unk>"
        )
        assert seq["max_length"] == 64


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_stored_goldens_pass_the_service_check(
    name: str, exported: dict[str, ExportResult]
) -> None:
    """What the services do at load: read model.json with the contract's reader, run ORT,
    compare by the contract's tolerance rule."""
    result = exported[name]
    spec = read_spec(result.path.parent.parent, name, result.version)
    session = ort.InferenceSession(str(spec.onnx_file), providers=["CPUExecutionProvider"])
    assert len(spec.goldens) == 3
    for case in spec.goldens:
        got = dict(
            zip(
                [o.name for o in session.get_outputs()], session.run(None, case.inputs), strict=True
            )
        )
        assert set(case.outputs) == {t.name for t in spec.outputs}
        for out, golden in case.outputs.items():
            excess, diff, _ = worst(got[out], golden, spec.atol, spec.rtol)
            assert excess <= 0, (name, case.name, out, diff)


# ----------------------------------------------------------------- dynamic shapes vs PyTorch


def _torch_model(checkpoint: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    payload = load_checkpoint(checkpoint)
    model, _, _ = model_from_checkpoint(payload)
    return model, payload


@pytest.mark.parametrize("name", CLASSIFY)
@pytest.mark.parametrize("batch", [1, 7, 64])
def test_classify_onnx_matches_torch_at_any_batch(
    name: str, batch: int, exported: dict[str, ExportResult], checkpoints: dict[str, Path]
) -> None:
    model, payload = _torch_model(checkpoints[name])
    rng = np.random.default_rng(batch)
    if name == "cnn":
        x = rng.uniform(0, 16, size=(batch, 1, 8, 8)).astype(np.float32)
        feed = {"image": x}
    else:
        lo = np.array([f["min"] for f in payload["data"]["features"]], dtype=np.float32)
        hi = np.array([f["max"] for f in payload["data"]["features"]], dtype=np.float32)
        x = rng.uniform(lo, hi, size=(batch, len(lo))).astype(np.float32)
        feed = {"features": x}
    session = ort.InferenceSession(
        str(exported[name].path / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    got = session.run(None, feed)
    with torch.no_grad():
        want = [t.numpy() for t in model(torch.from_numpy(x))]
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and g.shape[0] == batch
        if name == "perceptron" and g.shape[1] == 2:
            near_step = np.abs(want[1][:, 0]) < 1e-4  # one-hot step: skip rows at the boundary
            g, w = g[~near_step], w[~near_step]
        np.testing.assert_allclose(g, w, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("name", SEQUENCE)
@pytest.mark.parametrize(
    "lengths",
    [[1], [5], [17], [64], [1, 5, 17, 64, 2, 33, 9], list(range(1, 65))],
    ids=["b1-len1", "b1-len5", "b1-len17", "b1-len64", "b7-mixed", "b64-all-lengths"],
)
def test_sequence_onnx_matches_torch_for_lengths_and_batches(
    name: str, lengths: list[int], exported: dict[str, ExportResult], checkpoints: dict[str, Path]
) -> None:
    model, payload = _torch_model(checkpoints[name])
    vocab = len(payload["data"]["vocabulary"])
    rng = np.random.default_rng(len(lengths))
    t = max(lengths)
    tokens = np.zeros((len(lengths), t), dtype=np.int64)
    for i, n in enumerate(lengths):
        tokens[i, :n] = rng.integers(2, vocab, size=n)
    lens = np.array(lengths, dtype=np.int64)
    session = ort.InferenceSession(
        str(exported[name].path / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    seq, pos = session.run(None, {"tokens": tokens, "lengths": lens})
    with torch.no_grad():
        t_seq, t_pos = model(torch.from_numpy(tokens), torch.from_numpy(lens))
    assert seq.shape == (len(lengths), 2) and pos.shape == (len(lengths), t)
    np.testing.assert_allclose(seq, t_seq.numpy(), atol=1e-4, rtol=1e-3)
    np.testing.assert_allclose(pos, t_pos.numpy(), atol=1e-4, rtol=1e-3)
    padded = np.arange(t)[None, :] >= lens[:, None]
    assert np.all(pos[padded] == 0.0)
    # Each row alone (no padding) scores as it does inside the padded batch.
    for i, n in enumerate(lengths[:8]):
        s1, p1 = session.run(None, {"tokens": tokens[i : i + 1, :n], "lengths": lens[i : i + 1]})
        np.testing.assert_allclose(s1[0], seq[i], atol=1e-5, rtol=1e-4)
        np.testing.assert_allclose(p1[0], pos[i, :n], atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------- the gate refuses


def _corrupt_largest_weight(proto: onnx.ModelProto) -> onnx.ModelProto:
    init = max(
        proto.graph.initializer,
        key=lambda t: int(np.prod(t.dims)) if t.data_type == onnx.TensorProto.FLOAT else 0,
    )
    values = onnx.numpy_helper.to_array(init).copy()
    values += 0.5  # a shifted weight: the graph is still valid ONNX
    init.CopyFrom(onnx.numpy_helper.from_array(values, init.name))
    return proto


@pytest.mark.parametrize("name", ["mlp", "lstm"])
def test_broken_export_is_refused_and_writes_nothing(
    name: str, checkpoints: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = export_api.to_onnx
    monkeypatch.setattr(
        export_api, "to_onnx", lambda *a, **k: _corrupt_largest_weight(real(*a, **k))
    )
    repo = tmp_path / "repo"
    with pytest.raises(ParityError, match=r"output '\w+' differs by") as info:
        export_model(checkpoints[name], repo)
    assert name in str(info.value)
    assert _tree(repo) == {}
    assert not repo.exists() or not any(repo.rglob("*"))


def test_perturbed_torch_model_is_refused(
    checkpoints: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The graph comes from a model other than the one the goldens came from: refused."""
    repo = tmp_path / "repo"
    export_model(checkpoints["cnn"], repo)
    before = _tree(repo)
    real = export_api.to_onnx

    def perturb_then_export(model: torch.nn.Module, *args: Any, **kwargs: Any) -> onnx.ModelProto:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.25)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(export_api, "to_onnx", perturb_then_export)
    with pytest.raises(ParityError, match="parity gate failed"):
        export_model(checkpoints["cnn"], repo)
    assert _tree(repo) == before  # version 1 untouched, no version 2, no staging


# ----------------------------------------------------------------- versions


def test_second_export_is_version_2_and_version_1_is_untouched(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    first = export_model(checkpoints["perceptron"], repo)
    v1 = _tree(first.path)
    second = export_model(checkpoints["perceptron"], repo)
    assert (first.version, second.version) == (1, 2)
    assert second.path == repo / "perceptron" / "2"
    assert _tree(first.path) == v1
    assert _manifest(second)["version"] == 2
    assert sorted(p.name for p in (repo / "perceptron").iterdir()) == ["1", "2"]


# ----------------------------------------------------------------- manifest validation


def test_manifest_validation_rejects_contract_violations(exported: dict[str, ExportResult]) -> None:
    good = _manifest(exported["mlp"])
    validate(good)
    broken: list[dict[str, Any]] = []
    for mutate in (
        lambda d: d.pop("goldens"),
        lambda d: d["inputs"][0].update(dtype="FLOAT"),
        lambda d: d.update(task="sequence"),  # sequence task without a sequence section
        lambda d: d["classify"].update(scores_output="nope"),
        lambda d: d["goldens"]["cases"][0]["inputs"]["features"]["data"].pop(),
        lambda d: d["onnx"].update(sha256="xyz"),
        lambda d: d["classify"]["features"].pop(),
    ):
        doc = json.loads(json.dumps(good))
        mutate(doc)
        broken.append(doc)
    for doc in broken:
        with pytest.raises(ManifestError):
            validate(doc)


def test_golden_round_trip_is_exact(
    exported: dict[str, ExportResult], checkpoints: dict[str, Path]
) -> None:
    """Stored inputs decode to exactly what PyTorch saw: re-running PyTorch reproduces outputs."""
    model, payload = _torch_model(checkpoints["transformer"])
    doc = _manifest(exported["transformer"])
    spec = get_recipe("transformer").signature(payload["data"])
    cases = list(cases_from_json(doc["goldens"]["cases"], spec.inputs + spec.outputs))
    with torch.no_grad():
        for case in cases:
            seq, pos = model(
                torch.from_numpy(case.inputs["tokens"]), torch.from_numpy(case.inputs["lengths"])
            )
            np.testing.assert_allclose(
                seq.numpy(), case.outputs["sequence_probabilities"], atol=1e-6
            )
            np.testing.assert_allclose(pos.numpy(), case.outputs["position_scores"], atol=1e-6)
    session = ort.InferenceSession(
        str(exported["transformer"].path / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    report = check_cases(
        session, spec, cases, doc["goldens"]["atol"], doc["goldens"]["rtol"], "transformer"
    )
    assert report.cases == len(cases) and report.batch_sizes == {1, 7, 64}


# ----------------------------------------------------------------- CLI


def test_cli_reports_bad_paths_and_corrupt_checkpoints(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00garbage" * 100)
    missing = run_cli(
        "export", "--checkpoint", str(tmp_path / "nope.pt"), "--repository", str(repo)
    )
    assert missing.returncode == 1
    assert "checkpoint not found" in missing.stderr
    bad = run_cli("export", "--checkpoint", str(corrupt), "--repository", str(repo))
    assert bad.returncode == 1
    assert "cannot read checkpoint" in bad.stderr
    no_run = run_cli(
        "export", "--model", "mlp", "--runs", str(tmp_path / "empty"), "--repository", str(repo)
    )
    assert no_run.returncode == 1
    assert "no checkpoint for 'mlp'" in no_run.stderr and "--if-missing" in no_run.stderr
    assert not repo.exists()
    usage = run_cli("export", "--model", "nope")
    assert usage.returncode == 2


def test_cli_if_missing_trains_then_skips(tmp_path: Path) -> None:
    from export.__main__ import main

    runs, repo = tmp_path / "runs", tmp_path / "repo"
    args = [
        "--model",
        "perceptron",
        "--if-missing",
        "--runs",
        str(runs),
        "--repository",
        str(repo),
        "--quiet",
    ]
    assert main(args) == 0
    assert (runs / "perceptron" / "checkpoint.pt").exists()  # trained because it was missing
    assert (repo / "perceptron" / "1" / "model.json").exists()
    before = _tree(repo)
    assert main(args) == 0
    assert _tree(repo) == before  # skipped: a version exists
    assert (
        main(["--model", "perceptron", "--runs", str(runs), "--repository", str(repo), "--quiet"])
        == 0
    )
    assert (repo / "perceptron" / "2").is_dir()  # without --if-missing: a new version
