"""The model contract: <root>/<name>/<version>/{model.onnx, model.json} and what it means
(plus step.onnx for sequence models that can score a stream event by event).

One module, numpy only, for everyone who reads or writes the contract: tensor specs and
the KServe v2 datatype table, the model.json reader and repository scan (services,
bench, tests), golden cases in their JSON form and the one tolerance rule that golden
outputs are checked by (export's parity gate, the services' load check, bench's GPU
check). docs/model-json.md describes the file; export/model.schema.json is its schema.

Discovery only: what exists and what model.json says. Loading sessions and deciding
readiness is the services' job.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from contract.drift import DriftReference, parse_reference

log = logging.getLogger(__name__)

# KServe v2 datatype names <-> numpy dtypes (little-endian on the wire). The datatypes a
# model may declare; BYTES and BF16 have no numpy dtype and are not supported.
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

# Golden tolerance when model.json states none (export writes these by default).
DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-3


class ModelLoadError(Exception):
    """A model could not be loaded or failed its golden check (never reaches clients raw)."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str  # KServe v2 name, e.g. FP32
    shape: tuple[int, ...]  # -1 for dynamic axes; axis 0 is the batch axis
    # Names of the dynamic axes by index (ONNX symbolic dims); known at export only.
    axis_names: dict[int, str] = field(default_factory=dict, compare=False)

    @property
    def dtype(self) -> np.dtype:
        return V2_TO_NUMPY[self.datatype]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.datatype, "shape": list(self.shape)}


def tensor(name: str, datatype: str, *dims: int | str) -> TensorSpec:
    """A tensor spec; a str dim is a named dynamic axis (-1 in model.json)."""
    if datatype not in V2_TO_NUMPY:
        raise ValueError(f"unsupported datatype {datatype!r}")
    shape = tuple(-1 if isinstance(d, str) else d for d in dims)
    axes = {i: d for i, d in enumerate(dims) if isinstance(d, str)}
    return TensorSpec(name, datatype, shape, axes)


@dataclass(frozen=True)
class Signature:
    """What a model family exports: its graph's inputs and outputs in order, the task
    section of model.json ("classify" or "sequence" block) and the largest size each
    named dynamic axis may take (axes not named here are bounded by the exporter)."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    section: dict[str, Any]
    axis_max: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ClassifySpec:
    input: str
    scores_output: str
    kind: str  # tabular | image
    feature_names: tuple[str, ...] = ()
    image_shape: tuple[int, int, int] | None = None  # (channels, height, width)
    pixel_max: float = 1.0

    @cached_property
    def feature_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.feature_names)}


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
    # Set on an explain graph's spec only: its (B, T, T) output, cut on axes 1 and 2.
    attention_output: str | None = None

    @cached_property
    def token_index(self) -> dict[str, int]:
        return {token: i for i, token in enumerate(self.vocabulary)}


@dataclass(frozen=True)
class StateSpec:
    """One state tensor of a step model: fed as `input`, returned updated as `output`,
    filled with `initial` before a stream's first event."""

    input: str
    output: str
    initial: float


@dataclass(frozen=True)
class StepSpec:
    """A sequence model's step graph (model.json "step"): one event per row plus the
    state in, that event's score, the sequence score so far and the new state out."""

    onnx_file: Path
    sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    token_input: str
    position_score_output: str
    sequence_scores_output: str
    state: tuple[StateSpec, ...]
    goldens: tuple[GoldenCase, ...]


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
    step: StepSpec | None = None  # sequence models that can score a stream event by event
    explain: ExplainSpec | None = None  # the optional explain graph (model.json "explain")
    # The training inputs' spread (model.json "drift_reference"); None for models
    # exported without one, which then get no drift score.
    drift: DriftReference | None = None

    def input(self, name: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(name)


# ---------------------------------------------------------------- names and paths

# A model name is a folder name as export/model.schema.json defines an identifier,
# bounded; a version is a positive number in canonical ASCII digits ("7", never "07",
# "²", "①" or thousands of digits, which str.isdigit and int() accept or choke on).
MAX_NAME_CHARS = 128
MAX_VERSION_DIGITS = 18  # fits int64, as Triton's version numbers do
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_VERSION = re.compile(r"[1-9][0-9]*")  # re's [0-9] is ASCII only, unlike str.isdigit


def is_model_name(name: str) -> bool:
    """A folder name that can be a model: no '/', no '..', no leading '.', bounded."""
    return len(name) <= MAX_NAME_CHARS and _NAME.fullmatch(name) is not None


def version_number(text: str) -> int | None:
    """The version a folder or request names, or None when it names none."""
    if len(text) > MAX_VERSION_DIGITS or _VERSION.fullmatch(text) is None:
        return None
    return int(text)


def inside(root: Path, path: Path) -> bool:
    """Whether `path`, symlinks resolved, lies within the repository root (resolved too)."""
    try:
        return path.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError):  # unreadable, or a symlink loop
        return False


@dataclass(frozen=True)
class ExplainSpec:
    """model.json "explain": a second graph run only for requests that ask for it."""

    graph: ModelSpec  # as a model of its own: same inputs, its file, outputs and goldens
    attention_output: str  # (B, T, T) attention of each position over the positions
    definition: str  # how attention_output is computed (docs/model-json.md)


def scan(root: Path) -> dict[str, list[int]]:
    """Model name -> sorted versions present (version folders holding a model.json).

    Folder names that cannot be a model or a version, and folders that resolve outside
    the root (symlinks out), are skipped with one warning each; names starting with '.'
    are skipped silently (staging copies, editor files).
    """
    found: dict[str, list[int]] = {}
    if not root.is_dir():
        return found
    for model_dir in sorted(p for p in _entries(root) if p.is_dir()):
        if not is_model_name(model_dir.name) or not inside(root, model_dir):
            _skip(model_dir, "not a valid model name, or outside the repository")
            continue
        versions = []
        for v in (p for p in _entries(model_dir) if p.is_dir()):
            number = version_number(v.name)
            if number is None or not inside(root, v):
                _skip(v, "not a version folder (1, 2, ... in ASCII digits) in the repository")
            elif (v / "model.json").is_file():
                versions.append(number)
        if versions:
            found[model_dir.name] = sorted(versions)
    return found


def versions(model_dir: Path) -> list[int]:
    """Version folders of one model, with or without a model.json (export never reuses
    a number); the same folder-name rule as scan."""
    if not model_dir.is_dir():
        return []
    numbers = (version_number(v.name) for v in _entries(model_dir) if v.is_dir())
    return sorted(n for n in numbers if n is not None)


_skipped: set[Path] = set()  # warned about once each; bounded so polling cannot grow it


def _entries(directory: Path) -> list[Path]:
    try:
        return [p for p in directory.iterdir() if not p.name.startswith(".")]
    except OSError as exc:
        log.warning("model repository: cannot list %s: %s", directory, exc)
        return []


def _skip(path: Path, why: str) -> None:
    if path not in _skipped and len(_skipped) < 1024:
        _skipped.add(path)
        log.warning("model repository: skipping %r: %s", str(path)[-200:], why)


def from_raw(raw: bytes, datatype: str, shape: Sequence[int]) -> np.ndarray:
    """A raw KServe v2 tensor (little-endian, row-major) as a read-only view, no copy."""
    return np.frombuffer(raw, dtype=V2_TO_NUMPY[datatype].newbyteorder("<")).reshape(tuple(shape))


# ---------------------------------------------------------------- golden cases


def _num(x: float) -> float:
    # 9 significant digits round-trip any float32 exactly and keep model.json small.
    return float(f"{x:.9g}")


def encode_array(a: np.ndarray) -> dict[str, Any]:
    """An array in model.json form: {"shape": [...], "data": [row-major values]}."""
    flat = a.reshape(-1)
    data = [int(v) for v in flat] if a.dtype.kind in "iub" else [_num(float(v)) for v in flat]
    return {"shape": list(a.shape), "data": data}


def decode_array(entry: dict[str, Any], dtype: np.dtype, where: str = "array") -> np.ndarray:
    """The inverse of encode_array; ModelLoadError when the data does not fill the shape."""
    data = np.asarray(entry["data"], dtype=dtype)
    shape = tuple(int(d) for d in entry["shape"])
    if data.size != int(np.prod(shape)):
        raise ModelLoadError(f"{where}: {data.size} values do not fill shape {list(shape)}")
    return data.reshape(shape)


def case_to_json(case: GoldenCase) -> dict[str, Any]:
    return {
        "name": case.name,
        "inputs": {k: encode_array(v) for k, v in case.inputs.items()},
        "outputs": {k: encode_array(v) for k, v in case.outputs.items()},
    }


def cases_from_json(
    cases: list[dict[str, Any]], tensors: tuple[TensorSpec, ...], where: str = "goldens"
) -> tuple[GoldenCase, ...]:
    dtypes = {t.name: t.dtype for t in tensors}

    def arrays(entries: dict[str, Any]) -> dict[str, np.ndarray]:
        return {k: decode_array(v, dtypes[k], f"{where} {k}") for k, v in entries.items()}

    return tuple(
        GoldenCase(c.get("name", f"case{i}"), arrays(c["inputs"]), arrays(c["outputs"]))
        for i, c in enumerate(cases)
    )


def worst(
    actual: np.ndarray, golden: np.ndarray, atol: float, rtol: float
) -> tuple[float, float, tuple[int, ...]]:
    """The tolerance rule for goldens: |actual - golden| <= atol + rtol * |golden| elementwise
    (NaN only where the golden is NaN). Returns (excess over the tolerance, |diff| there,
    index) of the worst element; excess <= 0 passes. Shapes must be equal."""
    a = actual.astype(np.float64)
    g = golden.astype(np.float64)
    if a.size == 0:
        return 0.0, 0.0, (0,) * a.ndim
    diff = np.abs(a - g)
    excess = diff - (atol + rtol * np.abs(g))
    excess = np.where(np.isnan(a) != np.isnan(g), np.inf, np.nan_to_num(excess, nan=0.0))
    flat = int(np.argmax(excess))
    index = tuple(int(i) for i in np.unravel_index(flat, excess.shape))
    return float(excess.reshape(-1)[flat]), float(diff.reshape(-1)[flat]), index


# ---------------------------------------------------------------- model.json reader


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

    spec = _parse_main(doc, text, directory, name, version, inputs, outputs, classify, sequence)
    ex = doc.get("explain")
    if ex is None:
        return spec
    if sequence is None:
        raise ModelLoadError(f"{where}: an explain graph needs a sequence model")
    ex_outputs = _tensors(ex["outputs"], where)
    attention = ex["attention_output"]
    if attention not in {t.name for t in ex_outputs}:
        raise ModelLoadError(f"{where}: explain.attention_output is not an explain output")
    graph = replace(
        spec,
        onnx_file=directory / ex["onnx"]["file"],
        sha256=ex["onnx"]["sha256"],
        outputs=ex_outputs,
        sequence=replace(sequence, attention_output=attention),
        step=None,  # the step graph belongs to the model, not to its explain graph
        drift=None,  # so does the drift reference
        goldens=cases_from_json(
            list(ex["goldens"]["cases"]), inputs + ex_outputs, f"{where} explain golden"
        ),
    )
    return replace(spec, explain=ExplainSpec(graph, attention, str(ex["definition"])))


def _parse_main(
    doc: dict[str, Any],
    text: str,
    directory: Path,
    name: str,
    version: int,
    inputs: tuple[TensorSpec, ...],
    outputs: tuple[TensorSpec, ...],
    classify: ClassifySpec | None,
    sequence: SequenceSpec | None,
) -> ModelSpec:
    where = f"{name}/{version}"
    task = doc["task"]
    goldens_doc = doc.get("goldens") or {}
    goldens = cases_from_json(
        list(goldens_doc.get("cases", ())), inputs + outputs, f"{where} golden"
    )
    serving = doc.get("serving") or {}
    onnx_doc = doc["onnx"]
    step = _step(doc["step"], directory, f"{where} step") if doc.get("step") else None
    if step is not None and sequence is None:
        raise ModelLoadError(f"{where}: a step model needs the sequence task")
    drift_doc = doc.get("drift_reference")
    drift = None
    if drift_doc is not None:
        drift = parse_reference(drift_doc, {t.name: t.shape for t in inputs})
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
        atol=float(goldens_doc.get("atol", DEFAULT_ATOL)),
        rtol=float(goldens_doc.get("rtol", DEFAULT_RTOL)),
        metrics=doc.get("metrics") or {},
        model_json=text,
        step=step,
        drift=drift,
    )


def _step(s: dict[str, Any], directory: Path, where: str) -> StepSpec:
    inputs = _tensors(s["inputs"], where)
    outputs = _tensors(s["outputs"], where)
    in_names = {t.name for t in inputs}
    out_names = {t.name for t in outputs}
    state = tuple(
        StateSpec(e["input"], e["output"], float(e.get("initial", 0.0))) for e in s["state"]
    )
    named_in = [s["token_input"], *(st.input for st in state)]
    named_out = [
        s["position_score_output"],
        s["sequence_scores_output"],
        *(st.output for st in state),
    ]
    if set(named_in) != in_names or not set(named_out) <= out_names:
        raise ModelLoadError(f"{where}: token, score and state names do not match its tensors")
    return StepSpec(
        onnx_file=directory / s["onnx"]["file"],
        sha256=s["onnx"]["sha256"],
        inputs=inputs,
        outputs=outputs,
        token_input=s["token_input"],
        position_score_output=s["position_score_output"],
        sequence_scores_output=s["sequence_scores_output"],
        state=state,
        goldens=cases_from_json(list(s["goldens"]["cases"]), inputs + outputs, f"{where} golden"),
    )
