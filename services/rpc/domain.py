"""nnserve.v1.Predictor: Classify, Sequence, DescribeModel and Stream over the shared data
plane (Stream's sessions: services/core/sessions.py); ClassifyStream and SequenceStream carry
many Classify / Sequence requests on one call (services/rpc/pipelining.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias, TypeVar

import grpc

from protos import nnserve_pb2 as npb
from protos import nnserve_pb2_grpc as npb_grpc
from services.core.dataplane import DataPlane
from services.core.readiness import Readiness
from services.rpc import endpoints
from services.rpc.deadlines import deadline_of
from services.rpc.endpoints import CLASSIFY, SEQUENCE
from services.rpc.pipelining import MAX_ID_CHARS, check_id, failure_status, pipelined
from services.rpc.stream import StreamService, client_key

Context: TypeAlias = grpc.aio.ServicerContext
Item = TypeVar("Item", npb.ClassifyStreamRequest, npb.SequenceStreamRequest)
Answer = TypeVar("Answer", npb.ClassifyStreamResponse, npb.SequenceStreamResponse)


class PredictorServicer(npb_grpc.PredictorServicer):
    def __init__(
        self,
        plane: DataPlane,
        readiness: Readiness,
        streams: StreamService,
        *,
        stream_window: int = 128,
    ) -> None:
        self._plane = plane
        self._readiness = readiness
        self._streams = streams
        self._stream_window = stream_window  # requests read and not yet answered, per call

    async def Classify(
        self, request: npb.ClassifyRequest, context: Context
    ) -> npb.ClassifyResponse:
        return await self._classify(request, "Classify", deadline_of(context))

    async def _classify(
        self, request: npb.ClassifyRequest, method: str, deadline: float | None
    ) -> npb.ClassifyResponse:
        response: npb.ClassifyResponse = await endpoints.infer(
            self._plane, CLASSIFY.prepare, method, request, deadline
        )
        return response

    async def Sequence(
        self, request: npb.SequenceRequest, context: Context
    ) -> npb.SequenceResponse:
        return await self._sequence(request, "Sequence", deadline_of(context))

    async def _sequence(
        self, request: npb.SequenceRequest, method: str, deadline: float | None
    ) -> npb.SequenceResponse:
        response: npb.SequenceResponse = await endpoints.infer(
            self._plane, SEQUENCE.prepare, method, request, deadline
        )
        return response

    async def DescribeModel(
        self, request: npb.DescribeModelRequest, context: Context
    ) -> npb.DescribeModelResponse:
        mv = self._readiness.describe(request.model_name, request.model_version)
        ready = self._readiness.model_ready(mv.name, str(mv.version))
        model = mv.loaded()
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
            shadow=_shadow(self._plane, spec.name, spec.version),
        )

    async def Stream(
        self, requests: AsyncIterator[npb.StreamRequest], context: Context
    ) -> AsyncIterator[npb.StreamResponse]:
        client = client_key(context.peer())
        async for response in self._streams.serve(requests, deadline_of(context), client):
            yield response

    async def ClassifyStream(
        self, requests: AsyncIterator[npb.ClassifyStreamRequest], context: Context
    ) -> AsyncIterator[npb.ClassifyStreamResponse]:
        answers = self._many(
            requests, context, self._classify, "ClassifyStream", npb.ClassifyStreamResponse
        )
        async for answer in answers:
            yield answer

    async def SequenceStream(
        self, requests: AsyncIterator[npb.SequenceStreamRequest], context: Context
    ) -> AsyncIterator[npb.SequenceStreamResponse]:
        answers = self._many(
            requests, context, self._sequence, "SequenceStream", npb.SequenceStreamResponse
        )
        async for answer in answers:
            yield answer

    def _many(
        self,
        requests: AsyncIterator[Item],
        context: Context,
        run: Callable[[Any, str, float | None], Awaitable[Any]],
        method: str,
        answer_type: Callable[..., Answer],
    ) -> AsyncIterator[Answer]:
        """Many {id, request} on one call: each answered with `run`'s response or error."""
        deadline = deadline_of(context)

        async def answer(item: Item) -> Answer:
            check_id(item.id)
            return answer_type(id=item.id, response=await run(item.request, method, deadline))

        def failed(item: Item, exc: Exception) -> Answer:
            return answer_type(id=item.id[:MAX_ID_CHARS], error=_error(exc))

        return pipelined(requests, answer, failed, self._stream_window)


def _shadow(plane: DataPlane, name: str, version: int) -> npb.ShadowComparison | None:
    """The model's shadow comparison, when the described version takes part in it."""
    shadow = plane.registry.shadows.get(name)
    if shadow is None or version not in (shadow.serving.version, shadow.shadow.version):
        return None
    s = shadow.summary()
    return npb.ShadowComparison(
        serving_version=str(s.serving_version),
        shadow_version=str(s.shadow_version),
        compared_rows=s.compared_rows,
        dropped_requests=s.dropped_requests,
        window_rows=s.window_rows,
        agreement=s.agreement,
        max_abs_difference=s.max_abs_difference,
        p99_abs_difference=s.p99_abs_difference,
    )


def _error(exc: Exception) -> npb.StreamError:
    code, message = failure_status(exc)
    return npb.StreamError(code=code.name, message=message)
