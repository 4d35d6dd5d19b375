"""Model control: who may change the served models after start, and the repository poller.

NNSERVE_MODEL_CONTROL (settings.ModelControlMode), as in Triton:
- none (default): the models loaded at start are the models served; RepositoryModelLoad
  and RepositoryModelUnload answer FAILED_PRECONDITION.
- explicit: RepositoryModelLoad loads a model's versions per the version policy (a
  reload picks up new version folders) and answers an error when a version it tried
  failed; RepositoryModelUnload drains and unloads every version. These two RPCs are the
  only ones that change server state; the auth layer gives them the admin role.
- poll: every NNSERVE_POLL_SECONDS the repository is compared with what is served: new
  versions load (golden check included) and serve once ready, versions the policy no
  longer wants or that were removed drain and retire. Load/Unload answer
  FAILED_PRECONDITION: the repository is the one source of truth.

The loading itself (version policy, drain, retire) is the registry's; this module only
decides when it runs and who may ask.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping

from services.core.registry import ModelRegistry
from services.errors import FailedPrecondition, InvalidInput, Unavailable
from services.settings import ModelControlMode, Settings

log = logging.getLogger(__name__)

Settle = Callable[[], Awaitable[None]]


async def _nothing_to_settle() -> None:
    return None


class ModelControl:
    def __init__(
        self, settings: Settings, registry: ModelRegistry, settle: Settle = _nothing_to_settle
    ) -> None:
        self.mode = settings.model_control
        self._settings = settings
        self._registry = registry
        self._settle = settle  # awaits health updates, so a Load's result is visible at once
        self._poller: asyncio.Task[None] | None = None

    def _require_explicit(self, rpc: str) -> None:
        if self.mode is not ModelControlMode.EXPLICIT:
            why = (
                "the repository is watched; add or remove version folders instead"
                if self.mode is ModelControlMode.POLL
                else "models are fixed at start"
            )
            raise FailedPrecondition(
                f"{rpc} is refused: model control mode is {self.mode.value} ({why}); "
                "set NNSERVE_MODEL_CONTROL=explicit to allow it"
            )

    async def load(self, name: str, parameters: Mapping[str, object]) -> None:
        """RepositoryModelLoad: OK only when every version it tried became ready."""
        self._require_explicit("RepositoryModelLoad")
        if parameters:  # Triton's config overrides and file uploads: never taken here
            raise InvalidInput("RepositoryModelLoad parameters are not supported")
        # Shielded: a caller that gives up (deadline, cancel) must not leave a version
        # half-loaded; the load finishes and its result shows in RepositoryIndex.
        result = await asyncio.shield(self._registry.load(name, retry_failed=True))
        await self._settle()
        if result.failed:
            failures = "; ".join(f"version {mv.version}: {mv.reason}" for mv in result.failed)
            serving = (
                "versions serving: " + ", ".join(map(str, result.serving))
                if result.serving
                else "no version serving"
            )
            raise Unavailable(f"model {name!r} failed to load: {failures} ({serving})")

    async def unload(self, name: str) -> None:
        """RepositoryModelUnload: every version drains (accepted requests finish), then goes."""
        self._require_explicit("RepositoryModelUnload")
        await asyncio.shield(self._registry.unload(name))
        await self._settle()

    # ------------------------------------------------------------------ poll mode

    def start(self) -> None:
        """Start watching the repository (poll mode only); call after the startup load."""
        if self.mode is ModelControlMode.POLL and self._poller is None:
            self._poller = asyncio.create_task(self._poll(), name="nnserve-repository-poll")

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None

    async def poll_once(self) -> None:
        """One comparison of the repository with what is served (failed versions are
        retried only when their files change, so a broken one is not reloaded forever)."""
        root = self._settings.repository
        if not root.is_dir():  # an unmounted volume must not unload every model
            log.warning("model control: repository %s is not a folder; poll skipped", root)
            return
        await self._registry.sync_all(retry_failed=False)
        await self._settle()

    async def _poll(self) -> None:
        interval = self._settings.poll_seconds
        log.info("model control: polling the repository every %.2fs", interval)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.poll_once()
            except Exception:  # a bad scan must not end polling; the next one retries
                log.exception("model control: repository poll failed")
