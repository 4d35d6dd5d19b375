"""inference.GRPCInferenceService: KServe v2 / Open Inference Protocol + Triton's superset.

Thin: translate with the codec, delegate to the data plane and registry.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from services import __version__, codec
from services.dataplane import DataPlane
from services.errors import ModelNotFound, NotSupported, ServingError, Unavailable
from services.registry import ModelRegistry, ModelVersion

log = logging.getLogger(__name__)

EXTENSIONS = ["model_repository", "model_configuration", "statistics", "schedule_policy"]


class KServeServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, plane: DataPlane, registry: ModelRegistry, server_ready: asyncio.Event):
        self._plane = plane
        self._registry = registry
        self._started = server_ready

    # ------------------------------------------------------------- health

    async def ServerLive(self, request, context):  # type: ignore[no-untyped-def]
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):  # type: ignore[no-untyped-def]
        ready = (
            self._started.is_set()
            and not self._plane.draining
            and any(mv.ready for mv in self._registry.all_versions())
        )
        return pb.ServerReadyResponse(ready=ready)

    async def ModelReady(self, request, context):  # type: ignore[no-untyped-def]
        try:
            self._registry.resolve(request.name, request.version)
        except Unavailable:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=not self._plane.draining)

    # ------------------------------------------------------------- metadata

    async def ServerMetadata(self, request, context):  # type: ignore[no-untyped-def]
        return pb.ServerMetadataResponse(name="nnserve", version=__version__, extensions=EXTENSIONS)

    def _described(self, name: str, version: str) -> ModelVersion:
        mv = self._registry.resolve_any(name, version)
        if mv.spec is None:
            raise Unavailable(
                f"model {name!r} version {mv.version} is {mv.state.value}: {mv.reason}"
            )
        return mv

    async def ModelMetadata(self, request, context):  # type: ignore[no-untyped-def]
        mv = self._described(request.name, request.version)
        assert mv.spec is not None
        return codec.model_metadata(mv.spec, sorted(self._registry.versions(request.name)))

    async def ModelConfig(self, request, context):  # type: ignore[no-untyped-def]
        mv = self._described(request.name, request.version)
        assert mv.spec is not None
        batcher = mv.batcher
        config = codec.model_config(
            mv.spec,
            batcher.max_batch_size if batcher else mv.spec.serving.max_batch_size,
            batcher.max_queue_delay_s if batcher else mv.spec.serving.max_queue_delay_ms / 1000,
            mv.provider,
            mv.session.placement if mv.session else None,
        )
        return pb.ModelConfigResponse(config=config)

    async def ModelStatistics(self, request, context):  # type: ignore[no-untyped-def]
        if request.name:
            versions = list(self._registry.versions(request.name).values())
            if not versions:
                raise ModelNotFound(f"unknown model {request.name!r}")
            if request.version:
                versions = [self._registry.resolve_any(request.name, request.version)]
        else:
            versions = self._registry.all_versions()
        response = pb.ModelStatisticsResponse()
        for mv in versions:
            s = mv.stats
            item = response.model_stats.add(
                name=mv.name,
                version=str(mv.version),
                last_inference=s.last_inference_ms,
                inference_count=s.inference_count,
                execution_count=mv.batcher.stats.compute_count if mv.batcher else 0,
            )
            item.inference_stats.success.count = s.success_count
            item.inference_stats.success.ns = s.success_ns
            item.inference_stats.fail.count = s.fail_count
            item.inference_stats.fail.ns = s.fail_ns
            if mv.batcher is not None:
                b = mv.batcher.stats
                item.inference_stats.queue.count = b.queue_count
                item.inference_stats.queue.ns = b.queue_ns
                # perf_analyzer requires the three compute phases to share one count.
                stats = item.inference_stats
                stats.compute_input.count = b.compute_count
                stats.compute_input.ns = b.input_ns
                stats.compute_infer.count = b.compute_count
                stats.compute_infer.ns = b.compute_ns
                stats.compute_output.count = b.compute_count
                stats.compute_output.ns = b.output_ns
        return response

    # ------------------------------------------------------------- repository

    async def RepositoryIndex(self, request, context):  # type: ignore[no-untyped-def]
        response = pb.RepositoryIndexResponse()
        for mv in self._registry.all_versions():
            if request.ready and not mv.ready:
                continue
            response.models.add(
                name=mv.name, version=str(mv.version), state=mv.state.value, reason=mv.reason
            )
        return response

    async def RepositoryModelLoad(self, request, context):  # type: ignore[no-untyped-def]
        loaded = await self._registry.load(request.model_name)
        failed = [mv for mv in loaded if not mv.ready]
        if failed and not any(mv.ready for mv in loaded):
            raise Unavailable(
                f"model {request.model_name!r} failed to load: "
                + "; ".join(f"version {mv.version}: {mv.reason}" for mv in failed)
            )
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request, context):  # type: ignore[no-untyped-def]
        await self._registry.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    # ------------------------------------------------------------- inference

    async def ModelInfer(self, request, context):  # type: ignore[no-untyped-def]
        return await self._infer(request, context, "ModelInfer")

    async def _infer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext, method: str
    ) -> pb.ModelInferResponse:
        names: list[str] = []

        def decode(mv: ModelVersion) -> codec.Tensors:
            assert mv.spec is not None
            names.extend(codec.requested_outputs(request, mv.spec))
            return codec.decode_infer_inputs(request, mv.spec)

        def encode(mv: ModelVersion, inputs: codec.Tensors, outputs: codec.Tensors):  # type: ignore[no-untyped-def]
            assert mv.spec is not None
            return codec.encode_infer_response(request, mv.spec, outputs, names)

        return await self._plane.infer(
            method, request.model_name, request.model_version, decode, encode, context
        )

    async def ModelStreamInfer(
        self,
        request_iterator: AsyncIterator[pb.ModelInferRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Requests on one stream run concurrently (so they can batch); responses carry
        the request id and come back as they finish. A failed request answers with
        error_message and the stream goes on."""
        done: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        pending: set[asyncio.Task[None]] = set()

        async def one(request: pb.ModelInferRequest) -> None:
            try:
                response = await self._infer(request, context, "ModelStreamInfer")
                await done.put(pb.ModelStreamInferResponse(infer_response=response))
            except ServingError as exc:
                await done.put(
                    pb.ModelStreamInferResponse(
                        error_message=f"{exc.code.name}: {exc.message}",
                        infer_response=pb.ModelInferResponse(
                            model_name=request.model_name, id=request.id
                        ),
                    )
                )
            except Exception:
                log.exception("stream request failed")
                await done.put(
                    pb.ModelStreamInferResponse(
                        error_message="INTERNAL: internal server error",
                        infer_response=pb.ModelInferResponse(
                            model_name=request.model_name, id=request.id
                        ),
                    )
                )

        async def reader() -> None:
            async for request in request_iterator:
                task = asyncio.create_task(one(request))
                pending.add(task)
                task.add_done_callback(pending.discard)
            if pending:
                await asyncio.gather(*pending)
            await done.put(None)

        read_task = asyncio.create_task(reader())
        try:
            while (item := await done.get()) is not None:
                yield item
        finally:
            read_task.cancel()
            for task in pending:
                task.cancel()

    # ------------------------------------------------------------- not offered

    async def _unsupported(self, request, context):  # type: ignore[no-untyped-def]
        raise NotSupported("shared memory, tracing and log settings are not supported by nnserve")

    SystemSharedMemoryStatus = _unsupported
    SystemSharedMemoryRegister = _unsupported
    SystemSharedMemoryUnregister = _unsupported
    CudaSharedMemoryStatus = _unsupported
    CudaSharedMemoryRegister = _unsupported
    CudaSharedMemoryUnregister = _unsupported
    TraceSetting = _unsupported
    LogSettings = _unsupported
