"""Readiness of the server, its services and each model, computed in one place.

Health (grpc.health.v1), ServerReady / ModelReady and DescribeModel all ask this module.
The rules, as docs/protocol.md states them:
- ServerReady (strict, like Triton's strict readiness): loading finished, not draining,
  and every configured model has a ready version.
- Serving (grpc.health.v1 overall and per service, what load balancers probe): loading
  finished, not draining, and at least one model ready, so a replica whose repository has
  one broken model still serves the others; per-model health shows which one is broken.
- A model is ready when the version asked for (empty: the highest ready one) is READY and
  the server is not draining.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.core.registry import ModelRegistry, ModelVersion


@dataclass
class ServerState:
    """Process-wide lifecycle flags; the server sets them, everything else reads them."""

    started: bool = False  # startup loading finished
    draining: bool = False  # stop() began: refuse new requests


class Readiness:
    def __init__(self, state: ServerState, registry: ModelRegistry) -> None:
        self._state = state
        self._registry = registry

    def server_ready(self) -> bool:
        if not self._state.started or self._state.draining:
            return False
        names = self._registry.names()
        return bool(names) and all(self.model_ready(name) for name in names)

    def serving(self) -> bool:
        if not self._state.started or self._state.draining:
            return False
        return any(self.model_ready(name) for name in self._registry.names())

    def model_ready(self, name: str, version: str = "") -> bool:
        """NOT_FOUND for a model or version the registry does not know."""
        record = self._registry.record(name, version)
        return record.ready and not self._state.draining

    def describe(self, name: str, version: str = "") -> ModelVersion:
        """The version record to describe (ready or not); NOT_FOUND when unknown."""
        return self._registry.record(name, version)
