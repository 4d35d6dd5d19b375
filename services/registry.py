"""Model lifecycle: load (session, golden check, warm-up), versions, unload.

Discovery lives in repository.py; readiness rules in readiness.py. A loaded model is one
immutable LoadedModel built here, in one place; a version record holds it beside its
state. A version that fails to load or fails its goldens stays visible with state FAILED
and the reason, and never serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from contract.model import ModelLoadError, ModelSpec, read_spec, scan
from services.batching import Batcher
from services.codec import DomainModel
from services.errors import ModelNotFound, Unavailable, shown
from services.merge import BatchLayout
from services.metrics import Metrics
from services.runtime import ModelSession, check_goldens, open_session, warm_up
from services.settings import ServingConfig, Settings
from services.workers import InferenceThreads

log = logging.getLogger(__name__)


class ModelState(StrEnum):
    LOADING = "LOADING"
    READY = "READY"
    FAILED = "UNAVAILABLE"  # Triton's word for a model that failed to load
    UNLOADING = "UNLOADING"


@dataclass
class InferStats:
    """Counters for ModelStatistics (Triton's cumulative counts and nanoseconds)."""

    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    fail_ns: int = 0
    inference_count: int = 0  # rows answered
    last_inference_ms: int = 0


@dataclass(frozen=True)
class LoadedModel:
    """One model version that loaded and passed its checks: everything a request needs."""

    spec: ModelSpec
    config: ServingConfig
    session: ModelSession
    batcher: Batcher
    domain: DomainModel  # lookups for the domain API (feature order, vocabulary)
    load_seconds: float
    stats: InferStats = field(default_factory=InferStats)
    # The explain graph's batcher (model.json "explain"); only explain requests use it.
    explainer: Batcher | None = None

    @property
    def batchers(self) -> tuple[Batcher, ...]:
        return (self.batcher,) if self.explainer is None else (self.batcher, self.explainer)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def version(self) -> int:
        return self.spec.version

    @property
    def provider(self) -> str:
        return self.session.provider

    @property
    def fallback_reason(self) -> str:
        """Why it runs on the CPU although its policy allows CUDA ("" when it does not)."""
        reason = self.session.fallback_reason
        return reason.value if reason is not None else ""


@dataclass
class ModelVersion:
    """A version the registry knows of: its state, and the loaded model once READY."""

    name: str
    version: int
    state: ModelState
    reason: str = ""
    model: LoadedModel | None = None  # set exactly when the load succeeded

    @property
    def ready(self) -> bool:
        return self.state is ModelState.READY


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
        self._serving: dict[str, LoadedModel] = {}

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
        ready = [v.model for v in self._models.get(name, {}).values() if v.ready and v.model]
        if ready:
            self._serving[name] = max(ready, key=lambda m: m.version)
        else:
            self._serving.pop(name, None)

    # ------------------------------------------------------------------ queries

    def names(self) -> list[str]:
        return sorted(self._models)

    def versions(self, name: str) -> dict[int, ModelVersion]:
        return self._models.get(name, {})

    def all_versions(self) -> list[ModelVersion]:
        return [mv for name in self.names() for mv in self._models[name].values()]

    def record(self, name: str, version: str = "") -> ModelVersion:
        """The version record a request addresses, ready or not ("" = highest ready, else
        highest); NOT_FOUND for an unknown model or version."""
        versions = self._models.get(name)
        if not versions:
            served = ", ".join(self.names())
            raise ModelNotFound(f"unknown model {shown(name)}; served models: {served}")
        if not version:
            ready = [v for v in versions.values() if v.ready]
            return max(ready or versions.values(), key=lambda v: v.version)
        # str.isdigit accepts '²' and '①'; only ASCII digits name a version.
        valid = len(version) <= 18 and version.isascii() and version.isdigit()
        number = int(version) if valid else None
        if number is None or number not in versions:
            raise ModelNotFound(
                f"model {shown(name)} has no version {shown(version)}; "
                f"versions: {', '.join(str(v) for v in sorted(versions))}"
            )
        return versions[number]

    def resolve(self, name: str, version: str = "") -> LoadedModel:
        """The loaded model a request addresses; raises NOT_FOUND or UNAVAILABLE."""
        if not version:
            serving = self._serving.get(name)
            if serving is not None:
                return serving
        mv = self.record(name, version)
        if mv.model is None or not mv.ready:
            detail = f": {mv.reason}" if mv.reason else ""
            raise Unavailable(f"model {name!r} version {mv.version} is {mv.state.value}{detail}")
        return mv.model

    # ------------------------------------------------------------------ lifecycle

    async def load(self, name: str) -> list[ModelVersion]:
        """(Re)load every version of a model found in the repository."""
        async with self._lock:
            found = scan(self._settings.repository).get(name)
            if not found:
                raise ModelNotFound(f"model {shown(name)} is not in the model repository")
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
            spec, config, session, explain = await asyncio.to_thread(self._open, name, version)
        except ModelLoadError as exc:
            log.error("model %s/%d failed to load: %s", name, version, exc)
            self._set_state(mv, ModelState.FAILED, str(exc))
            return mv
        except Exception as exc:
            log.exception("model %s/%d: unexpected load failure", name, version)
            self._set_state(mv, ModelState.FAILED, f"load failed: {type(exc).__name__}: {exc}")
            return mv
        mv.model = self._assemble(spec, config, session, explain, time.perf_counter() - start)
        self._set_state(mv, ModelState.READY)
        log.info(
            "model %s/%d ready on %s (policy %s) in %.2fs",
            name, version, session.provider, config.device_policy.value, mv.model.load_seconds,
        )  # fmt: skip
        return mv

    def _open(
        self, name: str, version: int
    ) -> tuple[ModelSpec, ServingConfig, ModelSession, ModelSession | None]:
        spec = read_spec(self._settings.repository, name, version)
        config = self._settings.serving_config(name, spec.serving)
        session = self._session(spec, config)
        explain = None
        if spec.explain is not None:
            try:
                explain = self._session(spec.explain.graph, config)
            except ModelLoadError as exc:
                raise ModelLoadError(f"explain graph: {exc}") from exc
        return spec, config, session, explain

    def _session(self, spec: ModelSpec, config: ServingConfig) -> ModelSession:
        """Open one graph of a model version: session, golden check, warm-up."""
        max_batch = config.max_batch_size
        session = open_session(
            spec,
            config.device_policy,
            self._settings.intra_op_threads,
            (1, min(8, max_batch), max_batch),
        )
        if self._settings.verify_goldens:
            check_goldens(spec, session)
        warm_up(spec, session, (1, max_batch))
        return session

    def _assemble(
        self,
        spec: ModelSpec,
        config: ServingConfig,
        session: ModelSession,
        explain: ModelSession | None,
        load_seconds: float,
    ) -> LoadedModel:
        """The one place a LoadedModel is built (with its batchers and metrics)."""
        name, v = spec.name, str(spec.version)
        batcher = self._batcher(spec, config, session, name)
        explainer = None
        if explain is not None and spec.explain is not None:
            # Its batch metrics are labelled model="<name>:explain" (docs/metrics.md).
            explainer = self._batcher(spec.explain.graph, config, explain, f"{name}:explain")
        self._metrics.model_load_seconds.labels(name, v, session.provider).set(load_seconds)
        self._metrics.model_info.labels(name, v, spec.family, spec.task, session.provider).set(1)
        if session.fallback_reason is not None:
            self._metrics.provider_fallback.labels(name, v, session.fallback_reason.value).set(1)
        for provider, timings in session.placement.items():
            for rows, seconds in timings.items():
                self._metrics.placement.labels(name, v, provider, str(rows)).set(seconds)
        return LoadedModel(
            spec, config, session, batcher, DomainModel(spec), load_seconds, explainer=explainer
        )

    def _batcher(
        self, spec: ModelSpec, config: ServingConfig, session: ModelSession, label: str
    ) -> Batcher:
        return Batcher(
            f"{label}/{spec.version}",
            session,
            BatchLayout.for_model(spec),
            self._threads,
            self._metrics.for_model(label, spec.version, session.providers),
            config,
            max_in_flight=self._settings.inference_threads,
        )

    async def unload(self, name: str) -> None:
        """Stop serving every version of a model; queued requests finish first."""
        async with self._lock:
            versions = self._models.get(name)
            if not versions:
                raise ModelNotFound(f"unknown model {shown(name)}")
            for mv in versions.values():
                if mv.model is not None:
                    for batcher in mv.model.batchers:
                        batcher.close()
                self._set_state(mv, ModelState.UNLOADING, "unloading")
            for mv in versions.values():
                while mv.model is not None and any(b.busy for b in mv.model.batchers):
                    await asyncio.sleep(0.005)
                # An unloaded model is not "not ready": drop its series so no alert fires.
                with contextlib.suppress(KeyError):
                    self._metrics.model_ready.remove(name, str(mv.version))
            del self._models[name]
            self._update_serving(name)

    def drain(self) -> None:
        """Refuse new requests on every model; queued and running ones complete."""
        for mv in self.all_versions():
            if mv.model is not None:
                for batcher in mv.model.batchers:
                    batcher.close()

    def busy(self) -> bool:
        return any(
            b.busy for mv in self.all_versions() if mv.model is not None for b in mv.model.batchers
        )
