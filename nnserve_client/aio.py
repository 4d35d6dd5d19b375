"""asyncio client for nnserve's domain API and gRPC health, on grpc.aio.

    from nnserve_client.aio import AsyncNNServeClient

    async with AsyncNNServeClient("127.0.0.1:50051") as client:
        result = await client.classify_tabular("mlp", [{"age": 35, ...}], top_k=2)

The same methods, arguments, results and errors as :class:`nnserve_client.NNServeClient`;
requests and results are built by the same functions, so the two cannot drift apart.
Many calls may be in flight at once on one client (``asyncio.gather``). TLS, mutual
TLS and tokens as for the blocking client (:func:`nnserve_client.open_channel`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nnserve_client import (
    DEFAULT_TIMEOUT_S,
    Batch,
    ClassifyResult,
    ExplainOptions,
    ModelDescription,
    NNServeError,
    PathLike,
    Route,
    SequenceResult,
    ServingStatus,
    _bearer,
    _classify_answer,
    _classify_result,
    _classify_stream_requests,
    _credentials,
    _description,
    _images_request,
    _route,
    _sequence_request,
    _sequence_result,
    _serving_status,
    _tabular_request,
    _tls_options,
    _unknown_service,
)
from protos import nnserve_pb2, nnserve_pb2_grpc

__all__ = ["AsyncNNServeClient", "open_aio_channel"]


def open_aio_channel(
    address: str,
    *,
    tls: bool = False,
    ca: PathLike | None = None,
    cert: PathLike | None = None,
    key: PathLike | None = None,
    server_name: str | None = None,
) -> grpc.aio.Channel:
    """The grpc.aio twin of :func:`nnserve_client.open_channel` (same arguments)."""
    credentials = _credentials(tls, ca, cert, key)
    if credentials is None:
        return grpc.aio.insecure_channel(address)
    return grpc.aio.secure_channel(address, credentials, options=_tls_options(server_name))


class AsyncNNServeClient:
    """asyncio client for one nnserve process (classify or sequence service)."""

    def __init__(
        self,
        address: str,
        timeout: float = DEFAULT_TIMEOUT_S,
        *,
        channel: grpc.aio.Channel | None = None,
        tls: bool = False,
        ca: PathLike | None = None,
        cert: PathLike | None = None,
        key: PathLike | None = None,
        server_name: str | None = None,
        token: str | None = None,
    ) -> None:
        """``address`` is host:port; ``timeout`` (seconds) is the deadline of each call.

        ``tls``, ``ca``, ``cert``, ``key``, ``server_name``: see :func:`open_aio_channel`.
        ``token``: sent as ``authorization: Bearer <token>`` on every call. Pass
        ``channel`` (a grpc.aio channel you configured) to use it; it is then yours to
        close. Create the client inside a running event loop.
        """
        self.address = address
        self.timeout = timeout
        self._owns_channel = channel is None
        self._channel = (
            channel
            if channel is not None
            else open_aio_channel(
                address, tls=tls, ca=ca, cert=cert, key=key, server_name=server_name
            )
        )
        self._metadata = _bearer(token)
        self._predictor = nnserve_pb2_grpc.PredictorStub(self._channel)
        self._routing = nnserve_pb2_grpc.RoutingStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    async def close(self) -> None:
        if self._owns_channel:
            await self._channel.close()

    async def __aenter__(self) -> AsyncNNServeClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _call(self, method: Any, request: Any) -> Any:
        try:
            return await method(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as err:
            raise NNServeError(err.code(), err.details() or "") from None

    async def classify_tabular(
        self,
        model: str,
        rows: Sequence[Mapping[str, float]] | np.ndarray,
        top_k: int = 1,
        *,
        version: str = "",
    ) -> ClassifyResult:
        """See :meth:`nnserve_client.NNServeClient.classify_tabular`."""
        request = _tabular_request(model, rows, top_k, version)
        return _classify_result(await self._call(self._predictor.Classify, request))

    async def classify_stream(
        self,
        model: str,
        batches: Iterable[Batch],
        top_k: int = 1,
        *,
        version: str = "",
        images: bool = False,
        timeout: float | None = None,
    ) -> AsyncIterator[tuple[int, ClassifyResult | NNServeError]]:
        """See :meth:`nnserve_client.NNServeClient.classify_stream` (``async for``)."""
        requests = _classify_stream_requests(model, batches, top_k, version, images)
        call = self._predictor.ClassifyStream(requests, timeout=timeout, metadata=self._metadata)
        try:
            async for answer in call:
                yield _classify_answer(answer)
        except grpc.aio.AioRpcError as err:
            raise NNServeError(err.code(), err.details() or "") from None
        finally:
            call.cancel()

    async def classify_images(
        self, model: str, images: np.ndarray, top_k: int = 1, *, version: str = ""
    ) -> ClassifyResult:
        """See :meth:`nnserve_client.NNServeClient.classify_images`."""
        request = _images_request(model, images, top_k, version)
        return _classify_result(await self._call(self._predictor.Classify, request))

    async def score_sequences(
        self,
        model: str,
        sequences: Sequence[Sequence[str] | Sequence[int] | np.ndarray],
        per_position: bool = True,
        *,
        version: str = "",
        explain: ExplainOptions | None = None,
    ) -> SequenceResult:
        """See :meth:`nnserve_client.NNServeClient.score_sequences`."""
        request, steps = _sequence_request(model, sequences, per_position, version, explain)
        return _sequence_result(await self._call(self._predictor.Sequence, request), steps)

    async def describe(self, model: str, *, version: str = "") -> ModelDescription:
        request = nnserve_pb2.DescribeModelRequest(model_name=model, model_version=version)
        return _description(await self._call(self._predictor.DescribeModel, request))

    async def set_shadow(self, model: str, version: str) -> Route:
        """See :meth:`nnserve_client.NNServeClient.set_shadow`."""
        request = nnserve_pb2.SetShadowRequest(model_name=model, shadow_version=version)
        return _route(await self._call(self._routing.SetShadow, request))

    async def promote_shadow(self, model: str) -> Route:
        """See :meth:`nnserve_client.NNServeClient.promote_shadow`."""
        request = nnserve_pb2.PromoteShadowRequest(model_name=model)
        return _route(await self._call(self._routing.PromoteShadow, request))

    async def health(self, service: str = "") -> ServingStatus:
        """See :meth:`nnserve_client.NNServeClient.health`."""
        try:
            response = await self._call(
                self._health.Check, health_pb2.HealthCheckRequest(service=service)
            )
        except NNServeError as err:
            return _unknown_service(err)
        return _serving_status(response)
