"""KServe v2 requests and answers as the tests build and read them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import numpy as np

from contract.model import NUMPY_TO_V2, from_raw
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.models import model_json

Outputs = dict[str, np.ndarray]


def infer_request(
    name: str, inputs: dict[str, np.ndarray], raw: bool = True
) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=name, id=f"req-{name}")
    for key, value in inputs.items():
        tensor = request.inputs.add(name=key, datatype=NUMPY_TO_V2[value.dtype], shape=value.shape)
        if raw:
            request.raw_input_contents.append(value.tobytes())
        elif value.dtype == np.float32:
            tensor.contents.fp32_contents.extend(value.ravel().tolist())
        else:
            tensor.contents.int64_contents.extend(value.ravel().tolist())
    return request


def full_length_request(repository: Path, name: str, rows: int) -> pb.ModelInferRequest:
    """A sequence request of `rows` max-length rows: slow enough to keep a queue busy."""
    max_length = model_json(repository, name)["sequence"]["max_length"]
    tokens = np.full((rows, max_length), 2, np.int64)
    lengths = np.full(rows, max_length, np.int64)
    return infer_request(name, {"tokens": tokens, "lengths": lengths})


def decode_outputs(response: pb.ModelInferResponse) -> Outputs:
    return {
        out.name: from_raw(raw, out.datatype, out.shape)
        for out, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }


def matches(outputs: Outputs, expected: Outputs) -> bool:
    return outputs.keys() == expected.keys() and all(
        np.allclose(outputs[name], value, rtol=1e-5, atol=1e-6) for name, value in expected.items()
    )


def call_many(address: str, request: pb.ModelInferRequest, expected: Outputs, count: int) -> None:
    """`count` calls over one channel; every answer must be the model's."""
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(count):
            assert matches(decode_outputs(stub.ModelInfer(request, timeout=10)), expected)


def index_of(stub: pb_grpc.GRPCInferenceServiceStub) -> dict[tuple[str, str], Any]:
    """RepositoryIndex as {(name, version): entry}."""
    models = stub.RepositoryIndex(pb.RepositoryIndexRequest()).models
    return {(m.name, m.version): m for m in models}
