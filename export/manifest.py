"""Build and validate model.json (docs/model-json.md, export/model.schema.json)."""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
from collections.abc import Callable
from importlib import resources
from typing import Any

import jsonschema
import numpy as np

from contract.model import Signature
from export.errors import ManifestError

SCHEMA_VERSION = 1
# Serving defaults (service settings may override): small models, latency-first batching.
SERVING_DEFAULTS: dict[str, Any] = {
    "device_policy": "allow_cpu_fallback",
    "max_batch_size": 64,
    "max_queue_delay_ms": 2.0,
}


@functools.cache
def schema() -> dict[str, Any]:
    text = resources.files("export").joinpath("model.schema.json").read_text()
    loaded: dict[str, Any] = json.loads(text)
    jsonschema.Draft202012Validator.check_schema(loaded)
    return loaded


_NUMBER_ARRAY = re.compile(r"\[\s*(-?[0-9][-+0-9.eE,\s]*?)\s*\]")


def dumps(document: dict[str, Any]) -> str:
    """Indented JSON with number arrays (shapes, golden data) kept on one line each."""
    text = json.dumps(document, indent=1, allow_nan=False)
    return _NUMBER_ARRAY.sub(lambda m: "[" + "".join(m.group(1).split()) + "]", text) + "\n"


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def _metrics(ckpt_metrics: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's held-out metrics in model.json form (flat, JSON scalars)."""
    extra: dict[str, Any] = {}
    for key, value in ckpt_metrics.get("extra", {}).items():
        if isinstance(value, bool | int | float | str):
            extra[key] = value
    bar = ckpt_metrics.get("quality_bar", {})
    if bar:
        extra["quality_bar_metric"] = bar["metric"]
        extra["quality_bar_min"] = bar["min"]
        extra["quality_bar_passed"] = bool(bar["passed"])
    extra["dry_run"] = bool(ckpt_metrics.get("dry_run", False))
    extra["epochs_run"] = int(ckpt_metrics.get("epochs_run", 0))
    return {
        "split": ckpt_metrics["split"],
        "accuracy": float(ckpt_metrics["accuracy"]),
        "f1": float(ckpt_metrics["f1"]),
        "train_seconds": float(ckpt_metrics["train_seconds"]),
        "extra": extra,
    }


def build(
    *,
    checkpoint: dict[str, Any],
    version: int,
    spec: Signature,
    onnx_info: dict[str, Any],
    producer: dict[str, str],
    goldens: dict[str, Any],
    step: dict[str, Any] | None = None,
    explain: dict[str, Any] | None = None,
    drift_reference: dict[str, Any] | None = None,
) -> dict[str, Any]:
    data = checkpoint["data"]
    document = {
        "schema_version": SCHEMA_VERSION,
        "name": checkpoint["name"],
        "version": version,
        "family": checkpoint["family"],
        "task": checkpoint["task"],
        "description": checkpoint.get("description", ""),
        "created_at": utc_now(),
        "onnx": onnx_info,
        "producer": producer,
        "inputs": [t.to_json() for t in spec.inputs],
        "outputs": [t.to_json() for t in spec.outputs],
        "labels": list(data["labels"]),
        checkpoint["task"]: spec.section,
        "metrics": _metrics(checkpoint["metrics"]),
        "serving": dict(SERVING_DEFAULTS),
        "goldens": goldens,
    }
    if explain is not None:
        document["explain"] = explain
    if step is not None:
        document["step"] = step
    if drift_reference is not None:
        document["drift_reference"] = drift_reference
    return document


def step_section(
    spec: Signature, onnx_info: dict[str, Any], cases: list[dict[str, Any]]
) -> dict[str, Any]:
    """model.json's "step" block: the step graph's file, tensors, names and goldens."""
    return {
        "onnx": onnx_info,
        "inputs": [t.to_json() for t in spec.inputs],
        "outputs": [t.to_json() for t in spec.outputs],
        **spec.section,
        "goldens": {"cases": cases},
    }


def validate(manifest: dict[str, Any]) -> None:
    """JSON Schema + the cross-field rules a schema cannot express; raises ManifestError."""
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(manifest), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.absolute_path) or "(root)"
        raise ManifestError(f"model.json violates the schema at {where}: {first.message}")
    tensors = {t["name"]: t for t in (*manifest["inputs"], *manifest["outputs"])}
    inputs = {t["name"] for t in manifest["inputs"]}
    outputs = {t["name"] for t in manifest["outputs"]}
    n_labels = len(manifest["labels"])

    def need(cond: bool, message: str) -> None:
        if not cond:
            raise ManifestError(f"model.json: {message}")

    if manifest["task"] == "classify":
        c = manifest["classify"]
        need(c["input"] in inputs, f"classify.input {c['input']!r} is not an input")
        need(c["scores_output"] in outputs, "classify.scores_output is not an output")
        need(tensors[c["scores_output"]]["shape"][1:] == [n_labels], "scores shape != labels")
        shape = tensors[c["input"]]["shape"]
        if c["kind"] == "tabular":
            need(shape[1:] == [len(c["features"])], "features do not match the input width")
        else:
            img = c["image"]
            need(
                shape[1:] == [img["channels"], img["height"], img["width"]],
                "image section does not match the input shape",
            )
    else:
        s = manifest["sequence"]
        need(s["tokens_input"] in inputs and s["lengths_input"] in inputs, "sequence inputs")
        need(s["sequence_scores_output"] in outputs, "sequence_scores_output is not an output")
        need(len(s["vocabulary"]) > s["pad_id"], "pad_id outside the vocabulary")
        unk = s["unknown_id"]
        need(unk is None or len(s["vocabulary"]) > unk, "unknown_id outside the vocabulary")
    _check_cases(manifest["goldens"]["cases"], inputs, tensors, need)
    explain = manifest.get("explain")
    if explain is not None:
        need(manifest["task"] == "sequence", "an explain graph needs a sequence model")
        need(explain["onnx"]["file"] != manifest["onnx"]["file"], "explain uses the main onnx file")
        ex_tensors = {t["name"]: t for t in (*manifest["inputs"], *explain["outputs"])}
        ex_outputs = [t["name"] for t in explain["outputs"]]
        need(
            ex_outputs[: len(outputs)] == [t["name"] for t in manifest["outputs"]],
            "explain.outputs must start with the main graph's outputs",
        )
        need(explain["attention_output"] in ex_outputs, "explain.attention_output is not an output")
        need(
            ex_tensors[explain["attention_output"]]["shape"] == [-1, -1, -1],
            "explain.attention_output must have shape [-1, -1, -1] (batch, query, key)",
        )
        _check_cases(explain["goldens"]["cases"], inputs, ex_tensors, need)
    step = manifest.get("step")
    if step is not None:
        need(manifest["task"] == "sequence", "a step model needs the sequence task")
        step_in = {t["name"] for t in step["inputs"]}
        step_out = {t["name"] for t in step["outputs"]}
        states = step["state"]
        need(
            {step["token_input"], *(s["input"] for s in states)} == step_in,
            "step: token_input and the state inputs must be exactly the step inputs",
        )
        need(
            {step["position_score_output"], step["sequence_scores_output"]} <= step_out
            and {s["output"] for s in states} <= step_out,
            "step: score and state outputs must be step outputs",
        )
        need(step["onnx"]["file"] != manifest["onnx"]["file"], "step: needs its own onnx file")
        step_tensors = {t["name"]: t for t in (*step["inputs"], *step["outputs"])}
        _check_cases(step["goldens"]["cases"], step_in, step_tensors, need)


def _check_cases(
    cases: list[dict[str, Any]],
    inputs: set[str],
    tensors: dict[str, dict[str, Any]],
    need: Callable[[bool, str], None],
) -> None:
    outputs = set(tensors) - inputs
    seen: set[str] = set()
    for case in cases:
        need(case["name"] not in seen, f"duplicate golden case {case['name']!r}")
        seen.add(case["name"])
        need(set(case["inputs"]) == inputs, f"case {case['name']!r} must feed every input")
        need(set(case["outputs"]) <= outputs, f"case {case['name']!r} names unknown outputs")
        for name, arr in (*case["inputs"].items(), *case["outputs"].items()):
            declared = tensors[name]["shape"]
            need(
                int(np.prod(arr["shape"])) == len(arr["data"]),
                f"case {case['name']!r}: {name} data length does not match its shape",
            )
            need(
                len(arr["shape"]) == len(declared)
                and all(d in (-1, s) for d, s in zip(declared, arr["shape"], strict=True)),
                f"case {case['name']!r}: {name} shape {arr['shape']} does not fit {declared}",
            )
