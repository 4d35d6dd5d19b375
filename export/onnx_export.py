"""torch.nn.Module -> ONNX ModelProto with named, dynamic inputs and outputs."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator

import onnx
import torch
from torch import nn

from contract.model import Signature, TensorSpec
from export.errors import ExportError


def _onnx_dtype(t: TensorSpec) -> int:
    return int(onnx.helper.np_dtype_to_tensor_dtype(t.dtype))


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The dynamo exporter prints progress and optional-dependency notices; keep logs clean."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


# Dynamic axes the signature does not bound (the batch) are bounded here.
MAX_DYNAMIC = 4096


def _dynamic_shapes(spec: Signature) -> dict[str, dict[int, object]]:
    dims: dict[str, object] = {}
    for t in spec.inputs:
        for name in t.axis_names.values():
            dims[name] = torch.export.Dim(name, min=1, max=spec.axis_max.get(name, MAX_DYNAMIC))
    return {t.name: {axis: dims[n] for axis, n in t.axis_names.items()} for t in spec.inputs}


def _set_shape(value: onnx.ValueInfoProto, t: TensorSpec) -> None:
    tensor = value.type.tensor_type
    tensor.elem_type = _onnx_dtype(t)
    tensor.shape.Clear()
    for axis, size in enumerate(t.shape):
        dim = tensor.shape.dim.add()
        if size == -1:
            dim.dim_param = t.axis_names[axis]
        else:
            dim.dim_value = size


def pin_io(model: onnx.ModelProto, spec: Signature) -> onnx.ModelProto:
    """Make graph inputs/outputs carry exactly the contract's names, dtypes and axes.

    The dynamo exporter can leave a traced size on a dynamic axis in the *declared*
    output shapes and intermediate value_info (seen with nn.LSTM: position_scores came
    out as [batch, 16]); the computation itself is dynamic. Declared shapes are hints,
    so we drop the intermediate ones, pin inputs/outputs to the contract and let ONNX
    shape inference recompute the rest.
    """
    graph = model.graph
    names_in = [v.name for v in graph.input]
    names_out = [v.name for v in graph.output]
    if names_in != [t.name for t in spec.inputs] or names_out != [t.name for t in spec.outputs]:
        raise ExportError(
            f"exported graph has inputs {names_in} / outputs {names_out}, expected "
            f"{[t.name for t in spec.inputs]} / {[t.name for t in spec.outputs]}"
        )
    for value, t in zip(graph.input, spec.inputs, strict=True):
        if value.type.tensor_type.elem_type != _onnx_dtype(t):
            raise ExportError(f"input {t.name} has the wrong element type in the graph")
        _set_shape(value, t)
    for value, t in zip(graph.output, spec.outputs, strict=True):
        if value.type.tensor_type.elem_type != _onnx_dtype(t):
            raise ExportError(f"output {t.name} has the wrong element type in the graph")
        _set_shape(value, t)
    del graph.value_info[:]
    return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)


def to_onnx(
    model: nn.Module,
    example: tuple[torch.Tensor, ...],
    spec: Signature,
    *,
    opset: int,
    doc: str = "",
) -> onnx.ModelProto:
    """Export with torch.onnx (dynamo), pin IO to the contract and run onnx.checker."""
    model.eval()
    try:
        with _quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(
                model,
                example,
                input_names=[t.name for t in spec.inputs],
                output_names=[t.name for t in spec.outputs],
                opset_version=opset,
                dynamo=True,
                dynamic_shapes=_dynamic_shapes(spec),
                verbose=False,
            )
    except Exception as exc:  # the exporter raises many internal types
        raise ExportError(f"torch.onnx.export failed: {type(exc).__name__}: {exc}") from exc
    if program is None:  # pragma: no cover - dynamo=True always returns a program
        raise ExportError("torch.onnx.export returned no program")
    proto = pin_io(program.model_proto, spec)
    proto.doc_string = doc
    proto.producer_name = "nnserve.export"
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"onnx.checker rejected the graph: {exc}") from exc
    return proto
