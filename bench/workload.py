"""What the benchmark sends: valid batch-1 inputs per model, encoded for each API.

Inputs come from model.json (golden cases first, then seeded random rows that the
contract allows) or, for a foreign KServe v2 server, from ModelMetadata alone.
Requests are serialized once, here; the load generator sends the bytes as they are.
Protobuf stays in this module and in the response checks below.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from protos import grpc_service_pb2 as pb
from protos import nnserve_pb2 as npb

V2_INFER = "/inference.GRPCInferenceService/ModelInfer"
CLASSIFY = "/nnserve.v1.Predictor/Classify"
SEQUENCE = "/nnserve.v1.Predictor/Sequence"

NUMPY_OF = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}

Row = dict[str, np.ndarray]  # one request's inputs, batch axis of size 1


@dataclass(frozen=True)
class TensorInfo:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 for dynamic axes


@dataclass(frozen=True)
class ModelInfo:
    """A model as the benchmark sees it: from model.json, or from ModelMetadata."""

    name: str
    task: str  # classify | sequence | unknown (metadata only)
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    doc: dict[str, Any] = field(default_factory=dict, compare=False)  # model.json, if known
    directory: Path | None = None  # <repository>/<name>/<version>, if known

    @property
    def has_domain_api(self) -> bool:
        return self.task in ("classify", "sequence") and bool(self.doc)

    @property
    def max_length(self) -> int:
        return int(self.doc.get("sequence", {}).get("max_length", 0))


def _tensors(entries: list[dict[str, Any]]) -> tuple[TensorInfo, ...]:
    return tuple(
        TensorInfo(e["name"], e["dtype"], tuple(int(d) for d in e["shape"])) for e in entries
    )


def latest_version_dir(repository: Path, name: str) -> Path:
    versions = [
        int(p.name)
        for p in (repository / name).glob("*")
        if p.name.isdigit() and (p / "model.json").is_file()
    ]
    if not versions:
        raise FileNotFoundError(f"no {name}/<version>/model.json under {repository}")
    return repository / name / str(max(versions))


def from_repository(repository: Path, name: str) -> ModelInfo:
    """The highest version of `name` in a model repository (the one the server serves)."""
    directory = latest_version_dir(repository, name)
    doc = json.loads((directory / "model.json").read_text())
    return ModelInfo(
        name=name,
        task=doc["task"],
        inputs=_tensors(doc["inputs"]),
        outputs=_tensors(doc["outputs"]),
        doc=doc,
        directory=directory,
    )


def from_metadata(metadata: pb.ModelMetadataResponse) -> ModelInfo:
    """A model of any KServe v2 server, known only by its tensor names, types and shapes."""

    def tensors(items: Any) -> tuple[TensorInfo, ...]:
        return tuple(TensorInfo(t.name, t.datatype, tuple(int(d) for d in t.shape)) for t in items)

    return ModelInfo(metadata.name, "unknown", tensors(metadata.inputs), tensors(metadata.outputs))


# ---------------------------------------------------------------------- inputs


def sample_rows(info: ModelInfo, count: int, seq_len: int = 32, seed: int = 0) -> list[Row]:
    """`count` valid batch-1 inputs: golden rows first, then seeded random ones."""
    rng = np.random.default_rng(seed)
    if info.task == "sequence" and info.doc:
        return [_sequence_row(info, seq_len, rng) for _ in range(count)]
    rows = _golden_rows(info)[:count]
    while len(rows) < count:
        rows.append(_random_row(info, rng, seq_len, template=rows[0] if rows else None))
    if info.task == "classify" and info.doc.get("classify", {}).get("kind") == "image":
        rows = [_quantize_image(info, r) for r in rows]
    return rows


def _golden_rows(info: ModelInfo) -> list[Row]:
    rows: list[Row] = []
    dtypes = {t.name: NUMPY_OF[t.datatype] for t in info.inputs}
    for case in info.doc.get("goldens", {}).get("cases", ()):
        arrays = {
            k: np.asarray(v["data"], dtype=dtypes[k]).reshape(v["shape"])
            for k, v in case["inputs"].items()
            if k in dtypes
        }
        if set(arrays) != set(dtypes):
            continue
        batch = min(len(a) for a in arrays.values())
        rows.extend({k: a[i : i + 1] for k, a in arrays.items()} for i in range(batch))
    return rows


def _random_row(
    info: ModelInfo, rng: np.random.Generator, seq_len: int, template: Row | None
) -> Row:
    row: Row = {}
    for t in info.inputs:
        dtype = NUMPY_OF[t.datatype]
        if template is not None and t.name in template:
            base = template[t.name]
            if np.issubdtype(dtype, np.floating):  # jitter a known-good row by ~5%
                noise = rng.normal(0.0, 0.05, base.shape) * (np.abs(base) + 0.01)
                row[t.name] = (base + noise).astype(dtype)
            else:
                row[t.name] = base.copy()
            continue
        shape = [1] + [seq_len if d == -1 else d for d in t.shape[1:]]
        if len(t.shape) == 1 and np.issubdtype(dtype, np.integer):  # a per-row length
            row[t.name] = np.full(shape, seq_len, dtype=dtype)
        elif np.issubdtype(dtype, np.integer):
            row[t.name] = rng.integers(0, 2, size=shape).astype(dtype)
        elif dtype is np.bool_:
            row[t.name] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            row[t.name] = rng.random(shape).astype(dtype)
    return row


def _sequence_row(info: ModelInfo, seq_len: int, rng: np.random.Generator) -> Row:
    seq = info.doc["sequence"]
    length = max(1, min(seq_len, int(seq["max_length"])))
    reserved = {seq.get("pad_id", 0), seq.get("unknown_id")}
    ids = np.array([i for i in range(len(seq["vocabulary"])) if i not in reserved], dtype=np.int64)
    row: Row = {}
    if seq.get("numeric_input"):
        spec = next(t for t in info.inputs if t.name == seq["numeric_input"])
        width = spec.shape[2] if len(spec.shape) > 2 and spec.shape[2] > 0 else 1
        row[seq["numeric_input"]] = rng.normal(size=(1, length, width)).astype(np.float32)
    else:
        row[seq["tokens_input"]] = rng.choice(ids, size=(1, length))  # (1, T)
    if seq.get("lengths_input"):
        row[seq["lengths_input"]] = np.array([length], dtype=np.int64)
    return row


def _quantize_image(info: ModelInfo, row: Row) -> Row:
    """Images as 8-bit pixels scaled to [0, pixel_max], so both APIs send the same values."""
    c = info.doc["classify"]
    pixel_max = float(c["image"]["pixel_max"])
    x = row[c["input"]]
    u8 = np.clip(np.rint(x * (255.0 / pixel_max)), 0, 255).astype(np.uint8)
    return {**row, c["input"]: u8.astype(np.float32) * np.float32(pixel_max / 255.0)}


def stack(rows: list[Row]) -> Row:
    """Batch rows of equal shapes along axis 0 (the in-process floor at batch > 1)."""
    return {k: np.concatenate([r[k] for r in rows], axis=0) for k in rows[0]}


# ---------------------------------------------------------------------- requests


def v2_request(info: ModelInfo, row: Row, version: str = "") -> bytes:
    """ModelInferRequest with raw_input_contents (little-endian, C order); all outputs."""
    request = pb.ModelInferRequest(model_name=info.name, model_version=version)
    for t in info.inputs:
        value = np.ascontiguousarray(row[t.name])
        request.inputs.add(name=t.name, datatype=t.datatype, shape=list(value.shape))
        request.raw_input_contents.append(value.astype(value.dtype.newbyteorder("<")).tobytes())
    return request.SerializeToString()


def domain_request(info: ModelInfo, row: Row) -> tuple[str, bytes]:
    """(method, request bytes) for nnserve.v1: tabular values, uint8 images, token ids."""
    doc = info.doc
    if info.task == "classify":
        c = doc["classify"]
        x = row[c["input"]]
        if c["kind"] == "image":
            img = c["image"]
            u8 = np.rint(x[0] * (255.0 / float(img["pixel_max"]))).astype(np.uint8)
            shape = [int(img["channels"]), int(img["height"]), int(img["width"])]
            request = npb.ClassifyRequest(
                model_name=info.name, images=[npb.Image(shape=shape, uint8_pixels=u8.tobytes())]
            )
        else:
            request = npb.ClassifyRequest(
                model_name=info.name, rows=[npb.TabularRow(values=x[0].tolist())]
            )
        return CLASSIFY, request.SerializeToString()
    if info.task == "sequence":
        seq = doc["sequence"]
        if seq.get("numeric_input"):
            steps = row[seq["numeric_input"]][0]  # (T, F)
            item = npb.SequenceInput(
                numeric=npb.NumericSteps(features=steps.shape[1], values=steps.ravel().tolist())
            )
        else:
            item = npb.SequenceInput(
                token_ids=npb.TokenIds(ids=row[seq["tokens_input"]][0].tolist())
            )
        sequence = npb.SequenceRequest(model_name=info.name, sequences=[item])
        return SEQUENCE, sequence.SerializeToString()
    raise ValueError(f"model {info.name!r} has no domain API mapping (task {info.task!r})")


@dataclass(frozen=True)
class Workload:
    """One model x API: the RPC path and a pool of pre-serialized requests (batch 1 each)."""

    model: str
    api: str  # v2 | domain
    method: str
    payloads: tuple[bytes, ...]
    rows_per_request: int = 1


def build_workload(info: ModelInfo, api: str, rows: list[Row], version: str = "") -> Workload:
    if api == "v2":
        payloads = tuple(v2_request(info, r, version) for r in rows)
        return Workload(info.name, api, V2_INFER, payloads)
    if api == "domain":
        encoded = [domain_request(info, r) for r in rows]
        return Workload(info.name, api, encoded[0][0], tuple(b for _, b in encoded))
    raise ValueError(f"unknown API {api!r} (v2 | domain)")


def check_response(method: str, data: bytes, rows: int = 1) -> str | None:
    """None when a response is well-formed for its request, else what is wrong."""
    if method == V2_INFER:
        r = pb.ModelInferResponse.FromString(data)
        if not r.outputs or len(r.raw_output_contents) != len(r.outputs):
            return f"{len(r.outputs)} outputs with {len(r.raw_output_contents)} raw contents"
        if any(o.shape[0] != rows for o in r.outputs):
            return f"output batch sizes {[o.shape[0] for o in r.outputs]}, expected {rows}"
        return None
    response_type = npb.ClassifyResponse if method == CLASSIFY else npb.SequenceResponse
    msg = response_type.FromString(data)
    if len(msg.results) != rows or not msg.results[0].scores:
        return f"{len(msg.results)} results, expected {rows} with scores"
    return None
