"""What the benchmark sends: valid batch-1 inputs per model, encoded for each API; and
the in-process floor, ONNX Runtime alone on the same inputs.

Inputs come from model.json (golden cases first, then seeded random rows that the
contract allows) or, for a foreign KServe v2 server, from ModelMetadata alone.
Requests are serialized once, here; the load generator sends the bytes as they are.
Protobuf stays in this module and in the response checks below.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from contract.model import ClassifySpec, ModelSpec, SequenceSpec, TensorSpec, read_spec, scan
from protos import grpc_service_pb2 as pb
from protos import nnserve_pb2 as npb

V2_INFER = "/inference.GRPCInferenceService/ModelInfer"
CLASSIFY = "/nnserve.v1.Predictor/Classify"
SEQUENCE = "/nnserve.v1.Predictor/Sequence"

Row = dict[str, np.ndarray]  # one request's inputs, batch axis of size 1


@dataclass(frozen=True)
class ModelInfo:
    """A model as the benchmark sees it: from model.json, or from ModelMetadata."""

    name: str
    task: str  # classify | sequence | unknown (metadata only)
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    spec: ModelSpec | None = field(default=None, compare=False)  # from model.json, if known

    @property
    def has_domain_api(self) -> bool:
        return self.task in ("classify", "sequence") and self.spec is not None

    @property
    def max_length(self) -> int:
        sequence = self.spec.sequence if self.spec else None
        return sequence.max_length if sequence else 0


def from_repository(repository: Path, name: str) -> ModelInfo:
    """The highest version of `name` in a model repository (the one the server serves)."""
    found = scan(repository).get(name)
    if not found:
        raise FileNotFoundError(f"no {name}/<version>/model.json under {repository}")
    spec = read_spec(repository, name, found[-1])
    return ModelInfo(name, spec.task, spec.inputs, spec.outputs, spec)


def from_metadata(metadata: pb.ModelMetadataResponse) -> ModelInfo:
    """A model of any KServe v2 server, known only by its tensor names, types and shapes."""

    def tensors(items: Any) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(t.name, t.datatype, tuple(int(d) for d in t.shape)) for t in items)

    return ModelInfo(metadata.name, "unknown", tensors(metadata.inputs), tensors(metadata.outputs))


# ---------------------------------------------------------------------- inputs


def sample_rows(info: ModelInfo, count: int, seq_len: int = 32, seed: int = 0) -> list[Row]:
    """`count` valid batch-1 inputs: golden rows first, then seeded random ones."""
    rng = np.random.default_rng(seed)
    spec = info.spec
    if spec is not None and spec.sequence is not None:
        return [_sequence_row(info, spec.sequence, seq_len, rng) for _ in range(count)]
    rows = _golden_rows(info)[:count]
    while len(rows) < count:
        rows.append(_random_row(info, rng, seq_len, template=rows[0] if rows else None))
    if spec is not None and spec.classify is not None and spec.classify.kind == "image":
        rows = [_quantize_image(spec.classify, r) for r in rows]
    return rows


def _golden_rows(info: ModelInfo) -> list[Row]:
    rows: list[Row] = []
    names = {t.name for t in info.inputs}
    for case in info.spec.goldens if info.spec else ():
        if set(case.inputs) != names:
            continue
        batch = min(len(a) for a in case.inputs.values())
        rows.extend({k: a[i : i + 1] for k, a in case.inputs.items()} for i in range(batch))
    return rows


def _random_row(
    info: ModelInfo, rng: np.random.Generator, seq_len: int, template: Row | None
) -> Row:
    row: Row = {}
    for t in info.inputs:
        dtype = t.dtype
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
        elif dtype == np.bool_:
            row[t.name] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            row[t.name] = rng.random(shape).astype(dtype)
    return row


def _sequence_row(
    info: ModelInfo, seq: SequenceSpec, seq_len: int, rng: np.random.Generator
) -> Row:
    length = max(1, min(seq_len, seq.max_length))
    reserved = {seq.pad_id, seq.unknown_id}
    ids = np.array([i for i in range(len(seq.vocabulary)) if i not in reserved], dtype=np.int64)
    row: Row = {}
    if seq.numeric_input:
        spec = next(t for t in info.inputs if t.name == seq.numeric_input)
        width = spec.shape[2] if len(spec.shape) > 2 and spec.shape[2] > 0 else 1
        row[seq.numeric_input] = rng.normal(size=(1, length, width)).astype(np.float32)
    else:
        row[seq.tokens_input] = rng.choice(ids, size=(1, length))  # (1, T)
    if seq.lengths_input:
        row[seq.lengths_input] = np.array([length], dtype=np.int64)
    return row


def _quantize_image(c: ClassifySpec, row: Row) -> Row:
    """Images as 8-bit pixels scaled to [0, pixel_max], so both APIs send the same values."""
    x = row[c.input]
    u8 = np.clip(np.rint(x * (255.0 / c.pixel_max)), 0, 255).astype(np.uint8)
    return {**row, c.input: u8.astype(np.float32) * np.float32(c.pixel_max / 255.0)}


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
    c = info.spec.classify if info.spec else None
    seq = info.spec.sequence if info.spec else None
    if c is not None:
        x = row[c.input]
        if c.image_shape is not None:
            u8 = np.rint(x[0] * (255.0 / c.pixel_max)).astype(np.uint8)
            request = npb.ClassifyRequest(
                model_name=info.name,
                images=[npb.Image(shape=list(c.image_shape), uint8_pixels=u8.tobytes())],
            )
        else:
            request = npb.ClassifyRequest(
                model_name=info.name, rows=[npb.TabularRow(values=x[0].tolist())]
            )
        return CLASSIFY, request.SerializeToString()
    if seq is not None:
        if seq.numeric_input:
            steps = row[seq.numeric_input][0]  # (T, F)
            item = npb.SequenceInput(
                numeric=npb.NumericSteps(features=steps.shape[1], values=steps.ravel().tolist())
            )
        else:
            item = npb.SequenceInput(token_ids=npb.TokenIds(ids=row[seq.tokens_input][0].tolist()))
        sequence = npb.SequenceRequest(model_name=info.name, sequences=[item])
        return SEQUENCE, sequence.SerializeToString()
    raise ValueError(f"model {info.name!r} has no domain API mapping (task {info.task!r})")


@dataclass(frozen=True)
class Workload:
    """One model x API: the RPC path and a pool of pre-serialized requests (batch 1 each)."""

    model: str
    api: str  # v2 | v2-stream | domain
    method: str  # the unary path (v2-stream: checked with one unary call, then streamed)
    payloads: tuple[bytes, ...]
    rows_per_request: int = 1
    stream_window: int = 0  # v2-stream: requests in flight per ModelStreamInfer stream

    def streams(self, concurrency: int) -> int:
        """ModelStreamInfer streams carrying `concurrency` requests (0: unary calls)."""
        if not self.stream_window:
            return 0
        return -(-concurrency // self.stream_window)


def build_workload(
    info: ModelInfo, api: str, rows: list[Row], version: str = "", stream_window: int = 4
) -> Workload:
    if api in ("v2", "v2-stream"):
        payloads = tuple(v2_request(info, r, version) for r in rows)
        window = stream_window if api == "v2-stream" else 0
        return Workload(info.name, api, V2_INFER, payloads, stream_window=window)
    if api == "domain":
        encoded = [domain_request(info, r) for r in rows]
        return Workload(info.name, api, encoded[0][0], tuple(b for _, b in encoded))
    raise ValueError(f"unknown API {api!r} (v2 | v2-stream | domain)")


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


# ---------------------------------------------------------------------- the floor


def open_model(info: ModelInfo, policy: str = "cpu_only", intra_op_threads: int = 1) -> Any:
    """A services.core.runtime.ModelSession: exactly the services' session options (threads,
    graph optimisation, no spinning, providers); only the device policy is chosen here."""
    from services.core.runtime import open_session
    from services.settings import DevicePolicy

    assert info.spec is not None, "the floor needs the model repository"
    return open_session(info.spec, DevicePolicy(policy), intra_op_threads)


def feeds_for(rows: list[Row], batch: int) -> Row:
    """`batch` rows (cycling through the pool) stacked into one feed."""
    return stack([rows[i % len(rows)] for i in range(batch)])


def time_calls(session: Any, feeds: Row, duration_s: float, min_calls: int = 50) -> np.ndarray:
    """Seconds per session.run call, for about duration_s (after a short warm-up)."""
    for _ in range(10):
        session.run(feeds)
    times: list[float] = []
    clock = time.perf_counter
    stop = clock() + duration_s
    while len(times) < min_calls or clock() < stop:
        t0 = clock()
        session.run(feeds)
        times.append(clock() - t0)
    return np.asarray(times)


def floor_point(session: Any, info: ModelInfo, rows: list[Row], batch: int,
                seconds: float) -> dict[str, Any]:  # fmt: skip
    """In-process ONNX Runtime at one batch size: per `run` call, and inferences/s."""
    times = time_calls(session, feeds_for(rows, batch), seconds)
    ms = times * 1e3
    return {
        "model": info.name, "batch": batch, "calls": len(times), "provider": session.provider,
        "p50_ms": round(float(np.percentile(ms, 50)), 4),
        "p99_ms": round(float(np.percentile(ms, 99)), 4), "mean_ms": round(float(ms.mean()), 4),
        "inferences_per_s": round(batch * len(times) / float(times.sum()), 1),
    }  # fmt: skip
