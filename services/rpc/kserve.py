"""inference.GRPCInferenceService: KServe v2 / Open Inference Protocol + Triton's superset.

Thin: each inference handler runs an endpoint (rpc/endpoints.py) inside a data-plane
request scope, which resolves the model before the codec decodes against it; readiness
questions go to core/readiness.py, lifecycle ones to the registry.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import NoReturn, TypeAlias

import grpc

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from services import __version__
from services.batching.batcher import PhaseTotals
from services.core.dataplane import DataPlane
from services.core.model_control import ModelControl
from services.core.readiness import Readiness
from services.core.registry import ModelRegistry
from services.errors import (
    ModelNotFound,
    NotSupported,
    shown,
)
from services.rpc import codec, endpoints
from services.rpc.deadlines import deadline_of
from services.rpc.endpoints import MODEL_INFER
from services.rpc.pipelining import failure_status, pipelined

log = logging.getLogger(__name__)

# Only what is implemented and tested (docs/protocol.md).
EXTENSIONS = ["model_repository", "model_configuration", "statistics"]

Context: TypeAlias = grpc.aio.ServicerContext


def _stream_failure(request: pb.ModelInferRequest, exc: Exception) -> pb.ModelStreamInferResponse:
    code, message = failure_status(exc)
    return pb.ModelStreamInferResponse(
        error_message=f"{code.name}: {message}",
        infer_response=pb.ModelInferResponse(
            model_name=request.model_name[:256], id=request.id[:256]
        ),
    )


def _phases(target: pb.InferBatchStatistics | pb.InferStatistics, totals: PhaseTotals) -> None:
    # perf_analyzer requires the three compute phases to share one count.
    target.compute_input.count = target.compute_infer.count = totals.count
    target.compute_output.count = totals.count
    target.compute_input.ns = totals.input_ns
    target.compute_infer.ns = totals.infer_ns
    target.compute_output.ns = totals.output_ns


class KServeServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self,
        plane: DataPlane,
        registry: ModelRegistry,
        readiness: Readiness,
        control: ModelControl,
        *,
        stream_window: int = 128,
    ) -> None:
        self._plane = plane
        self._stream_window = stream_window  # requests read and not yet answered, per stream
        self._registry = registry
        self._readiness = readiness
        self._control = control  # the only way in to state-changing RPCs (Load/Unload)

    # ------------------------------------------------------------- health

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: Context
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: Context
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._readiness.server_ready())

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: Context
    ) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(
            ready=self._readiness.model_ready(request.name, request.version)
        )

    # ------------------------------------------------------------- metadata

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: Context
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="nnserve", version=__version__, extensions=EXTENSIONS)

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: Context
    ) -> pb.ModelMetadataResponse:
        model = self._readiness.describe(request.name, request.version).loaded()
        return codec.model_metadata(model.spec, sorted(self._registry.versions(request.name)))

    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: Context
    ) -> pb.ModelConfigResponse:
        model = self._readiness.describe(request.name, request.version).loaded()
        measured = {
            "single_row_compute_us": f"{model.single_row_seconds * 1e6:.1f}",
        }
        adaptive = model.batcher.adaptive
        if adaptive is not None:  # closed-loop batching: the knobs as they are now
            measured["latency_target_ms"] = f"{adaptive.target_s * 1e3:g}"
            measured["adaptive_batch_cap"] = str(adaptive.batch_cap)
            measured["adaptive_queue_delay_us"] = f"{adaptive.delay_s * 1e6:.0f}"
        config = codec.model_config(
            model.spec,
            model.config,
            model.provider,
            model.session.placement,
            model.fallback_reason,
            measured,
        )
        return pb.ModelConfigResponse(config=config)

    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: Context
    ) -> pb.ModelStatisticsResponse:
        if request.name:
            versions = list(self._registry.versions(request.name).values())
            if not versions:
                raise ModelNotFound(f"unknown model {shown(request.name)}")
            if request.version:
                versions = [self._registry.record(request.name, request.version)]
        else:
            versions = self._registry.all_versions()
        response = pb.ModelStatisticsResponse()
        for mv in versions:
            item = response.model_stats.add(name=mv.name, version=str(mv.version))
            if mv.model is None:
                continue  # never loaded: nothing counted
            s, b = mv.model.stats, mv.model.batcher.stats
            item.last_inference = s.last_inference_ms
            item.inference_count = s.inference_count
            item.execution_count = b.compute.count
            stats = item.inference_stats
            stats.success.count, stats.success.ns = s.success_count, s.success_ns
            stats.fail.count, stats.fail.ns = s.fail_count, s.fail_ns
            stats.queue.count, stats.queue.ns = b.queue_count, b.queue_ns
            _phases(stats, b.compute)
            for size, totals in sorted(b.by_batch_size.items()):
                _phases(item.batch_stats.add(batch_size=size), totals)
        return response

    # ------------------------------------------------------------- repository

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: Context
    ) -> pb.RepositoryIndexResponse:
        response = pb.RepositoryIndexResponse()
        for mv in self._registry.all_versions():
            if request.ready and not mv.ready:
                continue
            response.models.add(
                name=mv.name, version=str(mv.version), state=mv.state.value, reason=mv.reason
            )
        return response

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Context
    ) -> pb.RepositoryModelLoadResponse:
        await self._control.load(request.model_name, request.parameters)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Context
    ) -> pb.RepositoryModelUnloadResponse:
        await self._control.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    # ------------------------------------------------------------- inference

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: Context
    ) -> pb.ModelInferResponse:
        return await self._infer(request, "ModelInfer", deadline_of(context))

    async def _infer(
        self, request: pb.ModelInferRequest, method: str, deadline: float | None
    ) -> pb.ModelInferResponse:
        response: pb.ModelInferResponse = await endpoints.infer(
            self._plane, MODEL_INFER.prepare, method, request, deadline
        )
        return response

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Context
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Many ModelInfer requests on one call (services/rpc/pipelining.py): answers carry
        the request id and come back as they finish; a failed request answers with
        error_message and the stream goes on."""
        deadline = deadline_of(context)

        async def answer(request: pb.ModelInferRequest) -> pb.ModelStreamInferResponse:
            response = await self._infer(request, "ModelStreamInfer", deadline)
            return pb.ModelStreamInferResponse(infer_response=response)

        async for item in pipelined(request_iterator, answer, _stream_failure, self._stream_window):
            yield item

    # ------------------------------------------------------------- not offered

    async def _unsupported(self, request: object, context: Context) -> NoReturn:
        raise NotSupported("shared memory, tracing and log settings are not supported by nnserve")

    SystemSharedMemoryStatus = _unsupported
    SystemSharedMemoryRegister = _unsupported
    SystemSharedMemoryUnregister = _unsupported
    CudaSharedMemoryStatus = _unsupported
    CudaSharedMemoryRegister = _unsupported
    CudaSharedMemoryUnregister = _unsupported
    TraceSetting = _unsupported
    LogSettings = _unsupported
