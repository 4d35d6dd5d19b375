"""Model lifecycle: load (session, golden check, warm-up), readiness, versions, unload.

Discovery lives in repository.py; this module decides what is ready. A model that fails
to load or fails its goldens stays visible with state FAILED and the reason, and never
serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from services.batching import Batcher
from services.errors import ModelLoadError, ModelNotFound, Unavailable
from services.merge import BatchLayout
from services.metrics import Metrics
from services.repository import ModelSpec, read_spec, scan
from services.runtime import ModelSession, check_goldens, open_session, warm_up
from services.settings import DevicePolicy, Settings
from services.workers import InferenceThreads

log = logging.getLogger(__name__)


class ModelState(StrEnum):
    LOADING = "LOADING"
    READY = "READY"
    FAILED = "UNAVAILABLE"  # Triton's word for a model that failed to load
    UNLOADING = "UNLOADING"


@dataclass
class ModelVersion:
    name: str
    version: int
    state: ModelState
    reason: str = ""
    spec: ModelSpec | None = None
    session: ModelSession | None = None
    batcher: Batcher | None = None
    provider: str = ""
    policy: DevicePolicy | None = None
    load_seconds: float = 0.0
    stats: InferStats = field(default_factory=lambda: InferStats())

    @property
    def ready(self) -> bool:
        return self.state is ModelState.READY


@dataclass
class InferStats:
    """Counters for ModelStatistics (Triton's cumulative counts and nanoseconds)."""

    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    fail_ns: int = 0
    inference_count: int = 0  # rows answered
    last_inference_ms: int = 0


StateListener = Callable[[ModelVersion], None]


class ModelRegistry:
    def __init__(self, settings: Settings, metrics: Metrics, threads: InferenceThreads) -> None:
        self._settings = settings
        self._metrics = metrics
        self._threads = threads
        self._models: dict[str, dict[int, ModelVersion]] = {}
        self._listeners: list[StateListener] = []
        self._lock = asyncio.Lock()
        # name -> highest READY version: the hot path's lookup, kept current on every change
        self._serving: dict[str, ModelVersion] = {}

    def add_listener(self, listener: StateListener) -> None:
        self._listeners.append(listener)

    def _set_state(self, mv: ModelVersion, state: ModelState, reason: str = "") -> None:
        mv.state = state
        mv.reason = reason
        self._update_serving(mv.name)
        ready = 1.0 if state is ModelState.READY else 0.0
        self._metrics.model_ready.labels(mv.name, str(mv.version)).set(ready)
        for listener in self._listeners:
            listener(mv)

    def _update_serving(self, name: str) -> None:
        ready = [v for v in self._models.get(name, {}).values() if v.ready]
        if ready:
            self._serving[name] = max(ready, key=lambda v: v.version)
        else:
            self._serving.pop(name, None)

    # ------------------------------------------------------------------ queries

    def names(self) -> list[str]:
        return sorted(self._models)

    def versions(self, name: str) -> dict[int, ModelVersion]:
        return self._models.get(name, {})

    def all_versions(self) -> list[ModelVersion]:
        return [mv for name in self.names() for mv in self._models[name].values()]

    def resolve(self, name: str, version: str = "") -> ModelVersion:
        """The version a request addresses ("" = highest ready); raises NOT_FOUND/UNAVAILABLE."""
        if not version:
            serving = self._serving.get(name)
            if serving is not None:
                return serving
        versions = self._models.get(name)
        if not versions:
            raise ModelNotFound(f"unknown model {name!r}; served models: {', '.join(self.names())}")
        if version:
            if not version.isdigit() or int(version) not in versions:
                raise ModelNotFound(
                    f"model {name!r} has no version {version!r}; "
                    f"versions: {', '.join(str(v) for v in sorted(versions))}"
                )
            mv = versions[int(version)]
        else:
            ready = [v for v in versions.values() if v.ready]
            if not ready:
                mv = versions[max(versions)]
            else:
                return max(ready, key=lambda v: v.version)
        if not mv.ready:
            detail = f": {mv.reason}" if mv.reason else ""
            raise Unavailable(f"model {name!r} version {mv.version} is {mv.state.value}{detail}")
        return mv

    def resolve_any(self, name: str, version: str = "") -> ModelVersion:
        """Like resolve, but returns versions that are not ready (metadata, status)."""
        try:
            return self.resolve(name, version)
        except Unavailable:
            versions = self._models[name]
            return versions[int(version)] if version else versions[max(versions)]

    # ------------------------------------------------------------------ lifecycle

    async def load(self, name: str) -> list[ModelVersion]:
        """(Re)load every version of a model found in the repository."""
        async with self._lock:
            found = scan(self._settings.repository).get(name)
            if not found:
                raise ModelNotFound(
                    f"model {name!r} is not in the repository {self._settings.repository.name!r}"
                )
            loaded = []
            for version in found:
                current = self._models.get(name, {}).get(version)
                if current is not None and current.ready:
                    loaded.append(current)
                    continue
                loaded.append(await self._load_version(name, version))
            return loaded

    async def load_startup(self) -> None:
        """Load the configured models ("*" = all in the repository); failures stay visible."""
        wanted = self._settings.models or []
        found = scan(self._settings.repository)
        names = sorted(found) if "*" in wanted else wanted
        for name in names:
            if name not in found:
                mv = ModelVersion(name, 1, ModelState.LOADING)
                self._models.setdefault(name, {})[1] = mv
                self._set_state(
                    mv, ModelState.FAILED, f"not found in the model repository ({name}/<version>/)"
                )
                log.error("model %s: not found in the repository", name)
                continue
            await self.load(name)

    async def _load_version(self, name: str, version: int) -> ModelVersion:
        mv = ModelVersion(name, version, ModelState.LOADING)
        self._models.setdefault(name, {})[version] = mv
        self._set_state(mv, ModelState.LOADING)
        start = time.perf_counter()
        try:
            # Blocking work (file reads, session creation, goldens) off the event loop.
            spec, session, policy = await asyncio.to_thread(self._open, name, version)
        except ModelLoadError as exc:
            log.error("model %s/%d failed to load: %s", name, version, exc)
            self._set_state(mv, ModelState.FAILED, str(exc))
            return mv
        except Exception as exc:
            log.exception("model %s/%d: unexpected load failure", name, version)
            self._set_state(mv, ModelState.FAILED, f"load failed: {type(exc).__name__}: {exc}")
            return mv
        mv.spec, mv.session, mv.policy, mv.provider = spec, session, policy, session.provider
        mv.load_seconds = time.perf_counter() - start
        mv.batcher = self._make_batcher(spec, session)
        v = str(version)
        self._metrics.model_load_seconds.labels(name, v, session.provider).set(mv.load_seconds)
        self._metrics.model_info.labels(name, v, spec.family, spec.task, session.provider).set(1)
        for provider, timings in session.placement.items():
            for rows, seconds in timings.items():
                self._metrics.placement.labels(name, v, provider, str(rows)).set(seconds)
        self._set_state(mv, ModelState.READY)
        log.info(
            "model %s/%d ready on %s (policy %s) in %.2fs",
            name, version, session.provider, policy.value, mv.load_seconds,
        )  # fmt: skip
        return mv

    def _open(self, name: str, version: int) -> tuple[ModelSpec, ModelSession, DevicePolicy]:
        spec = read_spec(self._settings.repository, name, version)
        policy = self._settings.policy_for(name, spec.serving.device_policy)
        max_batch = self._max_batch(spec)
        session = open_session(
            spec, policy, self._settings.intra_op_threads, (1, min(8, max_batch), max_batch)
        )
        if self._settings.verify_goldens:
            check_goldens(spec, session)
        warm_up(spec, session, (1, max_batch))
        return spec, session, policy

    def _max_batch(self, spec: ModelSpec) -> int:
        return self._settings.max_batch_size or spec.serving.max_batch_size

    def _make_batcher(self, spec: ModelSpec, session: ModelSession) -> Batcher:
        s = self._settings
        delay_ms = (
            s.max_queue_delay_ms
            if s.max_queue_delay_ms is not None
            else spec.serving.max_queue_delay_ms
        )
        return Batcher(
            f"{spec.name}/{spec.version}",
            session,
            BatchLayout.for_model(spec),
            self._threads,
            self._metrics.for_model(spec.name, spec.version, session.providers),
            max_batch_size=self._max_batch(spec),
            max_queue_delay_s=delay_ms / 1000.0,
            max_queue_size=s.max_queue_size,
            max_in_flight=s.inference_threads,
        )

    async def unload(self, name: str) -> None:
        """Stop serving every version of a model; queued requests finish first."""
        async with self._lock:
            versions = self._models.get(name)
            if not versions:
                raise ModelNotFound(f"unknown model {name!r}")
            for mv in versions.values():
                if mv.batcher is not None:
                    mv.batcher.close()
                self._set_state(mv, ModelState.UNLOADING, "unloading")
            for mv in versions.values():
                while mv.batcher is not None and mv.batcher.busy:
                    await asyncio.sleep(0.005)
                # An unloaded model is not "not ready": drop its series so no alert fires.
                with contextlib.suppress(KeyError):
                    self._metrics.model_ready.remove(name, str(mv.version))
            del self._models[name]
            self._update_serving(name)

    def drain(self) -> None:
        """Refuse new requests on every model; queued and running ones complete."""
        for mv in self.all_versions():
            if mv.batcher is not None:
                mv.batcher.close()

    def busy(self) -> bool:
        return any(mv.batcher is not None and mv.batcher.busy for mv in self.all_versions())
