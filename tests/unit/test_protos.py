"""The checked-in protobuf code: up to date, complete, and wire-compatible with Triton.

tritonclient's generated modules and ours both define package ``inference`` in the
default descriptor pool, so they cannot be imported into one process (see
docs/protocol.md). Everything that needs tritonclient runs in a subprocess that
imports only tritonclient and exchanges serialized bytes with this process.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from google.protobuf import descriptor_pb2

from protos import grpc_service_pb2, model_config_pb2, nnserve_pb2
from tests.support.paths import ROOT


def _python(code: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


# ---------------------------------------------------------------- generation


def test_regenerating_changes_nothing() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "protos.generate", "--check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_generated_modules_import_as_package() -> None:
    for name in ("grpc_service", "model_config", "nnserve"):
        assert (ROOT / "protos" / f"{name}_pb2.pyi").exists()
    from protos import grpc_service_pb2_grpc, nnserve_pb2_grpc

    assert hasattr(grpc_service_pb2_grpc, "GRPCInferenceServiceServicer")
    assert hasattr(nnserve_pb2_grpc, "PredictorStub")
    assert grpc_service_pb2.DESCRIPTOR.name == "protos/grpc_service.proto"
    assert list(grpc_service_pb2.DESCRIPTOR.dependencies) == [model_config_pb2.DESCRIPTOR]


# ---------------------------------------------------------------- services

# (rpc, request, response, client streaming, server streaming)
REQUIRED_INFERENCE_RPCS = [
    ("ServerLive", "ServerLiveRequest", "ServerLiveResponse", False, False),
    ("ServerReady", "ServerReadyRequest", "ServerReadyResponse", False, False),
    ("ModelReady", "ModelReadyRequest", "ModelReadyResponse", False, False),
    ("ServerMetadata", "ServerMetadataRequest", "ServerMetadataResponse", False, False),
    ("ModelMetadata", "ModelMetadataRequest", "ModelMetadataResponse", False, False),
    ("ModelInfer", "ModelInferRequest", "ModelInferResponse", False, False),
    ("ModelStreamInfer", "ModelInferRequest", "ModelStreamInferResponse", True, True),
    ("ModelConfig", "ModelConfigRequest", "ModelConfigResponse", False, False),
    ("ModelStatistics", "ModelStatisticsRequest", "ModelStatisticsResponse", False, False),
    ("RepositoryIndex", "RepositoryIndexRequest", "RepositoryIndexResponse", False, False),
    (
        "RepositoryModelLoad",
        "RepositoryModelLoadRequest",
        "RepositoryModelLoadResponse",
        False,
        False,
    ),
    (
        "RepositoryModelUnload",
        "RepositoryModelUnloadRequest",
        "RepositoryModelUnloadResponse",
        False,
        False,
    ),
]


@pytest.mark.parametrize(
    ("rpc", "request_type", "response_type", "cstream", "sstream"), REQUIRED_INFERENCE_RPCS
)
def test_inference_service_has_rpc(
    rpc: str, request_type: str, response_type: str, cstream: bool, sstream: bool
) -> None:
    service = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == "inference.GRPCInferenceService"
    method = service.methods_by_name[rpc]
    assert method.input_type.full_name == f"inference.{request_type}"
    assert method.output_type.full_name == f"inference.{response_type}"
    assert method.client_streaming is cstream
    assert method.server_streaming is sstream


def test_domain_service_rpcs() -> None:
    service = nnserve_pb2.DESCRIPTOR.services_by_name["Predictor"]
    assert service.full_name == "nnserve.v1.Predictor"
    got = {m.name: (m.input_type.name, m.output_type.name) for m in service.methods}
    assert got == {
        "Classify": ("ClassifyRequest", "ClassifyResponse"),
        "Sequence": ("SequenceRequest", "SequenceResponse"),
        "DescribeModel": ("DescribeModelRequest", "DescribeModelResponse"),
        "Stream": ("StreamRequest", "StreamResponse"),
        "ClassifyStream": ("ClassifyStreamRequest", "ClassifyStreamResponse"),
        "SequenceStream": ("SequenceStreamRequest", "SequenceStreamResponse"),
    }
    for name in ("Stream", "ClassifyStream", "SequenceStream"):
        stream = service.methods_by_name[name]
        assert stream.client_streaming and stream.server_streaming


# ---------------------------------------------------------------- field numbers

# Field numbers that tritonclient / perf_analyzer / KServe clients rely on, pinned
# here so that a renumbering fails even where tritonclient is not installed.
PINNED_FIELDS: list[tuple[Any, str, int]] = [
    (grpc_service_pb2.ModelInferRequest, "model_name", 1),
    (grpc_service_pb2.ModelInferRequest, "model_version", 2),
    (grpc_service_pb2.ModelInferRequest, "id", 3),
    (grpc_service_pb2.ModelInferRequest, "parameters", 4),
    (grpc_service_pb2.ModelInferRequest, "inputs", 5),
    (grpc_service_pb2.ModelInferRequest, "outputs", 6),
    (grpc_service_pb2.ModelInferRequest, "raw_input_contents", 7),
    (grpc_service_pb2.ModelInferRequest.InferInputTensor, "contents", 5),
    (grpc_service_pb2.ModelInferResponse, "outputs", 5),
    (grpc_service_pb2.ModelInferResponse, "raw_output_contents", 6),
    (grpc_service_pb2.InferTensorContents, "fp32_contents", 6),
    (grpc_service_pb2.InferTensorContents, "int64_contents", 3),
    (grpc_service_pb2.InferTensorContents, "bytes_contents", 8),
    (grpc_service_pb2.InferParameter, "uint64_param", 5),
    (grpc_service_pb2.ModelStreamInferResponse, "error_message", 1),
    (grpc_service_pb2.ModelStreamInferResponse, "infer_response", 2),
    (grpc_service_pb2.ModelStatistics, "inference_stats", 6),
    (grpc_service_pb2.ModelStatistics, "batch_stats", 7),
    (grpc_service_pb2.InferStatistics, "queue", 3),
    (grpc_service_pb2.InferStatistics, "compute_infer", 5),
    (grpc_service_pb2.InferBatchStatistics, "batch_size", 1),
    (grpc_service_pb2.StatisticDuration, "ns", 2),
    (model_config_pb2.ModelConfig, "max_batch_size", 4),
    (model_config_pb2.ModelConfig, "input", 5),
    (model_config_pb2.ModelConfig, "output", 6),
    (model_config_pb2.ModelConfig, "instance_group", 7),
    (model_config_pb2.ModelConfig, "dynamic_batching", 11),
    (model_config_pb2.ModelConfig, "sequence_batching", 13),
    (model_config_pb2.ModelConfig, "parameters", 14),
    (model_config_pb2.ModelConfig, "backend", 17),
    (model_config_pb2.ModelInput, "dims", 4),
    (model_config_pb2.ModelInput, "is_shape_tensor", 6),
    (model_config_pb2.ModelInput, "optional", 8),
    (model_config_pb2.ModelOutput, "label_filename", 4),
    (model_config_pb2.ModelOutput, "reshape", 5),
    (model_config_pb2.ModelDynamicBatching, "max_queue_delay_microseconds", 2),
    (model_config_pb2.ModelInstanceGroup, "kind", 4),
]


@pytest.mark.parametrize(
    ("message", "field", "number"),
    PINNED_FIELDS,
    ids=[f"{m.DESCRIPTOR.name}.{f}" for m, f, _ in PINNED_FIELDS],
)
def test_pinned_field_number(message: Any, field: str, number: int) -> None:
    assert message.DESCRIPTOR.fields_by_name[field].number == number


def test_datatype_enum_values() -> None:
    values = dict(model_config_pb2.DataType.items())
    assert values == {
        "TYPE_INVALID": 0, "TYPE_BOOL": 1, "TYPE_UINT8": 2, "TYPE_UINT16": 3,
        "TYPE_UINT32": 4, "TYPE_UINT64": 5, "TYPE_INT8": 6, "TYPE_INT16": 7,
        "TYPE_INT32": 8, "TYPE_INT64": 9, "TYPE_FP16": 10, "TYPE_FP32": 11,
        "TYPE_FP64": 12, "TYPE_STRING": 13, "TYPE_BF16": 14,
    }  # fmt: skip


# ---------------------------------------------------------------- tritonclient parity

_DUMP_TRITONCLIENT = """
import base64, json
from tritonclient.grpc import model_config_pb2, service_pb2
print(json.dumps({m.DESCRIPTOR.name: base64.b64encode(m.DESCRIPTOR.serialized_pb).decode()
                  for m in (service_pb2, model_config_pb2)}))
"""


def _flatten(file: descriptor_pb2.FileDescriptorProto) -> dict[str, tuple[Any, ...]]:
    """Everything on the wire: fields, enum values and RPCs, keyed by full name."""
    out: dict[str, tuple[Any, ...]] = {}

    def enum(e: descriptor_pb2.EnumDescriptorProto, scope: str) -> None:
        for v in e.value:
            out[f"enum {scope}.{e.name}.{v.name}"] = (v.number,)

    def message(m: descriptor_pb2.DescriptorProto, scope: str) -> None:
        name = f"{scope}.{m.name}"
        out[f"message {name}"] = (m.options.map_entry,)
        for f in m.field:
            oneof = m.oneof_decl[f.oneof_index].name if f.HasField("oneof_index") else ""
            out[f"field {name}.{f.name}"] = (f.number, f.label, f.type, f.type_name, oneof)
        for e in m.enum_type:
            enum(e, name)
        for n in m.nested_type:
            message(n, name)

    for e in file.enum_type:
        enum(e, file.package)
    for m in file.message_type:
        message(m, file.package)
    for s in file.service:
        for r in s.method:
            out[f"rpc {file.package}.{s.name}.{r.name}"] = (
                r.input_type,
                r.output_type,
                r.client_streaming,
                r.server_streaming,
            )
    return out


def _ours(module: Any) -> dict[str, tuple[Any, ...]]:
    return _flatten(descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb))


@pytest.fixture(scope="module")
def tritonclient_descriptors() -> dict[str, dict[str, tuple[Any, ...]]]:
    proc = _python(_DUMP_TRITONCLIENT)
    assert proc.returncode == 0, proc.stderr
    return {
        name: _flatten(descriptor_pb2.FileDescriptorProto.FromString(base64.b64decode(data)))
        for name, data in json.loads(proc.stdout).items()
    }


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [(grpc_service_pb2, "grpc_service.proto"), (model_config_pb2, "model_config.proto")],
    ids=["grpc_service", "model_config"],
)
def test_same_wire_format_as_tritonclient(
    ours: Any, theirs: str, tritonclient_descriptors: dict[str, dict[str, tuple[Any, ...]]]
) -> None:
    mine, triton = _ours(ours), tritonclient_descriptors[theirs]
    assert len(triton) > 100
    different = {k: (mine.get(k), v) for k, v in triton.items() if mine.get(k) != v}
    extra = sorted(set(mine) - set(triton))
    assert not different, f"differs from tritonclient (ours, theirs): {different}"
    assert not extra, f"not in tritonclient: {extra}"


_DECODE_WITH_TRITONCLIENT = """
import json, sys
from tritonclient.grpc import InferResult, service_pb2
from google.protobuf.json_format import MessageToDict
data = json.loads(sys.stdin.read())
result = InferResult(service_pb2.ModelInferResponse.FromString(bytes.fromhex(data["infer"])))
config = service_pb2.ModelConfigResponse.FromString(bytes.fromhex(data["config"]))
print(json.dumps({
    "outputs": {n: result.as_numpy(n).tolist() for n in ("probabilities", "ids", "labels")},
    "dtypes": {n: str(result.as_numpy(n).dtype) for n in ("probabilities", "ids")},
    "config": MessageToDict(config, preserving_proto_field_name=True),
}, default=lambda b: b.decode()))
"""


def test_tritonclient_decodes_our_messages() -> None:
    """Bytes written with our classes decode with tritonclient's public API."""
    probs = np.array([[0.25, 0.75], [0.5, 0.5]], dtype=np.float32)
    ids = np.array([[3, -1]], dtype=np.int64)
    labels = [b"rejected", b"approved"]
    response = grpc_service_pb2.ModelInferResponse(model_name="mlp", model_version="1")
    for name, datatype, shape in (
        ("probabilities", "FP32", probs.shape),
        ("ids", "INT64", ids.shape),
        ("labels", "BYTES", (2,)),
    ):
        response.outputs.add(name=name, datatype=datatype, shape=shape)
    response.raw_output_contents.extend(
        [
            probs.astype("<f4").tobytes(),
            ids.astype("<i8").tobytes(),
            b"".join(len(s).to_bytes(4, "little") + s for s in labels),
        ]
    )
    config = grpc_service_pb2.ModelConfigResponse()
    config.config.name = "mlp"
    config.config.backend = "onnxruntime"
    config.config.max_batch_size = 64
    config.config.input.add(name="features", data_type=model_config_pb2.TYPE_FP32, dims=[8])
    config.config.output.add(name="probabilities", data_type=model_config_pb2.TYPE_FP32, dims=[2])
    config.config.dynamic_batching.max_queue_delay_microseconds = 2000
    config.config.instance_group.add(kind=model_config_pb2.ModelInstanceGroup.KIND_GPU, count=1)

    payload = {
        "infer": response.SerializeToString().hex(),
        "config": config.SerializeToString().hex(),
    }
    proc = _python(_DECODE_WITH_TRITONCLIENT, json.dumps(payload))
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["outputs"]["probabilities"] == probs.tolist()
    assert got["dtypes"] == {"probabilities": "float32", "ids": "int64"}
    assert got["outputs"]["ids"] == ids.tolist()
    assert got["outputs"]["labels"] == ["rejected", "approved"]
    c = got["config"]["config"]
    assert (c["name"], c["backend"], c["max_batch_size"]) == ("mlp", "onnxruntime", 64)
    assert c["input"] == [{"name": "features", "data_type": "TYPE_FP32", "dims": ["8"]}]
    assert c["dynamic_batching"] == {"max_queue_delay_microseconds": "2000"}
    assert c["instance_group"] == [{"kind": "KIND_GPU", "count": 1}]


# ---------------------------------------------------------------- descriptor pool


def test_tritonclient_grpc_and_our_inference_protos_clash_in_one_process() -> None:
    """Documented in docs/protocol.md: the two `inference` packages cannot coexist."""
    for first, second in (
        ("protos.grpc_service_pb2", "tritonclient.grpc"),
        ("tritonclient.grpc", "protos.grpc_service_pb2"),
    ):
        proc = _python(f"import {first}\nimport {second}")
        assert proc.returncode != 0
        assert "duplicate symbol 'inference." in proc.stderr or "Conflict register" in proc.stderr


def test_tritonclient_grpc_and_our_domain_protos_coexist() -> None:
    proc = _python(
        "import tritonclient.grpc, tritonclient.utils\n"
        "from protos import nnserve_pb2, nnserve_pb2_grpc\n"
        "print(nnserve_pb2.DESCRIPTOR.package)"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "nnserve.v1"
