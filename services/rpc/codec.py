"""Protobuf <-> numpy at the edge: KServe v2 tensors and nnserve.v1 domain messages.

Raw tensor bytes become numpy views without a copy (np.frombuffer); everything the
codec needs from a model (feature order, vocabulary) is computed once per model spec.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from contract.model import NUMPY_TO_V2, ClassifySpec, ModelSpec
from protos import grpc_service_pb2 as pb
from protos import model_config_pb2 as mc
from protos import nnserve_pb2 as npb
from services.core.validation import check_shape
from services.errors import InvalidInput, shown
from services.settings import ServingConfig

Tensors = dict[str, np.ndarray]

# Typed-contents field for each v2 datatype (KServe v2 protocol).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}


# ---------------------------------------------------------------------- KServe v2


def decode_infer_inputs(request: pb.ModelInferRequest, spec: ModelSpec, max_rows: int) -> Tensors:
    """ModelInferRequest inputs -> named arrays of the model's dtypes and declared ranks.

    Shapes and sizes are checked before any array is built, so a request's memory is
    bounded by max_rows and the message size.
    """
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs"
        )
    tensors: Tensors = {}
    for i, tensor in enumerate(request.inputs):
        name = tensor.name
        try:
            tspec = spec.input(name)
        except KeyError:
            raise InvalidInput(
                f"model {spec.name!r} has no input {shown(name)}; inputs: "
                f"{[t.name for t in spec.inputs]}"
            ) from None
        if name in tensors:
            raise InvalidInput(f"input {shown(name)} is given twice")
        if tensor.datatype != tspec.datatype:
            raise InvalidInput(
                f"input {name!r} has datatype {shown(tensor.datatype)}; "
                f"model expects {tspec.datatype}"
            )
        shape = tuple(tensor.shape)
        if len(tspec.shape) == 1 and len(shape) == 2 and shape[1] == 1:
            shape = shape[:1]  # [B, 1] for a [B] input (Triton reshape)
        check_shape(tspec, shape)
        if shape[0] > max_rows:
            raise InvalidInput(
                f"input {name!r} has {shape[0]} rows; model {spec.name!r} takes at most "
                f"{max_rows} per request (max_batch_size)"
            )
        count = math.prod(shape)
        dtype = tspec.dtype
        if raw:
            buffer = raw[i]
            if len(buffer) != count * dtype.itemsize:
                raise InvalidInput(
                    f"input {name!r}: raw contents hold {len(buffer)} bytes; shape {list(shape)} "
                    f"of {tspec.datatype} needs {count * dtype.itemsize}"
                )
            array = np.frombuffer(buffer, dtype=dtype.newbyteorder("<"))
        else:
            field = CONTENTS_FIELD.get(tspec.datatype)
            if field is None:  # FP16 has no typed field in the protocol
                raise InvalidInput(f"input {name!r}: {tspec.datatype} must be sent as raw contents")
            values = getattr(tensor.contents, field)
            if len(values) != count:
                raise InvalidInput(
                    f"input {name!r}: {len(values)} values given; shape {list(shape)} needs {count}"
                )
            array = np.asarray(values, dtype=dtype)
        tensors[name] = array.reshape(shape)
    return tensors


def requested_outputs(request: pb.ModelInferRequest, spec: ModelSpec) -> list[str]:
    if not request.outputs:
        return [o.name for o in spec.outputs]
    names = [o.name for o in request.outputs]
    known = {o.name for o in spec.outputs}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InvalidInput(
            f"model {spec.name!r} has no output {shown(unknown[0])}; outputs: {sorted(known)}"
        )
    return names


def encode_infer_response(
    request: pb.ModelInferRequest, spec: ModelSpec, outputs: Tensors, names: list[str]
) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(
        model_name=spec.name, model_version=str(spec.version), id=request.id
    )
    raw = response.raw_output_contents
    for name in names:
        value = outputs[name]
        out = response.outputs.add()
        out.name = name
        out.datatype = NUMPY_TO_V2[value.dtype]
        out.shape.extend(value.shape)
        raw.append(value.tobytes())  # one copy into the response, C order
    return response


def model_metadata(spec: ModelSpec, versions: list[int]) -> pb.ModelMetadataResponse:
    response = pb.ModelMetadataResponse(
        name=spec.name, versions=[str(v) for v in versions], platform="onnxruntime_onnx"
    )
    for t in spec.inputs:
        shape = [-1, 1] if len(t.shape) == 1 else list(t.shape)  # as Triton shows dims [1]
        response.inputs.add(name=t.name, datatype=t.datatype, shape=shape)
    for t in spec.outputs:
        response.outputs.add(name=t.name, datatype=t.datatype, shape=list(t.shape))
    return response


def model_config(
    spec: ModelSpec,
    serving: ServingConfig,
    provider: str,
    placement: dict[str, dict[int, float]] | None = None,
    fallback_reason: str = "",
    parameters: dict[str, str] | None = None,
) -> mc.ModelConfig:
    """Triton-style config: dims exclude the batch axis since every model batches."""
    config = mc.ModelConfig(
        name=spec.name,
        platform="onnxruntime_onnx",
        backend="onnxruntime",
        max_batch_size=serving.max_batch_size,
        default_model_filename=spec.onnx_file.name,
    )
    for t in spec.inputs:
        if len(t.shape) == 1:  # batch axis only: Triton's way is dims [1] + reshape []
            item = config.input.add(name=t.name, data_type=_triton_type(t.datatype), dims=[1])
            item.reshape.SetInParent()
        else:
            config.input.add(
                name=t.name, data_type=_triton_type(t.datatype), dims=list(t.shape[1:])
            )
    for t in spec.outputs:
        config.output.add(name=t.name, data_type=_triton_type(t.datatype), dims=list(t.shape[1:]))
    config.dynamic_batching.max_queue_delay_microseconds = int(serving.max_queue_delay_s * 1e6)
    config.dynamic_batching.default_queue_policy.max_queue_size = serving.max_queue_size
    gpu = provider.startswith("CUDA")
    kind = mc.ModelInstanceGroup.KIND_GPU if gpu else mc.ModelInstanceGroup.KIND_CPU
    config.instance_group.add(name=spec.name, kind=kind, count=1)
    # The policy in force (settings.VersionPolicy): which versions are served.
    if serving.version_policy.latest is None:
        config.version_policy.all.SetInParent()
    else:
        config.version_policy.latest.num_versions = serving.version_policy.latest
    config.parameters["execution_provider"].string_value = provider
    config.parameters["family"].string_value = spec.family
    config.parameters["task"].string_value = spec.task
    config.parameters["device_policy"].string_value = serving.device_policy.value
    for key, value in (parameters or {}).items():
        config.parameters[key].string_value = value
    if fallback_reason:  # the policy allowed CUDA, but the model runs on the CPU
        config.parameters["execution_provider_fallback"].string_value = fallback_reason
    for name, timings in (placement or {}).items():
        config.parameters[f"placement_{name}"].string_value = ", ".join(
            f"batch {rows}: {seconds * 1e3:.3f} ms" for rows, seconds in sorted(timings.items())
        )
    return config


def _triton_type(datatype: str) -> int:
    return int(mc.DataType.Value(f"TYPE_{datatype}"))


# ---------------------------------------------------------------------- nnserve.v1


def _check_rows(count: int, spec: ModelSpec, max_rows: int) -> None:
    """Refuse a domain request of more rows than a batch holds before building arrays."""
    if count > max_rows:
        raise InvalidInput(
            f"request has {count} rows; model {spec.name!r} takes at most {max_rows} per "
            "request (max_batch_size)"
        )


def decode_classify(request: npb.ClassifyRequest, spec: ModelSpec, max_rows: int) -> Tensors:
    c = spec.classify
    if c is None:
        raise InvalidInput(f"model {spec.name!r} is a {spec.task} model; use Sequence")
    _check_rows(len(request.rows) + len(request.images), spec, max_rows)
    if request.rows and request.images:
        raise InvalidInput("give either rows or images, not both")
    if c.kind == "tabular":
        if request.images:
            raise InvalidInput(f"model {spec.name!r} takes tabular rows, not images")
        if not request.rows:
            raise InvalidInput("empty batch: no rows given")
        return {c.input: _tabular(request.rows, c.feature_index)}
    if request.rows:
        raise InvalidInput(f"model {spec.name!r} takes images, not tabular rows")
    if not request.images:
        raise InvalidInput("empty batch: no images given")
    return {c.input: _images(request.images, c)}


def _tabular(rows: Sequence[npb.TabularRow], index: dict[str, int]) -> np.ndarray:
    width = len(index)
    batch = np.empty((len(rows), width), dtype=np.float32)  # (B, F)
    for r, row in enumerate(rows):
        if row.named:
            if row.values:
                raise InvalidInput(f"row {r}: give features by name or by position, not both")
            unknown = sorted(set(row.named) - set(index))
            if unknown:
                raise InvalidInput(
                    f"row {r}: unknown feature {shown(unknown[0])}; known: {list(index)}"
                )
            missing = [n for n in index if n not in row.named]
            if missing:
                raise InvalidInput(f"row {r}: missing features {missing}")
            for name, value in row.named.items():
                batch[r, index[name]] = value
        else:
            if len(row.values) != width:
                raise InvalidInput(
                    f"row {r}: {len(row.values)} values; model takes {width} features {list(index)}"
                )
            batch[r] = row.values
    if not np.isfinite(batch).all():
        raise InvalidInput("features contain NaN or infinity")
    return batch


def _images(images: Sequence[npb.Image], c: ClassifySpec) -> np.ndarray:
    assert c.image_shape is not None
    channels, height, width = c.image_shape
    batch = np.empty((len(images), channels, height, width), dtype=np.float32)  # (B, C, H, W)
    scale = np.float32(c.pixel_max / 255.0)
    for i, image in enumerate(images):
        shape = tuple(image.shape)
        if shape not in ((height, width), (channels, height, width)):
            raise InvalidInput(
                f"image {i} has shape {shown(list(shape))}; model expects [{height}, {width}] "
                f"or [{channels}, {height}, {width}]"
            )
        count = channels * height * width
        kind = image.WhichOneof("pixels")
        if kind == "uint8_pixels":
            if len(image.uint8_pixels) != count:
                raise InvalidInput(f"image {i}: {len(image.uint8_pixels)} bytes, needs {count}")
            pixels = np.frombuffer(image.uint8_pixels, dtype=np.uint8) * scale
        elif kind == "float_pixels":
            values = image.float_pixels.values
            if len(values) != count:
                raise InvalidInput(f"image {i}: {len(values)} floats, needs {count}")
            pixels = np.asarray(values, dtype=np.float32)
            if not np.isfinite(pixels).all():
                raise InvalidInput(f"image {i} contains NaN or infinity")
            if pixels.min() < 0 or pixels.max() > c.pixel_max:
                raise InvalidInput(f"image {i}: float pixels must lie in [0, {c.pixel_max}]")
        else:
            raise InvalidInput(f"image {i} has no pixels")
        batch[i] = pixels.reshape(channels, height, width)
    return batch


def encode_classify(
    request: npb.ClassifyRequest, spec: ModelSpec, outputs: Tensors
) -> npb.ClassifyResponse:
    assert spec.classify is not None
    scores = outputs[spec.classify.scores_output]  # (B, C)
    labels = spec.labels
    top_k = min(max(1, request.top_k), len(labels))
    order = np.argsort(-scores, axis=1, kind="stable")[:, :top_k]
    response = npb.ClassifyResponse(
        model_name=spec.name, model_version=str(spec.version), labels=labels
    )
    for row, best in zip(scores.tolist(), order.tolist(), strict=True):
        result = response.results.add(label=labels[best[0]], index=best[0], scores=row)
        for k in best:
            result.top_k.add(label=labels[k], index=k, score=row[k])
    return response


def decode_sequence(request: npb.SequenceRequest, spec: ModelSpec, max_rows: int) -> Tensors:
    seq = spec.sequence
    if seq is None:
        raise InvalidInput(f"model {spec.name!r} is a {spec.task} model; use Classify")
    _check_rows(len(request.sequences), spec, max_rows)
    if not request.sequences:
        raise InvalidInput("empty batch: no sequences given")
    rows: list[np.ndarray] = []
    numeric = False
    for i, item in enumerate(request.sequences):
        kind = item.WhichOneof("steps")
        ids: np.ndarray
        if kind == "token_ids":
            ids = np.asarray(item.token_ids.ids, dtype=np.int64)
        elif kind == "tokens":
            index = seq.token_index
            unknown = [t for t in item.tokens.tokens if t not in index]
            if unknown:
                raise InvalidInput(
                    f"sequence {i}: unknown token {shown(unknown[0])}; "
                    "DescribeModel lists the vocabulary"
                )
            ids = np.fromiter((index[t] for t in item.tokens.tokens), dtype=np.int64)
        elif kind == "numeric":
            if not seq.numeric_input:
                raise InvalidInput(f"model {spec.name!r} takes tokens, not numeric steps")
            numeric = True
            width = item.numeric.features or 1
            values = np.asarray(item.numeric.values, dtype=np.float32)
            if values.size % width:
                raise InvalidInput(f"sequence {i}: {values.size} values are not steps of {width}")
            ids = values.reshape(-1, width)  # (T, F)
        else:
            raise InvalidInput(f"sequence {i} is empty")
        if len(ids) == 0:
            raise InvalidInput(f"sequence {i} is empty (length 0)")
        if len(ids) > seq.max_length:
            raise InvalidInput(
                f"sequence {i} has length {len(ids)}; the model's max length is {seq.max_length}"
            )
        rows.append(ids)
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    longest = int(lengths.max())
    if numeric:
        assert seq.numeric_input
        width = rows[0].shape[1]
        steps = np.zeros((len(rows), longest, width), dtype=np.float32)  # (B, T, F)
        for r, row in enumerate(rows):
            steps[r, : len(row)] = row
        tensors: Tensors = {seq.numeric_input: steps}
    else:
        tokens = np.full((len(rows), longest), seq.pad_id, dtype=np.int64)  # (B, T)
        for r, row in enumerate(rows):
            tokens[r, : len(row)] = row
        tensors = {seq.tokens_input: tokens}
    if seq.lengths_input:
        tensors[seq.lengths_input] = lengths
    return tensors


# Attention explanations (SequenceRequest.explain): defaults and bounds.
EXPLAIN_TOP_K = 3
EXPLAIN_TOP_K_MAX = 16
EXPLAIN_THRESHOLD = 0.5


@dataclass(frozen=True)
class ExplainOptions:
    top_k: int
    threshold: float


def explain_options(request: npb.SequenceRequest, spec: ModelSpec) -> ExplainOptions | None:
    """The request's explanation options (None: no explanation); InvalidInput when bad."""
    if not request.explain:
        if request.explain_top_k or request.explain_threshold:
            raise InvalidInput("explain_top_k and explain_threshold need explain: true")
        return None
    if spec.explain is None:
        raise InvalidInput(
            f"model {spec.name!r} version {spec.version} has no explain graph "
            "(attention explanations need a model exported with one, e.g. transformer)"
        )
    if any(item.WhichOneof("steps") == "numeric" for item in request.sequences):
        raise InvalidInput("explanations name events: send tokens or token_ids, not numeric")
    top_k = request.explain_top_k or EXPLAIN_TOP_K
    if top_k > EXPLAIN_TOP_K_MAX:
        raise InvalidInput(f"explain_top_k is {top_k}; at most {EXPLAIN_TOP_K_MAX}")
    threshold = request.explain_threshold or EXPLAIN_THRESHOLD
    if not 0.0 < threshold <= 1.0:  # NaN fails too
        raise InvalidInput("explain_threshold must lie in (0, 1] (0: the default 0.5)")
    return ExplainOptions(top_k, float(threshold))


def _explain_row(
    result: npb.SequenceResult,
    token_ids: np.ndarray,  # (T,) this row's tokens
    scores: np.ndarray,  # (T,) position scores
    attention: np.ndarray,  # (T, T) this row's attention, query x key
    vocabulary: Sequence[str],
    options: ExplainOptions,
) -> None:
    for p in np.flatnonzero(scores >= options.threshold).tolist():
        row = attention[p]
        # Highest weight first (ties: earlier position); zero weight is no attention.
        order = np.argsort(-row, kind="stable")[: options.top_k]
        explanation = result.explanations.add(
            position=p, token=vocabulary[int(token_ids[p])], score=float(scores[p])
        )
        for j in order.tolist():
            if row[j] > 0.0:
                explanation.attended.add(
                    position=j, token=vocabulary[int(token_ids[j])], weight=float(row[j])
                )


def encode_sequence(
    request: npb.SequenceRequest,
    spec: ModelSpec,
    inputs: Tensors,
    outputs: Tensors,
    explain: ExplainOptions | None = None,
) -> npb.SequenceResponse:
    seq = spec.sequence
    assert seq is not None
    scores = outputs[seq.sequence_scores_output]  # (B, labels)
    positions = outputs.get(seq.position_scores_output) if seq.position_scores_output else None
    lengths = (
        inputs[seq.lengths_input].tolist()
        if seq.lengths_input
        else [inputs[seq.tokens_input].shape[1]] * len(scores)
    )
    labels = spec.labels
    response = npb.SequenceResponse(
        model_name=spec.name, model_version=str(spec.version), labels=labels
    )
    best = scores.argmax(axis=1).tolist()
    for r, row in enumerate(scores.tolist()):
        result = response.results.add(
            label=labels[best[r]], index=best[r], scores=row, length=lengths[r]
        )
        if request.per_position and positions is not None:
            result.position_scores.extend(positions[r, : lengths[r]].tolist())
        if explain is not None and spec.explain is not None and positions is not None:
            n = lengths[r]
            _explain_row(
                result,
                inputs[seq.tokens_input][r, :n],
                positions[r, :n],
                outputs[spec.explain.attention_output][r, :n, :n],
                seq.vocabulary,
                explain,
            )
    return response
