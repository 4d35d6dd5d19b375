"""Model lifecycle: load (session, golden check, warm-up), versions, retire, unload.

Discovery is the repository scan of contract/model.py; readiness rules live in
readiness.py; who may change the served models, and when, in model_control.py. A loaded
model is one immutable LoadedModel built here, in one place; a version record holds it
beside its state. A version that fails to load or fails its goldens stays visible with
state FAILED and the reason, and never serves. Which versions serve follows the version
policy (`_sync`); a version taken out of service is first made unresolvable, then drained
(`_retire`). Which version answers requests that name none, and which one shadows it,
is the model's route (`Route`: the setting `shadows`, SetShadow, PromoteShadow).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from contract.model import ModelLoadError, ModelSpec, read_spec, scan
from services.batching.adaptive import AdaptiveBatching
from services.batching.batcher import Batcher
from services.batching.merge import BatchLayout
from services.batching.threads import InferenceThreads
from services.core.drift import DriftWindow
from services.core.names import check_model_name, check_version, inside
from services.core.runtime import (
    ModelSession,
    check_goldens,
    open_session,
    single_row_seconds,
    warm_up,
)
from services.core.shadow import Shadow, incompatibility
from services.core.stepping import Stepper, build_stepper, open_step
from services.errors import FailedPrecondition, ModelNotFound, Unavailable, shown
from services.ops.metrics import Metrics
from services.settings import ServingConfig, Settings

log = logging.getLogger(__name__)


Stamp = tuple[tuple[str, int, int, int], ...]


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
    load_seconds: float
    single_row_seconds: float  # median ORT time of a one-row request, measured at load
    stats: InferStats = field(default_factory=InferStats)
    stepper: Stepper | None = None  # the step graph, for streaming sessions (model.json step)
    # The explain graph's batcher (model.json "explain"); only explain requests use it.
    explainer: Batcher | None = None
    # Live inputs against the training inputs (model.json "drift_reference"), if any.
    drift: DriftWindow | None = None

    @property
    def batchers(self) -> tuple[Batcher, ...]:
        """Every batcher of this version (main, explain, step): all close and drain together."""
        extra = (self.explainer, self.stepper.batcher if self.stepper is not None else None)
        return (self.batcher, *(b for b in extra if b is not None))

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
    def busy(self) -> bool:
        return any(b.busy for b in self.batchers)

    def close(self) -> None:
        """Refuse new work on every batcher (requests, explanations, session events);
        queued work still runs."""
        for batcher in self.batchers:
            batcher.close()

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
    stamp: Stamp = ()  # the version folder's files when loaded: poll retries on change

    @property
    def ready(self) -> bool:
        return self.state is ModelState.READY

    def loaded(self) -> LoadedModel:
        """The loaded model to describe; UNAVAILABLE (with the reason) when it never loaded."""
        if self.model is None:
            raise Unavailable(
                f"model {self.name!r} version {self.version} is {self.state.value}: {self.reason}"
            )
        return self.model


StateListener = Callable[[ModelVersion], None]


@dataclass
class Route:
    """Which version of a model answers requests naming none, and which one shadows it.
    Serving: the pinned version while it is ready, else the highest ready version other
    than the shadow (the shadow itself when no other is ready, and then it shadows none)."""

    pinned: int | None = None  # set by PromoteShadow
    shadow: int | None = None

    def serving(self, ready: dict[int, LoadedModel]) -> LoadedModel | None:
        if self.pinned in ready:
            return ready[self.pinned]
        others = [v for v in ready if v != self.shadow] or list(ready)
        return ready[max(others)] if others else None


@dataclass(frozen=True)
class RouteState:
    """A model's route as it stands (the answer of SetShadow and PromoteShadow)."""

    name: str
    serving: int | None
    shadow: int | None  # mirrored now (ready, compatible, not the serving version)
    pinned: bool


@dataclass(frozen=True)
class SyncResult:
    """What bringing one model in line with the repository did."""

    name: str
    failed: list[ModelVersion]  # versions this load tried and that did not become ready
    serving: list[int]  # versions ready afterwards


def _stamp(directory: Path) -> Stamp:
    """(name, size, mtime, inode) of a version folder's files: changes when a file is
    replaced, so poll mode retries a failed version only after it was fixed."""
    files = []
    try:
        for path in directory.iterdir():
            st = path.stat()
            if path.is_file():
                files.append((path.name, st.st_size, st.st_mtime_ns, st.st_ino))
    except OSError:
        return ()
    return tuple(sorted(files))


class ModelRegistry:
    def __init__(self, settings: Settings, metrics: Metrics, threads: InferenceThreads) -> None:
        self._settings = settings
        self._metrics = metrics
        self._threads = threads
        self._models: dict[str, dict[int, ModelVersion]] = {}
        self._listeners: list[StateListener] = []
        self._lock = asyncio.Lock()
        # name -> the version requests naming none get (Route.serving): the hot path's
        # lookup, kept current on every change
        self._serving: dict[str, LoadedModel] = {}
        self._routes: dict[str, Route] = {}
        # name -> the shadow mirroring its serving version, while there is one
        self.shadows: dict[str, Shadow] = {}

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

    def _route(self, name: str) -> Route:
        route = self._routes.get(name)
        if route is None:
            route = self._routes[name] = Route(shadow=self._settings.shadows.get(name))
        return route

    def _ready(self, name: str) -> dict[int, LoadedModel]:
        """The model's ready versions by number."""
        return {v: mv.model for v, mv in self.versions(name).items() if mv.ready and mv.model}

    def _update_serving(self, name: str) -> None:
        ready = self._ready(name)
        route = self._route(name)
        serving = route.serving(ready)
        if serving is None:
            self._serving.pop(name, None)
        else:
            self._serving[name] = serving
        shadow = ready.get(route.shadow) if route.shadow is not None else None
        current = self.shadows.get(name)
        if serving is None or shadow is None or shadow is serving:
            if current is not None:
                self._stop_shadow(name)
            return
        if current is not None and current.serving is serving and current.shadow is shadow:
            return
        if current is not None:
            self._stop_shadow(name)
        why = incompatibility(serving.spec, shadow.spec)
        if why:
            log.warning(
                "model %s: version %d does not shadow version %d: %s",
                name, shadow.version, serving.version, why,
            )  # fmt: skip
            return
        self.shadows[name] = Shadow(
            serving, shadow, self._metrics,
            max_bytes=self._settings.shadow_queue_bytes,
            min_agreement=self._settings.shadow_min_agreement,
        )  # fmt: skip
        log.info("model %s: version %d shadows version %d", name, shadow.version, serving.version)

    def _stop_shadow(self, name: str) -> None:
        shadow = self.shadows.pop(name, None)
        if shadow is not None:
            shadow.stop()

    # ------------------------------------------------------------------ queries

    def names(self) -> list[str]:
        return sorted(self._models)

    def versions(self, name: str) -> dict[int, ModelVersion]:
        return self._models.get(name, {})

    def all_versions(self) -> list[ModelVersion]:
        return [mv for name in self.names() for mv in self._models[name].values()]

    def record(self, name: str, version: str = "") -> ModelVersion:
        """The version record a request addresses, ready or not ("" = highest ready, else
        highest); INVALID_ARGUMENT for a malformed name or version, NOT_FOUND for an
        unknown one."""
        versions = self._models.get(name)
        if not versions:
            check_model_name(name)
            served = ", ".join(self.names())
            raise ModelNotFound(f"unknown model {shown(name)}; served models: {served}")
        if not version:
            serving = self._serving.get(name)
            if serving is not None:
                return versions[serving.version]
            return max(versions.values(), key=lambda v: v.version)
        number = check_version(version)
        if number not in versions:
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

    # ------------------------------------------------------------------ routing

    def route(self, name: str) -> RouteState:
        self.record(name)  # NOT_FOUND for a model the registry does not know
        serving, shadow = self._serving.get(name), self.shadows.get(name)
        return RouteState(
            name,
            serving.version if serving is not None else None,
            shadow.shadow.version if shadow is not None else None,
            pinned=serving is not None and serving.version == self._route(name).pinned,
        )

    def set_shadow(self, name: str, version: str) -> RouteState:
        """SetShadow: `version` (ready, compatible) shadows the serving version; "" none."""
        self._routing_allowed("SetShadow")
        self.record(name)
        route = self._route(name)
        if not version:
            route.shadow = None
            self._update_serving(name)
            return self.route(name)
        mv = self.record(name, version)
        ready = self._ready(name)
        if mv.version not in ready:
            raise FailedPrecondition(
                f"model {name!r} version {mv.version} is {mv.state.value}; only a ready "
                "version can shadow"
            )
        candidate = Route(route.pinned if route.pinned != mv.version else None, mv.version)
        serving = candidate.serving(ready)
        if serving is None or serving.version == mv.version:
            raise FailedPrecondition(
                f"model {name!r} has no other ready version to serve beside version "
                f"{mv.version} (the version policy must keep both loaded)"
            )
        why = incompatibility(serving.spec, ready[mv.version].spec)
        if why:
            raise FailedPrecondition(
                f"model {name!r} version {mv.version} cannot shadow version "
                f"{serving.version}: {why}"
            )
        self._routes[name] = candidate
        self._update_serving(name)
        return self.route(name)

    def promote_shadow(self, name: str) -> RouteState:
        """PromoteShadow: the shadow serves from the next request on (pinned); requests
        already accepted finish on the version that accepted them, so none fails."""
        self._routing_allowed("PromoteShadow")
        self.record(name)
        shadow = self.shadows.get(name)
        if shadow is None:
            raise FailedPrecondition(f"model {name!r} has no shadow version to promote")
        self._routes[name] = Route(pinned=shadow.shadow.version)
        self._update_serving(name)
        return self.route(name)

    def _routing_allowed(self, rpc: str) -> None:
        if self._settings.workers > 1:  # each worker has its own registry
            raise FailedPrecondition(
                f"{rpc} is refused: with workers > 1 it would reach one worker; set "
                "NNSERVE_SHADOWS and restart instead"
            )

    # ------------------------------------------------------------------ lifecycle

    async def load(self, name: str, retry_failed: bool = True) -> SyncResult:
        """Bring one model in line with the repository and the version policy: load the
        versions the policy wants, retire (after draining) the ones it no longer wants.

        NOT_FOUND when the repository has no such model (nothing is touched then).
        """
        check_model_name(name)
        async with self._lock:
            found = scan(self._settings.repository).get(name)
            if not found:
                raise ModelNotFound(f"model {shown(name)} is not in the model repository")
            return await self._sync(name, found, retry_failed)

    async def sync_all(self, retry_failed: bool) -> None:
        """Every configured model ("*": every one in the repository) in line with the
        repository: new versions load, removed ones retire, a configured model that is
        missing is listed as failed. Used at start and by poll mode."""
        wanted = self._settings.models or []
        found = scan(self._settings.repository)
        names = sorted(set(found) | set(self._models)) if "*" in wanted else wanted
        for name in names:
            async with self._lock:
                if name in found:
                    await self._sync(name, found[name], retry_failed)
                elif "*" in wanted:
                    await self._retire_all(name)
                else:
                    await self._missing(name)

    async def load_startup(self) -> None:
        """Load the configured models; failures stay visible with their reason."""
        await self.sync_all(retry_failed=True)

    async def _sync(self, name: str, found: list[int], retry_failed: bool) -> SyncResult:
        """Load the versions of `found` the policy wants; retire all others."""
        policy = self._settings.versions
        keep: set[int] = set()
        failed: list[ModelVersion] = []
        ready = 0
        # Highest first: `latest:N` stops at N ready ones, so a broken new version is
        # kept (listed, not ready) and the good older one goes on serving.
        for version in sorted(found, reverse=True):
            if policy.latest is not None and ready >= policy.latest:
                break
            keep.add(version)
            mv = self.versions(name).get(version)
            stamp = _stamp(self._settings.repository / name / str(version))
            if mv is None or (
                mv.state is ModelState.FAILED and (retry_failed or mv.stamp != stamp)
            ):
                mv = await self._load_version(name, version, stamp)
                if not mv.ready:
                    failed.append(mv)
            ready += mv.ready
        for mv in list(self.versions(name).values()):
            if mv.version not in keep:
                await self._retire(mv)
        serving = sorted(v for v, mv in self.versions(name).items() if mv.ready)
        return SyncResult(name, failed, serving)

    async def _missing(self, name: str) -> None:
        """A configured model the repository lacks: listed as failed, so it is reported."""
        reason = f"not found in the model repository ({name}/<version>/)"
        current = list(self.versions(name).values())
        if current and all(mv.reason == reason for mv in current):
            return  # already reported
        for mv in current:
            await self._retire(mv)
        mv = ModelVersion(name, 1, ModelState.LOADING)
        self._models.setdefault(name, {})[1] = mv
        self._set_state(mv, ModelState.FAILED, reason)
        log.error("model %s: not found in the repository", name)

    async def _load_version(self, name: str, version: int, stamp: Stamp = ()) -> ModelVersion:
        mv = ModelVersion(name, version, ModelState.LOADING, stamp=stamp)
        self._models.setdefault(name, {})[version] = mv
        self._set_state(mv, ModelState.LOADING)
        start = time.perf_counter()
        try:
            # Blocking work (file reads, session creation, goldens) off the event loop.
            spec, config, session, explain, single_row, step = await asyncio.to_thread(
                self._open, name, version
            )
        except ModelLoadError as exc:
            return self._failed(mv, str(exc))
        except asyncio.CancelledError:  # server stopping: never leave a LOADING record
            self._set_state(mv, ModelState.FAILED, "load cancelled")
            raise
        except Exception as exc:
            log.exception("model %s/%d: unexpected load failure", name, version)
            return self._failed(mv, f"load failed: {type(exc).__name__}: {exc}")
        mv.model = self._assemble(
            spec, config, session, explain, time.perf_counter() - start, single_row, step
        )
        self._set_state(mv, ModelState.READY)
        log.info(
            "model %s/%d ready on %s (policy %s) in %.2fs",
            name, version, session.provider, config.device_policy.value, mv.model.load_seconds,
        )  # fmt: skip
        return mv

    def _failed(self, mv: ModelVersion, reason: str) -> ModelVersion:
        log.error("model %s/%d failed to load: %s", mv.name, mv.version, reason)
        self._metrics.model_load_failures.labels(mv.name).inc()
        self._set_state(mv, ModelState.FAILED, reason)
        return mv

    def _open(
        self, name: str, version: int
    ) -> tuple[
        ModelSpec, ServingConfig, ModelSession, ModelSession | None, float, ModelSession | None
    ]:
        root = self._settings.repository
        if not inside(root, root / name / str(version) / "model.json"):
            raise ModelLoadError("model.json resolves outside the model repository")
        spec = read_spec(root, name, version)
        if not inside(root, spec.onnx_file):
            raise ModelLoadError(f"{spec.onnx_file.name} resolves outside the model repository")
        config = self._settings.serving_config(name, spec.serving)
        session = self._session(spec, config)
        explain = None
        if spec.explain is not None:
            try:
                explain = self._session(spec.explain.graph, config)
            except ModelLoadError as exc:
                raise ModelLoadError(f"explain graph: {exc}") from exc
            if not inside(root, spec.explain.graph.onnx_file):
                raise ModelLoadError("the explain graph resolves outside the model repository")
        if spec.step is not None and not inside(root, spec.step.onnx_file):
            raise ModelLoadError("the step graph resolves outside the model repository")
        step = open_step(spec, config, self._settings)
        return spec, config, session, explain, single_row_seconds(spec, session), step

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
        single_row: float,
        step: ModelSession | None = None,
    ) -> LoadedModel:
        """The one place a LoadedModel is built (with its batchers and metrics)."""
        name, v = spec.name, str(spec.version)
        # The step batcher first: it publishes the static batch cap and queue delay, and
        # the model's own batcher (adaptive or not) then publishes its own over them.
        stepper = None
        if step is not None:
            stepper = build_stepper(
                spec, config, step, self._threads, self._metrics, self._settings.inference_threads
            )
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
        window = self._settings.drift_window
        drift = DriftWindow(spec.drift, window) if spec.drift is not None and window else None
        return LoadedModel(
            spec,
            config,
            session,
            batcher,
            load_seconds,
            single_row,
            stepper=stepper,
            explainer=explainer,
            drift=drift,
        )

    def _batcher(
        self,
        spec: ModelSpec,
        config: ServingConfig,
        session: ModelSession,
        label: str,
    ) -> Batcher:
        return Batcher(
            f"{label}/{spec.version}",
            session,
            BatchLayout.for_model(spec),
            self._threads,
            self._metrics.for_model(label, spec.version, session.providers),
            config,
            max_in_flight=self._settings.inference_threads,
            adaptive=self._adaptive(config),
        )

    def _adaptive(self, config: ServingConfig) -> AdaptiveBatching | None:
        target_ms = self._settings.latency_target_ms
        if target_ms is None:
            return None
        return AdaptiveBatching.start(
            target_ms / 1000, config.max_batch_size, config.max_queue_delay_s
        )

    async def unload(self, name: str) -> None:
        """Stop serving every version of a model; accepted requests finish first."""
        check_model_name(name)
        async with self._lock:
            if not self._models.get(name):
                raise ModelNotFound(f"unknown model {shown(name)}")
            await self._retire_all(name)

    async def _retire_all(self, name: str) -> None:
        for mv in list(self._models.get(name, {}).values()):
            await self._retire(mv)
        self._models.pop(name, None)
        self._routes.pop(name, None)  # a later load starts from the settings' route

    async def _retire(self, mv: ModelVersion) -> None:
        """Take a version out of service: unresolvable at once, then its accepted requests
        (queued, running, being encoded) finish before it is gone."""
        versions = self._models.get(mv.name, {})
        versions.pop(mv.version, None)
        if not versions:  # a name is listed only while it has versions
            self._models.pop(mv.name, None)
        mv.state, mv.reason = ModelState.UNLOADING, "retired"
        self._update_serving(mv.name)  # new requests resolve elsewhere from here on
        # A retired version is not "not ready": drop its series so no alert fires.
        with contextlib.suppress(KeyError):
            self._metrics.model_ready.remove(mv.name, str(mv.version))
        for listener in self._listeners:
            listener(mv)
        model = mv.model
        if model is None:
            return
        model.close()
        deadline = time.monotonic() + self._settings.drain_grace_seconds
        while any(b.busy or b.inflight > 0 for b in model.batchers):
            if time.monotonic() > deadline:
                log.warning("model %s/%d: retired with requests still running", mv.name, mv.version)
                break
            await asyncio.sleep(0.005)
        log.info("model %s/%d retired", mv.name, mv.version)

    def drain(self) -> None:
        """Refuse new requests on every model; queued and running ones complete (shadow
        copies not yet run are dropped)."""
        for name in list(self.shadows):
            self._stop_shadow(name)
        for mv in self.all_versions():
            if mv.model is not None:
                mv.model.close()

    def busy(self) -> bool:
        return any(mv.model is not None and mv.model.busy for mv in self.all_versions())

    def drift_windows(self) -> list[tuple[str, int, DriftWindow]]:
        """(name, version, window) of every ready version that scores input drift."""
        return [
            (mv.name, mv.version, mv.model.drift)
            for mv in self.all_versions()
            if mv.ready and mv.model is not None and mv.model.drift is not None
        ]
