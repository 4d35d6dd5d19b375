"""The unary inference methods as steps both front ends run: parse, resolve, prepare, encode.

A method names its model from the request, turns the request into tensors for that model
(and the graph to run them on), and encodes the outputs. The grpc.aio servicers run these
steps inside one coroutine per call; the native front end runs them for many calls at
once, without a coroutine per call (services/rpc/native.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message

from protos import grpc_service_pb2 as pb
from protos import nnserve_pb2 as npb
from services.batching.batcher import Batcher
from services.core.dataplane import DataPlane, Tensors
from services.core.registry import LoadedModel
from services.rpc import codec

Encode = Callable[[Tensors], Message]


@dataclass(frozen=True, slots=True)
class Prepared:
    """A request turned into tensors: what to run, on which graph, and how to answer."""

    inputs: Tensors
    graph: Batcher | None  # None: the model's main graph
    encode: Encode


@dataclass(frozen=True)
class InferenceMethod:
    service: str
    name: str  # the method, as nnserve_requests_total labels it
    request_type: type[Message]
    prepare: Callable[[Any, LoadedModel], Prepared]

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.name}"


def _model_infer(request: pb.ModelInferRequest, model: LoadedModel) -> Prepared:
    spec = model.spec
    wanted = codec.requested_outputs(request, spec)
    inputs = codec.decode_infer_inputs(request, spec, model.config.max_batch_size)
    return Prepared(
        inputs, None, lambda outputs: codec.encode_infer_response(request, spec, outputs, wanted)
    )


def _classify(request: npb.ClassifyRequest, model: LoadedModel) -> Prepared:
    spec = model.spec
    inputs = codec.decode_classify(request, spec, model.config.max_batch_size)
    return Prepared(inputs, None, lambda outputs: codec.encode_classify(request, spec, outputs))


def _sequence(request: npb.SequenceRequest, model: LoadedModel) -> Prepared:
    spec = model.spec
    inputs = codec.decode_sequence(request, spec, model.config.max_batch_size)
    explain = codec.explain_options(request, spec)
    # Only explain requests run the explain graph (it returns the scores too).
    graph = model.explainer if explain is not None else None
    return Prepared(
        inputs,
        graph,
        lambda outputs: codec.encode_sequence(request, spec, inputs, outputs, explain),
    )


KSERVE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
PREDICTOR = npb.DESCRIPTOR.services_by_name["Predictor"].full_name
ROUTING = npb.DESCRIPTOR.services_by_name["Routing"].full_name
MODEL_INFER = InferenceMethod(KSERVE, "ModelInfer", pb.ModelInferRequest, _model_infer)
CLASSIFY = InferenceMethod(PREDICTOR, "Classify", npb.ClassifyRequest, _classify)
SEQUENCE = InferenceMethod(PREDICTOR, "Sequence", npb.SequenceRequest, _sequence)
UNARY_INFERENCE = (MODEL_INFER, CLASSIFY, SEQUENCE)


async def infer(
    plane: DataPlane,
    prepare: Callable[[Any, LoadedModel], Prepared],
    method: str,
    request: Any,
    deadline: float | None,
) -> Any:
    """One request in one coroutine (the grpc.aio servicers, and every stream)."""
    async with plane.request(method, request.model_name, request.model_version, deadline) as scope:
        prepared = prepare(request, scope.model)
        outputs = await scope.infer(prepared.inputs, prepared.graph)
        return prepared.encode(outputs)
