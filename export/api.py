"""Python API: export one checkpoint into a model repository behind the parity gate."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import onnxruntime
import torch

from contract.drift import parse_reference
from contract.model import (
    DEFAULT_ATOL,
    DEFAULT_RTOL,
    GoldenCase,
    Signature,
    case_to_json,
    cases_from_json,
)
from export import OPSET, manifest, parity, repository
from export.errors import ExportError
from export.onnx_export import to_onnx
from export.parity import ParityReport
from training import NNSERVE_VERSION
from training.checkpoint import load_checkpoint, model_from_checkpoint
from training.goldens import GoldenSet
from training.recipe import Dataset, StepRecipe

log = logging.getLogger(__name__)

# The explain graph's file in a version folder (docs/model-json.md, "explain").
EXPLAIN_FILE = "explain.onnx"
# A sequence model's step graph, beside model.onnx (docs/model-json.md, "step").
STEP_FILE = "step.onnx"


@dataclass(frozen=True)
class ExportResult:
    name: str
    version: int
    path: Path  # <repository>/<name>/<version>
    parity: parity.ParityReport
    seconds: float
    explain_parity: ParityReport | None = None  # the explain graph's, if any

    def summary(self) -> str:
        text = self.parity.summary()
        if self.explain_parity is not None:
            text += f"; explain graph: {self.explain_parity.summary()}"
        return text


def _example(spec: Signature, case: GoldenCase) -> tuple[torch.Tensor, ...]:
    """Trace inputs: a golden batch (batch and sequence sizes > 1 avoid 0/1 specialisation)."""
    return tuple(torch.from_numpy(case.inputs[t.name]) for t in spec.inputs)


def _onnx_info(file: str, model_bytes: bytes, proto: onnx.ModelProto, opset: int) -> dict[str, Any]:
    return {
        "file": file,
        "sha256": hashlib.sha256(model_bytes).hexdigest(),
        "opset": opset,
        "ir_version": int(proto.ir_version),
    }


@dataclass(frozen=True)
class _Graph:
    """One exported graph that passed the parity gate on its golden cases."""

    spec: Signature
    goldens: GoldenSet
    proto: onnx.ModelProto
    model_bytes: bytes
    session: onnxruntime.InferenceSession
    report: parity.ParityReport


def _checked_graph(
    module: torch.nn.Module,
    spec: Signature,
    golden_set: GoldenSet,
    ckpt: dict[str, Any],
    opset: int,
    atol: float,
    rtol: float,
    *,
    label: str | None = None,
    doc: str | None = None,
    masking: bool = True,
) -> _Graph:
    """Export `module` and gate it: ONNX Runtime reproduces PyTorch on every golden case
    (and, for a sequence graph with `masking`, padding never changes the real part)."""
    label = label or ckpt["name"]
    proto = to_onnx(
        module,
        _example(spec, golden_set.stored[1]),
        spec,
        opset=opset,
        doc=ckpt.get("description", "") if doc is None else doc,
    )
    model_bytes = proto.SerializeToString()
    session = parity.cpu_session(model_bytes)
    cases = golden_set.stored + golden_set.extra
    report = parity.check_cases(session, spec, cases, atol, rtol, label)
    if masking and ckpt["task"] == "sequence":
        parity.check_sequence_masking(session, spec, cases, atol, rtol, label)
    return _Graph(spec, golden_set, proto, model_bytes, session, report)


def _recheck(
    graph: _Graph, goldens_doc: dict[str, Any], atol: float, rtol: float, name: str
) -> None:
    """Check what the services will read: the golden cases decoded from the JSON text."""
    tensors = graph.spec.inputs + graph.spec.outputs
    cases = list(cases_from_json(goldens_doc["cases"], tensors))
    parity.check_cases(graph.session, graph.spec, cases, atol, rtol, name)


def export_model(
    checkpoint_path: str | os.PathLike[str],
    repository_dir: str | os.PathLike[str] = "model_repository",
    *,
    opset: int = OPSET,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
) -> ExportResult:
    """Export a checkpoint as the next version of its model; returns where it landed.

    Raises :class:`ExportError` (or :class:`training.checkpoint.CheckpointError`) and
    writes nothing when any step fails, including the parity gate.
    """
    start = time.perf_counter()
    ckpt = load_checkpoint(checkpoint_path)
    model, config, recipe = model_from_checkpoint(ckpt)
    name, meta = ckpt["name"], ckpt["data"]
    if ckpt["metrics"].get("dry_run"):
        log.warning("%s: exporting a dry-run checkpoint (one training step)", name)
    spec = recipe.signature(meta)
    data = recipe.load_data(config)
    seed = int(config.seed)
    main = _checked_graph(
        model, spec, recipe.golden_cases(model, spec, data, meta, seed), ckpt, opset, atol, rtol
    )
    step: _Step | None = None
    if recipe.step is not None:
        step = _step_model(recipe.step, model, main, ckpt, data, meta, seed, opset, atol, rtol)
        main.report.step_runs = step.runs
    explain: _Graph | None = None
    ex = recipe.explainer
    if ex is not None:
        # The explain graph: the same inputs, the main outputs plus the explanation,
        # under the same parity gate, on the recipe's golden cases for it.
        ex_module, ex_spec = ex.module(model), ex.signature(meta)
        ex_goldens = ex.golden_cases(ex_module, ex_spec, data, meta, seed)
        explain = _checked_graph(ex_module, ex_spec, ex_goldens, ckpt, opset, atol, rtol)
    # The training split's spread per input feature, for the services' drift score.
    drift = recipe.drift_reference(spec, data) if recipe.drift_reference else None

    repo = Path(repository_dir)
    with repository.staging(repo, name) as stage:
        files = {"model.onnx": main.model_bytes}
        explain_doc = None
        if explain is not None and ex is not None:
            files[EXPLAIN_FILE] = explain.model_bytes
            explain_doc = {
                "onnx": _onnx_info(EXPLAIN_FILE, explain.model_bytes, explain.proto, opset),
                "outputs": [t.to_json() for t in explain.spec.outputs],
                "attention_output": ex.attention_output,
                "definition": ex.definition,
                "goldens": {"cases": [case_to_json(c) for c in explain.goldens.stored]},
            }
        step_doc = None
        if step is not None:
            graph = step.graph
            files[STEP_FILE] = graph.model_bytes
            step_doc = manifest.step_section(
                graph.spec,
                _onnx_info(STEP_FILE, graph.model_bytes, graph.proto, opset),
                [case_to_json(c) for c in graph.goldens.stored],
            )
        for file, content in files.items():
            (stage / file).write_bytes(content)
        version = repository.next_version(repo, name)
        document = manifest.build(
            checkpoint=ckpt,
            version=version,
            spec=spec,
            onnx_info=_onnx_info("model.onnx", main.model_bytes, main.proto, opset),
            producer={
                "nnserve": NNSERVE_VERSION,
                "torch": torch.__version__.split("+")[0],
                "onnx": onnx.__version__,
                "onnxruntime": onnxruntime.__version__,
            },
            goldens={
                "atol": atol,
                "rtol": rtol,
                "cases": [case_to_json(c) for c in main.goldens.stored],
            },
            step=step_doc,
            explain=explain_doc,
            drift_reference=drift,
        )
        text = manifest.dumps(document)
        # Check what the services will read: the JSON text, decoded again.
        reread = json.loads(text)
        manifest.validate(reread)
        if "drift_reference" in reread:  # as the services will parse it
            shapes = {t.name: t.shape for t in spec.inputs}
            try:
                parse_reference(reread["drift_reference"], shapes)
            except (KeyError, TypeError, ValueError) as exc:
                raise ExportError(f"{name}: drift_reference does not parse: {exc}") from exc
        _recheck(main, reread["goldens"], atol, rtol, name)
        onnx_docs = [reread["onnx"]]
        if explain is not None:
            _recheck(explain, reread["explain"]["goldens"], atol, rtol, name)
            onnx_docs.append(reread["explain"]["onnx"])
        if step is not None:
            _recheck(step.graph, reread["step"]["goldens"], atol, rtol, f"{name} step")
            onnx_docs.append(reread["step"]["onnx"])
        for doc in onnx_docs:
            on_disk = (stage / doc["file"]).read_bytes()
            if hashlib.sha256(on_disk).hexdigest() != doc["sha256"]:
                raise ExportError(f"{name}: {doc['file']} on disk does not match its sha256")
        (stage / "model.json").write_text(text)
        target = repository.publish(stage, repo, name, version)
    seconds = time.perf_counter() - start
    result = ExportResult(
        name=name, version=version, path=target, parity=main.report, seconds=seconds,
        explain_parity=explain.report if explain is not None else None,
    )  # fmt: skip
    log.info("%s: exported version %d -> %s (%s)", name, version, target, result.summary())
    return result


@dataclass(frozen=True)
class _Step:
    graph: _Graph  # the step graph, past the ONNX Runtime vs PyTorch gate
    runs: int  # step runs the stepping parity gate compared with the full model


def _step_model(
    step: StepRecipe,
    model: torch.nn.Module,
    main: _Graph,
    ckpt: dict[str, Any],
    data: Dataset,
    meta: dict[str, Any],
    seed: int,
    opset: int,
    atol: float,
    rtol: float,
) -> _Step:
    """The recipe's step graph, behind two gates: ONNX Runtime reproduces PyTorch on the
    step goldens, and stepping through the full model's golden sequences reproduces the
    full graph's per-position and sequence scores."""
    name = ckpt["name"]
    module = step.module(model)
    step_spec = step.signature(model, meta)
    goldens = step.golden_cases(module, step_spec, data, meta, seed)
    graph = _checked_graph(
        module, step_spec, goldens, ckpt, opset, atol, rtol, label=f"{name} step",
        doc=f"{name}: one event per row plus the state in, scores and the new state out",
        masking=False,  # one event per row: there is no padding to check
    )  # fmt: skip
    runs = parity.check_stepping(
        main.session, main.spec, graph.session, step_spec,
        main.goldens.stored + main.goldens.extra, atol, rtol, name,
    )  # fmt: skip
    return _Step(graph, runs)


def has_version(repository_dir: str | os.PathLike[str], name: str) -> bool:
    return bool(repository.versions(Path(repository_dir), name))
