"""nnserve.v1.Routing (admin role): which version of a model serves and which one shadows
it (services/core/registry.py Route, services/core/shadow.py)."""

from __future__ import annotations

from typing import TypeAlias

import grpc

from protos import nnserve_pb2 as npb
from protos import nnserve_pb2_grpc as npb_grpc
from services.core.registry import ModelRegistry, RouteState

Context: TypeAlias = grpc.aio.ServicerContext


class RoutingServicer(npb_grpc.RoutingServicer):
    def __init__(self, registry: ModelRegistry) -> None:
        self._registry = registry

    async def SetShadow(self, request: npb.SetShadowRequest, context: Context) -> npb.RouteResponse:
        return _answer(self._registry.set_shadow(request.model_name, request.shadow_version))

    async def PromoteShadow(
        self, request: npb.PromoteShadowRequest, context: Context
    ) -> npb.RouteResponse:
        return _answer(self._registry.promote_shadow(request.model_name))


def _answer(route: RouteState) -> npb.RouteResponse:
    return npb.RouteResponse(
        model_name=route.name,
        serving_version="" if route.serving is None else str(route.serving),
        shadow_version="" if route.shadow is None else str(route.shadow),
        pinned=route.pinned,
    )
