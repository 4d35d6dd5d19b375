"""nnserve.v1.Predictor: Classify, Sequence, DescribeModel and Stream over the shared data
plane (Stream's sessions: services/sessions.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TypeAlias

import grpc

from protos import nnserve_pb2 as npb
from protos import nnserve_pb2_grpc as npb_grpc
from services import codec
from services.dataplane import DataPlane
from services.kserve_servicer import deadline_of, described
from services.readiness import Readiness
from services.sessions import StreamService

Context: TypeAlias = grpc.aio.ServicerContext


class PredictorServicer(npb_grpc.PredictorServicer):
    def __init__(self, plane: DataPlane, readiness: Readiness, streams: StreamService) -> None:
        self._plane = plane
        self._readiness = readiness
        self._streams = streams

    async def Classify(
        self, request: npb.ClassifyRequest, context: Context
    ) -> npb.ClassifyResponse:
        name, version = request.model_name, request.model_version
        async with self._plane.request("Classify", name, version, deadline_of(context)) as scope:
            inputs = codec.decode_classify(request, scope.model.domain)
            outputs = await scope.infer(inputs)
            return codec.encode_classify(request, scope.model.spec, outputs)

    async def Sequence(
        self, request: npb.SequenceRequest, context: Context
    ) -> npb.SequenceResponse:
        name, version = request.model_name, request.model_version
        async with self._plane.request("Sequence", name, version, deadline_of(context)) as scope:
            inputs = codec.decode_sequence(request, scope.model.domain)
            explain = codec.explain_options(request, scope.model.spec)
            # Only explain requests run the explain graph (it returns the scores too).
            graph = scope.model.explainer if explain is not None else None
            outputs = await scope.infer(inputs, graph)
            return codec.encode_sequence(request, scope.model.spec, inputs, outputs, explain)

    async def DescribeModel(
        self, request: npb.DescribeModelRequest, context: Context
    ) -> npb.DescribeModelResponse:
        mv = self._readiness.describe(request.model_name, request.model_version)
        ready = self._readiness.model_ready(mv.name, str(mv.version))
        model = described(mv)
        spec = model.spec
        return npb.DescribeModelResponse(
            model_name=spec.name,
            model_version=str(spec.version),
            family=spec.family,
            task=spec.task,
            labels=spec.labels,
            feature_names=spec.classify.feature_names if spec.classify else (),
            vocabulary=spec.sequence.vocabulary if spec.sequence else (),
            max_length=spec.sequence.max_length if spec.sequence else 0,
            provider=model.provider,
            ready=ready,
            model_json=spec.model_json,
        )

    async def Stream(
        self, requests: AsyncIterator[npb.StreamRequest], context: Context
    ) -> AsyncIterator[npb.StreamResponse]:
        async for response in self._streams.serve(requests, deadline_of(context)):
            yield response
