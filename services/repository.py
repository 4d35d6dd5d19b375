"""Model repository discovery: <root>/<name>/<version>/{model.onnx, model.json} -> ModelSpec.

Discovery only: what exists and what model.json says. Loading sessions and deciding
readiness is the registry's job.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from services.errors import ModelLoadError

log = logging.getLogger(__name__)

# KServe v2 datatype names <-> numpy dtypes (little-endian on the wire).
V2_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
NUMPY_TO_V2: dict[np.dtype, str] = {v: k for k, v in V2_TO_NUMPY.items()}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str  # KServe v2 name, e.g. FP32
    shape: tuple[int, ...]  # -1 for dynamic axes; axis 0 is the batch axis

    @property
    def dtype(self) -> np.dtype:
        return V2_TO_NUMPY[self.datatype]


@dataclass(frozen=True)
class ClassifySpec:
    input: str
    scores_output: str
    kind: str  # tabular | image
    feature_names: tuple[str, ...] = ()
    image_shape: tuple[int, int, int] | None = None  # (channels, height, width)
    pixel_max: float = 1.0


@dataclass(frozen=True)
class SequenceSpec:
    tokens_input: str
    lengths_input: str | None
    sequence_scores_output: str
    position_scores_output: str | None
    max_length: int
    pad_id: int
    unknown_id: int | None
    vocabulary: tuple[str, ...]
    numeric_input: str | None = None

    @property
    def token_index(self) -> dict[str, int]:
        return {token: i for i, token in enumerate(self.vocabulary)}


@dataclass(frozen=True)
class GoldenCase:
    name: str
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]


@dataclass(frozen=True)
class ServingDefaults:
    device_policy: str | None = None
    max_batch_size: int = 64
    max_queue_delay_ms: float = 0.0


@dataclass(frozen=True)
class ModelSpec:
    """Everything the services know about one model version, read from model.json."""

    name: str
    version: int
    family: str
    task: str  # classify | sequence
    description: str
    directory: Path
    onnx_file: Path
    sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    labels: tuple[str, ...]
    classify: ClassifySpec | None
    sequence: SequenceSpec | None
    serving: ServingDefaults
    goldens: tuple[GoldenCase, ...]
    atol: float
    rtol: float
    metrics: dict[str, Any] = field(default_factory=dict)
    model_json: str = ""  # the file as read, for DescribeModel / ModelConfig

    def input(self, name: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def output(self, name: str) -> TensorSpec:
        for spec in self.outputs:
            if spec.name == name:
                return spec
        raise KeyError(name)


def scan(root: Path) -> dict[str, list[int]]:
    """Model name -> sorted versions present (folders with an integer name and a model.json)."""
    found: dict[str, list[int]] = {}
    if not root.is_dir():
        return found
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        versions = sorted(
            int(v.name)
            for v in model_dir.iterdir()
            if v.is_dir() and v.name.isdigit() and int(v.name) > 0 and (v / "model.json").is_file()
        )
        if versions:
            found[model_dir.name] = versions
    return found


def _array(entry: dict[str, Any], dtype: np.dtype, where: str) -> np.ndarray:
    data = np.asarray(entry["data"], dtype=dtype)
    shape = tuple(int(d) for d in entry["shape"])
    if data.size != int(np.prod(shape)):
        raise ModelLoadError(f"{where}: {data.size} values do not fill shape {list(shape)}")
    return data.reshape(shape)


def _tensors(entries: list[dict[str, Any]], where: str) -> tuple[TensorSpec, ...]:
    specs = []
    for e in entries:
        if e["dtype"] not in V2_TO_NUMPY:
            raise ModelLoadError(f"{where}: unsupported dtype {e['dtype']!r} for {e['name']!r}")
        specs.append(TensorSpec(e["name"], e["dtype"], tuple(int(d) for d in e["shape"])))
    return tuple(specs)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_spec(root: Path, name: str, version: int) -> ModelSpec:
    """Parse and check <root>/<name>/<version>/model.json; ModelLoadError says what is wrong."""
    directory = root / name / str(version)
    path = directory / "model.json"
    try:
        text = path.read_text()
        doc = json.loads(text)
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{name}/{version}: cannot read model.json: {exc}") from exc
    try:
        return _parse(doc, text, directory, name, version)
    except KeyError as exc:
        raise ModelLoadError(f"{name}/{version}: model.json lacks field {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"{name}/{version}: model.json is malformed: {exc}") from exc


def _parse(doc: dict[str, Any], text: str, directory: Path, name: str, version: int) -> ModelSpec:
    where = f"{name}/{version}"
    if doc["name"] != name or int(doc["version"]) != version:
        raise ModelLoadError(
            f"{where}: model.json says {doc['name']}/{doc['version']}, "
            "which does not match its folder"
        )
    inputs = _tensors(doc["inputs"], where)
    outputs = _tensors(doc["outputs"], where)
    dtypes = {t.name: t.dtype for t in inputs + outputs}

    classify = sequence = None
    task = doc["task"]
    if task == "classify":
        c = doc["classify"]
        image = c.get("image")
        classify = ClassifySpec(
            input=c["input"],
            scores_output=c["scores_output"],
            kind=c["kind"],
            feature_names=tuple(f["name"] for f in c.get("features") or ()),
            image_shape=(int(image["channels"]), int(image["height"]), int(image["width"]))
            if image
            else None,
            pixel_max=float(image["pixel_max"]) if image else 1.0,
        )
    elif task == "sequence":
        s = doc["sequence"]
        sequence = SequenceSpec(
            tokens_input=s["tokens_input"],
            lengths_input=s.get("lengths_input"),
            sequence_scores_output=s["sequence_scores_output"],
            position_scores_output=s.get("position_scores_output"),
            max_length=int(s["max_length"]),
            pad_id=int(s.get("pad_id", 0)),
            unknown_id=s.get("unknown_id"),
            vocabulary=tuple(s["vocabulary"]),
            numeric_input=s.get("numeric_input"),
        )
    else:
        raise ModelLoadError(f"{where}: unknown task {task!r} (classify|sequence)")

    goldens_doc = doc.get("goldens") or {}
    goldens = tuple(
        GoldenCase(
            name=case.get("name", f"case{i}"),
            inputs={
                k: _array(v, dtypes[k], f"{where} golden {k}") for k, v in case["inputs"].items()
            },
            outputs={
                k: _array(v, dtypes[k], f"{where} golden {k}") for k, v in case["outputs"].items()
            },
        )
        for i, case in enumerate(goldens_doc.get("cases", ()))
    )
    serving = doc.get("serving") or {}
    onnx_doc = doc["onnx"]
    return ModelSpec(
        name=name,
        version=version,
        family=doc.get("family", "custom"),
        task=task,
        description=doc.get("description", ""),
        directory=directory,
        onnx_file=directory / onnx_doc.get("file", "model.onnx"),
        sha256=onnx_doc["sha256"],
        inputs=inputs,
        outputs=outputs,
        labels=tuple(doc["labels"]),
        classify=classify,
        sequence=sequence,
        serving=ServingDefaults(
            device_policy=serving.get("device_policy"),
            max_batch_size=int(serving.get("max_batch_size", 64)),
            max_queue_delay_ms=float(serving.get("max_queue_delay_ms", 0.0)),
        ),
        goldens=goldens,
        atol=float(goldens_doc.get("atol", 1e-4)),
        rtol=float(goldens_doc.get("rtol", 1e-3)),
        metrics=doc.get("metrics") or {},
        model_json=text,
    )
