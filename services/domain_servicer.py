"""nnserve.v1.Predictor: Classify, Sequence and DescribeModel over the shared data plane."""

from __future__ import annotations

import grpc

from protos import nnserve_pb2 as npb
from protos import nnserve_pb2_grpc as npb_grpc
from services import codec
from services.dataplane import DataPlane
from services.errors import Unavailable
from services.registry import ModelRegistry, ModelVersion


class PredictorServicer(npb_grpc.PredictorServicer):
    def __init__(self, plane: DataPlane, registry: ModelRegistry) -> None:
        self._plane = plane
        self._registry = registry
        # Per-model lookups (feature order, vocabulary index) built once, on first use.
        self._domain: dict[tuple[str, int], codec.DomainModel] = {}

    def _model(self, mv: ModelVersion) -> codec.DomainModel:
        key = (mv.name, mv.version)
        model = self._domain.get(key)
        if model is None or model.spec is not mv.spec:
            assert mv.spec is not None
            model = self._domain[key] = codec.DomainModel(mv.spec)
        return model

    async def Classify(
        self, request: npb.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> npb.ClassifyResponse:
        return await self._plane.infer(
            "Classify",
            request.model_name,
            request.model_version,
            lambda mv: codec.decode_classify(request, self._model(mv)),
            lambda mv, inputs, outputs: codec.encode_classify(request, mv.spec, outputs),  # type: ignore[arg-type]
            context,
        )

    async def Sequence(
        self, request: npb.SequenceRequest, context: grpc.aio.ServicerContext
    ) -> npb.SequenceResponse:
        return await self._plane.infer(
            "Sequence",
            request.model_name,
            request.model_version,
            lambda mv: codec.decode_sequence(request, self._model(mv)),
            lambda mv, inputs, outputs: codec.encode_sequence(request, mv.spec, inputs, outputs),  # type: ignore[arg-type]
            context,
        )

    async def DescribeModel(
        self, request: npb.DescribeModelRequest, context: grpc.aio.ServicerContext
    ) -> npb.DescribeModelResponse:
        mv = self._registry.resolve_any(request.model_name, request.model_version)
        spec = mv.spec
        if spec is None:
            raise Unavailable(
                f"model {mv.name!r} version {mv.version} is {mv.state.value}: {mv.reason}"
            )
        return npb.DescribeModelResponse(
            model_name=spec.name,
            model_version=str(spec.version),
            family=spec.family,
            task=spec.task,
            labels=spec.labels,
            feature_names=spec.classify.feature_names if spec.classify else (),
            vocabulary=spec.sequence.vocabulary if spec.sequence else (),
            max_length=spec.sequence.max_length if spec.sequence else 0,
            provider=mv.provider,
            ready=mv.ready and not self._plane.draining,
            model_json=spec.model_json,
        )
