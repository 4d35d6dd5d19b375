"""JSON <-> numpy for the KServe v2 REST binding (Open Inference Protocol over HTTP).

An inference request body is one JSON object, optionally followed by raw tensor bytes
(Triton's binary tensor data extension: the JSON part's length in the
Inference-Header-Content-Length header, each binary input's byte count in its
`parameters.binary_data_size`). Input `data` is row-major, flat or nested as the shape.

Everything a client sends is bounded before it is used: the body by the server (its size
before reading), JSON nesting by the parser's recursion guard and then by the tensor's
rank, counts (inputs, outputs, parameters, dimensions) and strings (names, datatypes, id)
here, and each tensor's element count by its shape, checked against the model before any
array is built. Error messages quote client strings only through `shown` (bounded).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from contract.model import NUMPY_TO_V2, ModelSpec, TensorSpec
from services.core.validation import check_shape
from services.errors import InvalidInput, shown

Tensors = dict[str, np.ndarray]

HEADER_LENGTH = "inference-header-content-length"  # Triton's binary extension header
MAX_TENSORS = 64  # inputs, or outputs asked for, in one request
MAX_PARAMETERS = 64  # entries of one parameters object
MAX_RANK = 8
MAX_DIM = 2**31 - 1
MAX_STRING_CHARS = 256  # tensor names, datatypes, the request id
MAX_TIMEOUT_US = 3600 * 1_000_000  # parameters.timeout (Triton's, microseconds): 1 hour


@dataclass(frozen=True, slots=True)
class InputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: list[Any] | None  # JSON data, or None with binary
    binary: memoryview | None


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    name: str
    binary: bool | None  # None: the request's binary_data_output decides


@dataclass(frozen=True, slots=True)
class InferRequest:
    id: str | None
    inputs: tuple[InputTensor, ...]
    outputs: tuple[RequestedOutput, ...]  # empty: every output of the model
    binary_output: bool  # parameters.binary_data_output: the default for outputs
    timeout_s: float | None  # parameters.timeout, the request's deadline from arrival


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _object(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a JSON object")
    return value


def _string(value: object, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_STRING_CHARS:
        raise InvalidInput(f"{what} must be a string of 1 to {MAX_STRING_CHARS} characters")
    return value


def parameters(item: dict[str, Any], what: str) -> dict[str, Any]:
    """The item's "parameters" object ({} when absent), bounded in size."""
    params = item.get("parameters", {})
    _object(params, f"{what} parameters")
    if len(params) > MAX_PARAMETERS:
        raise InvalidInput(f"{what} has {len(params)} parameters; at most {MAX_PARAMETERS}")
    return params


def flag(params: dict[str, Any], key: str, what: str) -> bool | None:
    """A boolean parameter (None when absent)."""
    value = params.get(key)
    if value is not None and not isinstance(value, bool):
        raise InvalidInput(f"{what} parameter {key!r} must be true or false")
    return value


def _count(value: object, what: str, limit: int) -> int:
    # bool is an int in Python, not in JSON
    if type(value) is not int or not 0 <= value <= limit:
        raise InvalidInput(f"{what} must be an integer from 0 to {limit}")
    return value


def _list(value: object, what: str, limit: int) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidInput(f"{what} must be a JSON array")
    if len(value) > limit:
        raise InvalidInput(f"{what} has {len(value)} entries; at most {limit}")
    return value


def _load_json(body: bytes) -> Any:
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except RecursionError:
        raise InvalidInput("request JSON is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as err:
        # The parser's message names a position, never the body's text.
        raise InvalidInput(f"request body is not valid JSON: {str(err)[:120]}") from None


def parse_object(body: bytes) -> dict[str, Any]:
    """A small request body (repository requests): a JSON object, {} when empty."""
    if not body.strip():
        return {}
    doc = _object(_load_json(body), "request body")
    if len(doc) > MAX_PARAMETERS:
        raise InvalidInput(f"request body has {len(doc)} fields; at most {MAX_PARAMETERS}")
    return doc


def parse_infer_request(body: bytes, header_length: str | None) -> InferRequest:
    """The request's JSON (and binary tensor data), checked for form; not yet for a model."""
    json_end = len(body)
    if header_length is not None:
        text = header_length.strip()
        if not (text.isascii() and text.isdigit() and len(text) <= 19) or int(text) > len(body):
            raise InvalidInput(
                f"{HEADER_LENGTH} must be the byte length of the JSON part, at most the body's"
            )
        json_end = int(text)
    doc = _object(_load_json(body if json_end == len(body) else body[:json_end]), "request body")
    params = parameters(doc, "request")
    request_id = doc.get("id")
    if request_id is not None and (
        not isinstance(request_id, str) or len(request_id) > MAX_STRING_CHARS
    ):
        raise InvalidInput(f"id must be a string of at most {MAX_STRING_CHARS} characters")
    timeout_s = None
    if params.get("timeout") is not None:
        timeout_us = _count(params["timeout"], "parameter 'timeout' (microseconds)", MAX_TIMEOUT_US)
        timeout_s = timeout_us / 1e6 if timeout_us else None  # 0: no deadline (Triton's)
    binary_output = bool(flag(params, "binary_data_output", "request"))

    raw = memoryview(body)[json_end:]
    offset = 0
    inputs = []
    for i, item in enumerate(_list(doc.get("inputs"), "inputs", MAX_TENSORS)):
        what = f"inputs[{i}]"
        item = _object(item, what)
        name = _string(item.get("name"), f"{what} name")
        datatype = _string(item.get("datatype"), f"{what} datatype")
        dims = _list(item.get("shape"), f"{what} shape", MAX_RANK)
        shape = tuple(_count(d, f"{what} shape entries", MAX_DIM) for d in dims)
        size = parameters(item, what).get("binary_data_size")
        if size is None:
            if "data" not in item:
                raise InvalidInput(f"input {shown(name)} has no data (and no binary_data_size)")
            data = _list(item["data"], f"input {shown(name)} data", len(body))
            inputs.append(InputTensor(name, datatype, shape, data, None))
            continue
        size = _count(size, f"input {shown(name)} binary_data_size", len(raw) - offset)
        if "data" in item:
            raise InvalidInput(f"input {shown(name)} has both data and binary_data_size")
        inputs.append(InputTensor(name, datatype, shape, None, raw[offset : offset + size]))
        offset += size
    if offset != len(raw):
        raise InvalidInput(
            f"the body has {len(raw)} bytes after the JSON; binary_data_size adds up to {offset}"
        )
    outputs = []
    for i, item in enumerate(_list(doc.get("outputs", []), "outputs", MAX_TENSORS)):
        what = f"outputs[{i}]"
        item = _object(item, what)
        name = _string(item.get("name"), f"{what} name")
        out_params = parameters(item, what)
        if out_params.get("classification"):
            raise InvalidInput("the classification extension is not supported")
        outputs.append(RequestedOutput(name, flag(out_params, "binary_data", what)))
    return InferRequest(request_id, tuple(inputs), tuple(outputs), binary_output, timeout_s)


def _spec_of(spec: ModelSpec, name: str) -> TensorSpec:
    try:
        return spec.input(name)
    except KeyError:
        raise InvalidInput(
            f"model {spec.name!r} has no input {shown(name)}; inputs: "
            f"{[t.name for t in spec.inputs]}"
        ) from None


def _from_json(tensor: InputTensor, tspec: TensorSpec, count: int) -> np.ndarray:
    """A tensor's JSON data as an array of the model's dtype in the shape as sent."""
    data, shape, name = tensor.data, tensor.shape, tspec.name
    assert data is not None
    nested = bool(data) and isinstance(data[0], list)
    expected = shape[0] if nested and len(shape) > 1 else count
    if len(data) != expected:
        raise InvalidInput(
            f"input {name!r}: {len(data)} values at the top level; shape {list(shape)} "
            f"needs {expected}{' rows' if nested else ''}"
        )
    try:
        array = np.array(data)  # nesting deeper than numpy's 64 dimensions fails here too
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise InvalidInput(
            f"input {name!r}: data must be numbers, flat or nested exactly as the shape"
        ) from None
    if array.shape != (shape if nested else (count,)):
        raise InvalidInput(
            f"input {name!r}: nested data has shape {list(array.shape)}; declared {list(shape)}"
        )
    dtype = tspec.dtype
    kind = array.dtype.kind
    if not count:
        return array.astype(dtype).reshape(shape)
    if dtype.kind == "b":
        ok = kind == "b"
    elif dtype.kind in "iu":  # integers, in range: never a silent truncation or wrap
        info = np.iinfo(dtype)
        ok = kind in "iu" and info.min <= int(array.min()) and int(array.max()) <= info.max
    else:  # floats: integers too (JSON writes 1.0 as 1), within the type's range
        ok = kind in "iuf" and float(np.abs(array).max()) <= float(np.finfo(dtype).max)
    if not ok:
        raise InvalidInput(
            f"input {name!r}: data does not fit {tspec.datatype} (values of the wrong type "
            "or out of range)"
        )
    return array.astype(dtype, copy=False).reshape(shape)


def decode_inputs(request: InferRequest, spec: ModelSpec, max_rows: int) -> Tensors:
    """The request's inputs as arrays of the model's dtypes and declared ranks."""
    tensors: Tensors = {}
    for tensor in request.inputs:
        tspec = _spec_of(spec, tensor.name)
        name = tspec.name
        if name in tensors:
            raise InvalidInput(f"input {name!r} is given twice")
        if tensor.datatype != tspec.datatype:
            raise InvalidInput(
                f"input {name!r} has datatype {shown(tensor.datatype)}; "
                f"model expects {tspec.datatype}"
            )
        shape = tensor.shape
        if len(tspec.shape) == 1 and len(shape) == 2 and shape[1] == 1:
            shape = shape[:1]  # [B, 1] for a [B] input (Triton reshape), as over gRPC
        check_shape(tspec, shape)
        if shape[0] > max_rows:
            raise InvalidInput(
                f"input {name!r} has {shape[0]} rows; model {spec.name!r} takes at most "
                f"{max_rows} per request (max_batch_size)"
            )
        count = math.prod(shape)
        dtype = tspec.dtype
        if tensor.binary is not None:
            if len(tensor.binary) != count * dtype.itemsize:
                raise InvalidInput(
                    f"input {name!r}: binary data holds {len(tensor.binary)} bytes; shape "
                    f"{list(shape)} of {tspec.datatype} needs {count * dtype.itemsize}"
                )
            array = np.frombuffer(tensor.binary, dtype=dtype.newbyteorder("<"))
        else:
            array = _from_json(tensor, tspec, count)
        tensors[name] = array.reshape(shape)
    return tensors


def requested_outputs(request: InferRequest, spec: ModelSpec) -> list[tuple[str, bool]]:
    """(output name, send as binary) in the order the response lists them."""
    if not request.outputs:
        return [(o.name, request.binary_output) for o in spec.outputs]
    known = {o.name for o in spec.outputs}
    wanted = []
    for out in request.outputs:
        if out.name not in known:
            raise InvalidInput(
                f"model {spec.name!r} has no output {shown(out.name)}; outputs: {sorted(known)}"
            )
        wanted.append((out.name, request.binary_output if out.binary is None else out.binary))
    return wanted


def encode_infer_response(
    request_id: str | None, spec: ModelSpec, outputs: Tensors, wanted: list[tuple[str, bool]]
) -> tuple[bytes, int | None]:
    """The response body, and the JSON part's length when binary tensors follow it."""
    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, binary in wanted:
        value = outputs[name]
        entry: dict[str, Any] = {
            "name": name,
            "datatype": NUMPY_TO_V2[value.dtype],
            "shape": list(value.shape),
        }
        if binary:
            raw = np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = value.ravel().tolist()  # row-major, flat (as Triton answers)
        entries.append(entry)
    doc: dict[str, Any] = {"model_name": spec.name, "model_version": str(spec.version)}
    if request_id is not None:
        doc["id"] = request_id
    doc["outputs"] = entries
    head = json.dumps(doc, separators=(",", ":")).encode()
    if not chunks:
        return head, None
    return b"".join([head, *chunks]), len(head)


def model_metadata(spec: ModelSpec, versions: list[int]) -> dict[str, Any]:
    """The model metadata response, as ModelMetadata answers over gRPC."""
    return {
        "name": spec.name,
        "versions": [str(v) for v in versions],
        "platform": "onnxruntime_onnx",
        "inputs": [
            # A batch-only input shows as [-1, 1], as Triton shows dims [1] (and gRPC does).
            {
                "name": t.name,
                "datatype": t.datatype,
                "shape": [-1, 1] if len(t.shape) == 1 else list(t.shape),
            }
            for t in spec.inputs
        ],
        "outputs": [
            {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in spec.outputs
        ],
    }
