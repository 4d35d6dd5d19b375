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
from training import NNSERVE_VERSION
from training.checkpoint import load_checkpoint, model_from_checkpoint
from training.goldens import GoldenSet
from training.recipe import Dataset, StepRecipe

STEP_FILE = "step.onnx"  # a sequence model's step graph, beside model.onnx

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportResult:
    name: str
    version: int
    path: Path  # <repository>/<name>/<version>
    parity: parity.ParityReport
    seconds: float


def _example(spec: Signature, case: GoldenCase) -> tuple[torch.Tensor, ...]:
    """Trace inputs: a golden batch (batch and sequence sizes > 1 avoid 0/1 specialisation)."""
    return tuple(torch.from_numpy(case.inputs[t.name]) for t in spec.inputs)


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
    golden_set = recipe.golden_cases(model, spec, data, meta, int(config.seed))

    proto = to_onnx(
        model,
        _example(spec, golden_set.stored[1]),
        spec,
        opset=opset,
        doc=ckpt.get("description", ""),
    )
    model_bytes = proto.SerializeToString()
    session = parity.cpu_session(model_bytes)
    report = parity.check_cases(
        session, spec, golden_set.stored + golden_set.extra, atol, rtol, name
    )
    if ckpt["task"] == "sequence":
        parity.check_sequence_masking(
            session, spec, golden_set.stored + golden_set.extra, atol, rtol, name
        )
    step = None
    if recipe.step is not None:
        step = _step_model(
            recipe.step,
            model,
            spec,
            session,
            golden_set,
            data,
            meta,
            int(config.seed),
            opset,
            atol,
            rtol,
            name,
        )
        report.step_runs = step.runs

    repo = Path(repository_dir)
    with repository.staging(repo, name) as stage:
        (stage / "model.onnx").write_bytes(model_bytes)
        step_section = None
        if step is not None:
            (stage / STEP_FILE).write_bytes(step.model_bytes)
            step_section = manifest.step_section(
                step.spec,
                _onnx_info(STEP_FILE, step.model_bytes, opset, step.ir_version),
                [case_to_json(c) for c in step.goldens.stored],
            )
        version = repository.next_version(repo, name)
        document = manifest.build(
            checkpoint=ckpt,
            version=version,
            spec=spec,
            onnx_info=_onnx_info("model.onnx", model_bytes, opset, int(proto.ir_version)),
            producer={
                "nnserve": NNSERVE_VERSION,
                "torch": torch.__version__.split("+")[0],
                "onnx": onnx.__version__,
                "onnxruntime": onnxruntime.__version__,
            },
            goldens={
                "atol": atol,
                "rtol": rtol,
                "cases": [case_to_json(c) for c in golden_set.stored],
            },
            step=step_section,
        )
        text = manifest.dumps(document)
        # Check what the services will read: the JSON text, decoded again.
        reread = json.loads(text)
        manifest.validate(reread)
        parity.check_cases(
            session,
            spec,
            list(cases_from_json(reread["goldens"]["cases"], spec.inputs + spec.outputs)),
            atol,
            rtol,
            name,
        )
        on_disk = (stage / "model.onnx").read_bytes()
        if hashlib.sha256(on_disk).hexdigest() != reread["onnx"]["sha256"]:
            raise ExportError(f"{name}: model.onnx on disk does not match its sha256")
        if step is not None:
            parity.check_cases(
                step.session,
                step.spec,
                list(
                    cases_from_json(
                        reread["step"]["goldens"]["cases"], step.spec.inputs + step.spec.outputs
                    )
                ),
                atol,
                rtol,
                f"{name} step",
            )
            written = (stage / STEP_FILE).read_bytes()
            if hashlib.sha256(written).hexdigest() != reread["step"]["onnx"]["sha256"]:
                raise ExportError(f"{name}: {STEP_FILE} on disk does not match its sha256")
        (stage / "model.json").write_text(text)
        target = repository.publish(stage, repo, name, version)
    seconds = time.perf_counter() - start
    log.info("%s: exported version %d -> %s (%s)", name, version, target, report.summary())
    return ExportResult(name=name, version=version, path=target, parity=report, seconds=seconds)


@dataclass(frozen=True)
class _Step:
    spec: Signature
    model_bytes: bytes
    ir_version: int
    session: onnxruntime.InferenceSession
    goldens: GoldenSet
    runs: int  # step runs the stepping parity gate compared with the full model


def _onnx_info(file: str, model_bytes: bytes, opset: int, ir_version: int) -> dict[str, object]:
    return {
        "file": file,
        "sha256": hashlib.sha256(model_bytes).hexdigest(),
        "opset": opset,
        "ir_version": ir_version,
    }


def _step_model(
    step: StepRecipe,
    model: torch.nn.Module,
    spec: Signature,
    full_session: onnxruntime.InferenceSession,
    full_goldens: GoldenSet,
    data: Dataset,
    meta: dict[str, Any],
    seed: int,
    opset: int,
    atol: float,
    rtol: float,
    name: str,
) -> _Step:
    """The recipe's step graph, behind two gates: ONNX Runtime reproduces PyTorch on the
    step goldens, and stepping through the full model's golden sequences reproduces the
    full graph's per-position and sequence scores."""
    module = step.module(model)
    step_spec = step.signature(model, meta)
    goldens = step.golden_cases(module, step_spec, data, meta, seed)
    proto = to_onnx(
        module, _example(step_spec, goldens.stored[1]), step_spec, opset=opset,
        doc=f"{name}: one event per row plus the state in, scores and the new state out",
    )  # fmt: skip
    model_bytes = proto.SerializeToString()
    session = parity.cpu_session(model_bytes)
    parity.check_cases(
        session, step_spec, goldens.stored + goldens.extra, atol, rtol, f"{name} step"
    )
    runs = parity.check_stepping(
        full_session, spec, session, step_spec, full_goldens.stored + full_goldens.extra,
        atol, rtol, name,
    )  # fmt: skip
    return _Step(step_spec, model_bytes, int(proto.ir_version), session, goldens, runs)


def has_version(repository_dir: str | os.PathLike[str], name: str) -> bool:
    return bool(repository.versions(Path(repository_dir), name))
