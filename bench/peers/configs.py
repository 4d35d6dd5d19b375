"""The files each peer serves the same model.onnx from, generated from model.json.

Triton: a model repository <root>/<model>/config.pbtxt (Python backend, dynamic batching)
and <root>/<model>/1/{model.py, model.onnx}. MLServer: a folder with settings.json
(server: host, ports) and <model>/model-settings.json (runtime class, adaptive
batching, tensor metadata) beside the runtime module and model.onnx.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.workload import ModelInfo, Row
from contract.model import ServingDefaults, TensorSpec

HERE = Path(__file__).resolve().parent
TRITON_MODEL_PY = HERE / "triton_model.py"
MLSERVER_RUNTIME_PY = HERE / "mlserver_runtime.py"
MLSERVER_RUNTIME_CLASS = "mlserver_runtime.OnnxModel"


@dataclass(frozen=True)
class Batching:
    """The same batching bounds for every server: nnserve's from model.json."""

    max_batch_size: int
    max_queue_delay_ms: float

    @classmethod
    def of(cls, info: ModelInfo, queue_delay_ms: float | None = None) -> Batching:
        """model.json's bounds; queue_delay_ms overrides the delay. Triton's and MLServer's
        batchers wait up to the delay for a batch to fill even when the server is idle
        (nnserve's does not), so a delay costs them latency at low concurrency."""
        serving = info.spec.serving if info.spec else ServingDefaults(max_queue_delay_ms=2.0)
        delay = serving.max_queue_delay_ms if queue_delay_ms is None else queue_delay_ms
        return cls(serving.max_batch_size, float(delay))


def _triton_tensor(t: TensorSpec) -> str:
    dims = list(t.shape[1:])  # without the batch axis (max_batch_size > 0)
    extra = ""
    if not dims:  # a batch-only input, e.g. lengths [B]: Triton's way is dims [1], reshape []
        dims, extra = [1], " reshape: { shape: [ ] }"
    return (
        f'{{ name: "{t.name}" data_type: TYPE_{t.datatype} '
        f"dims: [ {', '.join(str(d) for d in dims)} ]{extra} }}"
    )


def triton_rows(info: ModelInfo, rows: list[Row]) -> list[Row]:
    """The request rows as Triton's config declares them: a batch-only input ([B], e.g.
    lengths) goes as [B, 1] (dims [1], reshape []); other inputs unchanged."""
    flat = {t.name for t in info.inputs if not t.shape[1:]}
    return [{k: v.reshape(-1, 1) if k in flat else v for k, v in row.items()} for row in rows]


def triton_config(info: ModelInfo, batching: Batching) -> str:
    """config.pbtxt (protobuf text of inference.ModelConfig): Python backend, one CPU
    instance, dynamic batching with nnserve's max batch and queue delay."""
    inputs = ",\n  ".join(_triton_tensor(t) for t in info.inputs)
    outputs = ",\n  ".join(_triton_tensor(t) for t in info.outputs)
    delay_us = int(batching.max_queue_delay_ms * 1000)
    return (
        f'name: "{info.name}"\n'
        'backend: "python"\n'
        f"max_batch_size: {batching.max_batch_size}\n"
        f"input [\n  {inputs}\n]\n"
        f"output [\n  {outputs}\n]\n"
        f"dynamic_batching {{ max_queue_delay_microseconds: {delay_us} }}\n"
        "instance_group [ { kind: KIND_CPU count: 1 } ]\n"
    )


def write_triton_repository(root: Path, info: ModelInfo, batching: Batching) -> Path:
    """<root>/<model>/config.pbtxt and 1/{model.py, model.onnx}; returns root."""
    assert info.spec is not None, "the model's repository directory is needed"
    model = root / info.name
    version = model / "1"
    version.mkdir(parents=True, exist_ok=True)
    (model / "config.pbtxt").write_text(triton_config(info, batching))
    shutil.copyfile(TRITON_MODEL_PY, version / "model.py")
    shutil.copyfile(info.spec.onnx_file, version / "model.onnx")
    return root


def mlserver_settings(
    host: str, grpc_port: int, http_port: int, metrics_port: int
) -> dict[str, Any]:
    return {
        "host": host,
        "grpc_port": grpc_port,
        "http_port": http_port,
        "metrics_port": metrics_port,
        "debug": False,
    }


def mlserver_model_settings(info: ModelInfo, batching: Batching) -> dict[str, Any]:
    """model-settings.json: our runtime class, adaptive batching on (MLServer's
    max_batch_time is in seconds), and the tensors (ModelMetadata answers from them,
    which perf_analyzer needs)."""

    def tensor(t: TensorSpec) -> dict[str, Any]:
        return {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}

    return {
        "name": info.name,
        "implementation": MLSERVER_RUNTIME_CLASS,
        "max_batch_size": batching.max_batch_size,
        "max_batch_time": batching.max_queue_delay_ms / 1000,
        "inputs": [tensor(t) for t in info.inputs],
        "outputs": [tensor(t) for t in info.outputs],
        "parameters": {"uri": "./model.onnx", "version": "1"},
    }


def write_mlserver_folder(
    root: Path, infos: list[ModelInfo], host: str, grpc_port: int, http_port: int,
    metrics_port: int, queue_delay_ms: float | None = None,
) -> Path:  # fmt: skip
    """settings.json, the runtime module and one <model>/ folder per model; returns root."""
    root.mkdir(parents=True, exist_ok=True)
    settings = mlserver_settings(host, grpc_port, http_port, metrics_port)
    (root / "settings.json").write_text(json.dumps(settings, indent=2))
    shutil.copyfile(MLSERVER_RUNTIME_PY, root / MLSERVER_RUNTIME_PY.name)
    for info in infos:
        assert info.spec is not None, "the model's repository directory is needed"
        folder = root / info.name
        folder.mkdir(exist_ok=True)
        doc = mlserver_model_settings(info, Batching.of(info, queue_delay_ms))
        (folder / "model-settings.json").write_text(json.dumps(doc, indent=2))
        shutil.copyfile(info.spec.onnx_file, folder / "model.onnx")
    return root
